"""GPU memory in the units vLLM counts (defect 3) and GPU capability (defect 5) of issue 11."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cliutil import run_main

from hpcserve.errors import ConfigError, UsageError
from hpcserve.plan.modelinfo import load_model_info
from hpcserve.plan.planner import plan_for_site
from hpcserve.sites.loader import parse_site

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "tests" / "data" / "models"
QWEN7B = str(MODELS / "qwen2.5-7b-instruct.json")  # a bfloat16 checkpoint
GPTQ = str(MODELS / "qwen3.5-397b-a17b-gptq-int4.json")
GIB = 1024**3


def site_text(node: str) -> str:
    return f"name: s\nscheduler: {{submit: local}}\ncontainer: {{runtime: none}}\nnode: {node}\n"


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HPCSERVE_SITES", str(tmp_path))
    return tmp_path


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = run_main(capsys, "plan", "--site", "s", "--model", "m", *args, "--json")
    assert code in (0, 1), err
    data: dict[str, object] = json.loads(out)
    return data


# --------------------------------------------------------------------------- defect 3


def test_marketed_gb_is_read_as_gib() -> None:
    site = parse_site(site_text("{gpus: 1, gpu_model: X, gpu_memory_gb: 80}"), "s.yaml")
    plan = plan_for_site(site, load_model_info("m", QWEN7B), nodes=1, max_model_len=4096)
    assert plan.usable_per_gpu == pytest.approx(80 * GIB * 0.9)


def test_memory_as_nvidia_smi_prints_it() -> None:
    site = parse_site(site_text("{gpus: 1, gpu_model: X, gpu_memory_mib: 81920}"), "s.yaml")
    plan = plan_for_site(site, load_model_info("m", QWEN7B), nodes=1, max_model_len=4096)
    assert plan.usable_per_gpu == pytest.approx(81920 * 2**20 * 0.9)
    assert "usable per GPU: 80.0 GiB × 0.9 = 72.0 GiB" in "\n".join(plan.lines())


def test_both_memory_fields_are_refused() -> None:
    with pytest.raises(ConfigError, match="node.gpu_memory_gb: give gpu_memory_mib or"):
        parse_site(
            site_text("{gpus: 1, gpu_model: X, gpu_memory_mib: 81920, gpu_memory_gb: 80}"),
            "s.yaml",
        )


def test_plan_prints_every_memory_figure_in_gib(
    capsys: pytest.CaptureFixture[str], site_dir: Path
) -> None:
    (site_dir / "s.yaml").write_text(site_text("{gpus: 4, gpu_model: A100-40GB}"))
    code, out, _ = run_main(capsys, "plan", "--site", "s", "--model", "m", "--config-json", GPTQ)
    assert code == 0
    assert " GB" not in out
    assert "usable per GPU: 40.0 GiB × 0.9 = 36.0 GiB; per node: 4 × 36.0 GiB = 144.0 GiB" in out
    data = plan_json(capsys, "--config-json", GPTQ)
    assert data["gpu_memory_mib"] == 40960 and data["gpu_memory_gib"] == 40
    assert "gpu_memory_gb" not in data and "overhead_gb_per_gpu" not in data


def test_the_reason_a_layout_does_not_fit_shows_every_term(
    capsys: pytest.CaptureFixture[str], site_dir: Path
) -> None:
    (site_dir / "s.yaml").write_text(site_text("{gpus: 4, gpu_model: A100-40GB}"))
    code, out, _ = run_main(
        capsys, "plan", "--site", "s", "--model", "m", "--config-json", GPTQ, "--nodes", "1"
    )
    assert code == 1
    reason = next(line for line in out.splitlines() if line.startswith("does not fit:"))
    for term in ("usable", "weights", "non-KV overhead", "KV for one 262,144-token request"):
        assert term in reason, reason
    assert reason.count("GiB") >= 4


# --------------------------------------------------------------------------- defect 5


def test_the_table_covers_common_data_centre_gpus() -> None:
    from hpcserve.plan.gpus import GPUS, gpu_spec

    for name in ("T4", "V100-32GB", "A10", "L4", "L40S", "A100-40GB", "A100-80GB", "H100"):
        assert gpu_spec(name) is not None, name
    for name in ("H200", "GH200", "B200", "MI250X", "MI300X"):
        assert gpu_spec(name) is not None, name
    t4 = gpu_spec("t4")
    assert t4 is not None and (t4.capability, t4.bf16, t4.fp8) == ((7, 5), False, False)
    h100 = gpu_spec("H100")
    assert h100 is not None and (h100.capability, h100.bf16, h100.fp8) == ((9, 0), True, True)
    assert all(g.memory_mib > 1024 for g in GPUS)


def test_four_t4s_take_two_lines() -> None:
    site = parse_site(site_text("\n  gpus: 4\n  gpu_model: T4"), "s.yaml")
    plan = plan_for_site(site, load_model_info("m", QWEN7B), nodes=1, max_model_len=4096)
    assert plan.node.gpu_memory_mib == 16 * 1024 and plan.node.capability == (7, 5)


def test_an_unknown_gpu_without_memory_is_refused() -> None:
    with pytest.raises(ConfigError, match="'Z9000' is not in the GPU table"):
        parse_site(site_text("{gpus: 4, gpu_model: Z9000}"), "s.yaml")


def test_dtype_auto_on_t4_serves_a_bf16_checkpoint_in_float16(
    capsys: pytest.CaptureFixture[str], site_dir: Path
) -> None:
    (site_dir / "s.yaml").write_text(site_text("{gpus: 4, gpu_model: T4}"))
    data = plan_json(capsys, "--config-json", QWEN7B, "--nodes", "1", "--max-model-len", "4096")
    assert data["dtype"] == "float16" and data["compute_capability"] == "7.5"
    notes = data["notes"]
    assert isinstance(notes, list)
    assert any("bfloat16" in n and "float16" in n and "7.5" in n for n in notes), notes
    on_a100 = site_text("{gpus: 4, gpu_model: A100-40GB}")
    (site_dir / "s.yaml").write_text(on_a100)
    data = plan_json(capsys, "--config-json", QWEN7B, "--nodes", "1", "--max-model-len", "4096")
    assert data["dtype"] == "bfloat16" and data["compute_capability"] == "8.0"


def test_explicit_bfloat16_on_t4_is_refused_as_vllm_refuses_it() -> None:
    site = parse_site(site_text("{gpus: 4, gpu_model: T4}"), "s.yaml")
    with pytest.raises(UsageError, match="bfloat16 needs compute capability 8.0.*--dtype half"):
        plan_for_site(site, load_model_info("m", QWEN7B), nodes=1, dtype="bfloat16")


def test_plan_render_and_submit_refuse_bfloat16_on_t4_alike(
    site_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site_dir / "s.yaml").write_text(site_text("{gpus: 4, gpu_model: T4}"))
    model = ["--site", "s", "--model", "m", "--dtype", "bfloat16"]
    errors = []
    for cmd in (["plan", "--config-json", str(QWEN7B)], ["render"], ["submit", "--dry-run"]):
        code, out, err = run_main(capsys, *cmd, *model)
        assert code == 2, (cmd, out, err)
        errors.append(err)
    assert len(set(errors)) == 1 and errors[0].count("\n") == 1, errors
    assert "bfloat16 needs compute capability 8.0" in errors[0]


def test_marlin_kernels_are_flagged_below_their_capability() -> None:
    site = parse_site(site_text("{gpus: 4, gpu_model: V100-32GB}"), "s.yaml")
    plan = plan_for_site(site, load_model_info("m", GPTQ), nodes=8, max_model_len=4096)
    assert any("Marlin" in n and "7.0" in n for n in plan.info.notes), plan.info.notes
    on_a100 = parse_site(site_text("{gpus: 4, gpu_model: A100-40GB}"), "s.yaml")
    plan = plan_for_site(on_a100, load_model_info("m", GPTQ), nodes=2, max_model_len=4096)
    assert not any("Marlin" in n for n in plan.info.notes)


def test_shipped_sites_name_their_gpus_from_the_table() -> None:
    from hpcserve.plan.gpus import gpu_spec

    for path in sorted((REPO / "site_configs").glob("*.yaml")):
        node = yaml.safe_load(path.read_text())["node"]
        if node["gpu_model"] == "cpu":
            continue
        assert gpu_spec(node["gpu_model"]) is not None, path.name
        assert "gpu_memory_gb" not in node, path.name  # the table holds the memory
