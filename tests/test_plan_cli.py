"""`hpcserve plan` end to end: printed arithmetic, --json, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cliutil import run_main
from conftest import site_to_yaml

from hpcserve.sites.schema import Container, Node, Scheduler, Site

DATA = Path(__file__).parent / "data" / "models"
QWEN35 = str(DATA / "qwen3.5-397b-a17b-gptq-int4.json")
MODEL = "Qwen/Qwen3.5-397B-A17B-GPTQ-Int4"


@pytest.fixture(autouse=True)
def sites(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A meluxina site (4 × A100-40GB) found by name through $HPCSERVE_SITES, as users add sites."""
    meluxina = Site(
        name="meluxina",
        node=Node(gpus=4, gpu_model="A100-40GB", gpu_memory_gb=40),
        scheduler=Scheduler(submit="local"),
        container=Container(runtime="none"),
    )
    site_to_yaml(meluxina, tmp_path / "meluxina.yaml")
    monkeypatch.setenv("HPCSERVE_SITES", str(tmp_path))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_main(capsys, "plan", *args)


def test_worked_example_prints_the_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "--model",
        MODEL,
        "--site",
        "meluxina",
        "--config-json",
        QWEN35,
        "--gpu-memory-utilization",
        "0.9",
    )
    assert code == 0
    assert "usable per GPU: 40.0 GiB × 0.9 = 36.0 GiB; per node: 4 × 36.0 GiB = 144.0 GiB" in out
    assert "weights: " in out and "× 0.5 B + scales" in out
    assert "layout: TP=4 × PP=2 = 8 GPUs on 2 node(s)" in out
    assert "GPU KV cache size:" in out
    assert out.strip().splitlines()[-1].startswith(f"verdict: {MODEL} needs 2 node(s)")


def test_json_gives_the_same_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--model", MODEL, "--site", "meluxina", "--config-json", QWEN35)
    _, text, _ = run(capsys, *args)
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["nodes"], data["tp"], data["pp"]) == (2, 4, 2)
    assert data["usable_per_node_bytes"] == pytest.approx(144 * 2**30)
    assert data["fits"] is True
    assert f"{data['kv']['tokens']:,} tokens" in text
    assert f"{data['weights']['estimated_bytes'] / 2**30:.1f} GiB" in text


def test_explicit_nodes_that_do_not_fit_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--model", MODEL, "--site", "meluxina", "--config-json", QWEN35, "--nodes", "1"
    )
    assert code == 1
    assert "does NOT fit on 1 node(s)" in out


def test_missing_config_exits_2_with_a_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # not in the cache, and the hub out of reach
    code, out, err = run(capsys, "--model", "org/nothing-here", "--site", "meluxina")
    assert code == 2
    assert err.startswith("error: no config.json for model 'org/nothing-here'")
    assert "--config-json" in err and "Traceback" not in err


def test_refused_layout_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "--model",
        MODEL,
        "--site",
        "meluxina",
        "--config-json",
        QWEN35,
        "--nodes",
        "2",
        "--tp",
        "3",
    )
    assert code == 2
    assert "error: " in err and "--tp 3 does not divide" in err


def test_bad_nodes_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "--model", MODEL, "--site", "meluxina", "--config-json", QWEN35, "--nodes", "many"
    )
    assert code == 2 and "--nodes" in err


def test_unknown_site_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--model", MODEL, "--site", "nowhere", "--config-json", QWEN35)
    assert code == 2 and "unknown site" in err


def test_plan_does_not_import_ssh_or_http() -> None:
    code = (
        "import sys, hpcserve.cli.plan, hpcserve.plan.planner, hpcserve.plan.modelinfo;"
        "bad = {'paramiko', 'requests'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_moe_plan_shows_dp_ep_and_tp_pp_layouts_side_by_side(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--model", MODEL, "--site", "meluxina", "--config-json", QWEN35)
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layouts on 2 node(s)"))
    table = lines[start + 2 : start + 12]
    rows = {line[2:26].strip(): line for line in table}
    assert rows["TP=4 × PP=2"].startswith("*")  # the plan's layout (the site's default)
    assert "DP=2 × TP=4 (EP)" in rows and "DP=8 × TP=1 (EP)" in rows
    assert "does not fit" in rows["DP=8 × TP=1 (EP)"]  # 8 copies of the non-expert weights
    assert sum("most KV" in line for line in table) == 1
    assert "weights/GPU" in lines[start + 1] and "concurrency" in lines[start + 1]


def test_dp_plan_sizes_each_rank_and_adds_them_up(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--model", MODEL, "--site", "meluxina", "--config-json", QWEN35, "--dp", "2")
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "layout: DP=2 × TP=4 (EP) = 8 GPUs on 2 node(s)" in out
    assert "non-expert / TP 4 (each DP rank a copy) + experts" in out
    assert "over EP 8 (whole experts)" in out
    assert "KV cache size per DP rank:" in out and "all 2 DP ranks (each its own KV cache)" in out
    assert out.strip().splitlines()[-1].endswith("(DP=2, TP=4, PP=1, EP)")
    _, text, _ = run(capsys, *args, "--json")
    data = json.loads(text)
    assert (data["dp"], data["tp"], data["pp"], data["enable_expert_parallel"]) == (2, 4, 1, True)
    assert data["kv_tokens_all_dp_ranks"] == 2 * data["kv"]["tokens"]
    assert {(r["dp"], r["tp"], r["pp"]) for r in data["layouts"]} >= {(1, 4, 2), (2, 4, 1)}


def test_dp_that_does_not_divide_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "--model", MODEL, "--site", "meluxina", "--config-json", QWEN35, "--nodes", "2",
        "--dp", "3",
    )  # fmt: skip
    assert code == 2
    assert "--dp 3 does not divide the 8 GPUs of 2 node(s)" in err and "Traceback" not in err


def test_revision_picks_that_snapshots_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the HF cache holds two revisions of one model; `plan --revision` sizes the named one, as
    # `submit --revision` will serve it
    repo = tmp_path / "hf" / "hub" / "models--org--m"
    for snap, layers in (("aaa", 80), ("bbb", 40)):
        (repo / "snapshots" / snap).mkdir(parents=True)
        cfg = json.loads((DATA / "llama-3.1-70b.json").read_text())
        cfg["num_hidden_layers"] = layers
        (repo / "snapshots" / snap / "config.json").write_text(json.dumps(cfg))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa")
    (repo / "refs" / "v2").write_text("bbb")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = {}
    for rev in (None, "v2"):
        args = ["--model", "org/m", "--site", "meluxina", "--json"]
        code, out, err = run(capsys, *args, *(["--revision", rev] if rev else []))
        assert code in (0, 1), err
        paths[rev] = json.loads(out)["config_path"]
    assert paths[None].endswith("/snapshots/aaa/config.json")
    assert paths["v2"].endswith("/snapshots/bbb/config.json")
    code, _out, err = run(capsys, "--model", "org/m", "--site", "meluxina", "--revision", "v9")
    assert code == 2 and err.count("\n") == 1 and "v9" in err  # one line, not a traceback
