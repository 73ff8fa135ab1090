"""`hpcserve sweep`'s pieces: the SLO rule, --layouts, the one-allocation sweep script, the
report."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import apptainer_site, venv_site

from hpcserve.errors import UsageError
from hpcserve.net.bench import Metrics
from hpcserve.plan.modelinfo import parse_config
from hpcserve.sweep import report
from hpcserve.sweep.job import EXIT, STOP, plan_sweep, sweep_script, write_sweep
from hpcserve.sweep.layouts import label, parse_concurrency, sweep_layouts
from hpcserve.sweep.run import LayoutResult
from hpcserve.sweep.slo import Bound, misses, parse_slo

QWEN35 = Path(__file__).parent / "data" / "models" / "qwen3.5-397b-a17b-gptq-int4.json"


# --- --slo -----------------------------------------------------------------------------------


def test_slo_parses_bounds_in_ms() -> None:
    bounds = parse_slo("ttft_p95<=400ms,tpot_p95<=55ms, e2el_mean<2s")
    assert bounds == (
        Bound("ttft", "p95", 400.0),
        Bound("tpot", "p95", 55.0),
        Bound("e2el", "mean", 2000.0, inclusive=False),
    )
    assert bounds[0].key == "p95_ttft_ms"  # vllm bench serve's key
    assert parse_slo(None) == () and parse_slo(" ") == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ttft_p95<=400", "expected METRIC_STAT<=VALUE(ms|s)"),
        ("ttft_p95>=400ms", "expected METRIC_STAT<=VALUE(ms|s)"),
        ("latency_p95<=4ms", "metric must be one of ttft, tpot, itl, e2el"),
        ("ttft_p42<=4ms", "statistic must be one of p50, p90, p95, p99, mean, median"),
        ("ttft_p95<=400ms,,", "expected METRIC_STAT"),
    ],
)
def test_bad_slo_is_one_usage_error(text: str, says: str) -> None:
    with pytest.raises(UsageError, match="--slo") as e:
        parse_slo(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_slo_misses_name_the_measured_value() -> None:
    bounds = parse_slo("ttft_p95<=400ms,tpot_p95<=55ms")
    assert misses(bounds, {"p95_ttft_ms": 120.0, "p95_tpot_ms": 50.0}) == []
    assert misses(bounds, {"p95_ttft_ms": 420.5, "p95_tpot_ms": 50.0}) == [
        "ttft_p95 420.5ms (SLO ttft_p95<=400ms)"
    ]
    assert misses(bounds, {}) == [
        "ttft_p95 not measured (SLO ttft_p95<=400ms)",
        "tpot_p95 not measured (SLO tpot_p95<=55ms)",
    ]


# --- --layouts, --concurrency ------------------------------------------------------------------


def test_auto_layouts_of_two_lab_nodes_are_tp_pp_and_dp() -> None:
    site = venv_site()
    lays = sweep_layouts(site, None, 2, "auto")
    assert [label(x) for x in lays] == ["dp1-tp2-pp1", "dp1-tp1-pp2", "dp2-tp1-pp1"]


def test_listed_layouts_go_through_the_layout_rule() -> None:
    site = apptainer_site()  # 4 GPUs a node
    info = parse_config(json.loads(QWEN35.read_text()), "q")
    lays = sweep_layouts(site, info, 2, "tp4xpp2, dp2xtp4, dp2xtp4xnoep, tp4xpp2")
    assert [label(x) for x in lays] == ["dp1-tp4-pp2", "dp2-tp4-pp1-ep", "dp2-tp4-pp1"]
    assert [label(x) for x in sweep_layouts(site, info, 2, "dp2")] == ["dp2-tp4-pp1-ep"]
    with pytest.raises(UsageError, match=r"--layouts 'dp3': --dp 3 does not divide"):
        sweep_layouts(site, info, 2, "dp3")
    with pytest.raises(UsageError, match="expected parts like tp4"):
        sweep_layouts(site, info, 2, "tp4*pp2")
    with pytest.raises(UsageError, match="tp is given twice"):
        sweep_layouts(site, info, 2, "tp4xtp2")
    with pytest.raises(UsageError, match="expected auto or a list"):
        sweep_layouts(site, info, 2, ",")


def test_concurrency_list() -> None:
    assert parse_concurrency("1,8,32") == (1, 8, 32)
    for bad in ("1,,8", "0", "eight", "-1"):
        with pytest.raises(UsageError, match="--concurrency"):
            parse_concurrency(bad)


# --- the sweep job ---------------------------------------------------------------------------


def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        pytest.fail("shellcheck is not installed (apt-get install shellcheck)")
    return path


def test_sweep_writes_one_launcher_per_layout_and_one_script(tmp_path: Path) -> None:
    from hpcserve.cluster.executor import LocalExecutor

    site = venv_site()
    lays = sweep_layouts(site, None, 2, "auto")
    job = plan_sweep(
        site, "/models/tiny", 2, lays, home=str(tmp_path), sweep_dir=str(tmp_path / "sw")
    )
    script = write_sweep(job, LocalExecutor(), environ={})
    text = Path(script).read_text()
    assert "#SBATCH --nodes=2" in text
    assert f"#SBATCH --output={tmp_path}/sw/slurm-%j.out" in text
    for lj in job.layouts:
        launcher = Path(lj.job_dir) / "launcher.sbatch"
        assert launcher.exists() and str(Path(lj.job_dir)) in text
        assert (Path(lj.job_dir) / "secrets.env").stat().st_mode & 0o777 == 0o600
        assert f"VLLM_API_KEY={job.api_key}\n" in (Path(lj.job_dir) / "secrets.env").read_text()
    dp = (Path(job.layouts[2].job_dir) / "launcher.sbatch").read_text()
    assert "--data-parallel-size" in dp
    subprocess.run(["bash", "-n", script], check=True)
    proc = subprocess.run([shellcheck(), "-s", "bash", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _fake_launcher(path: Path, body: str) -> None:
    path.write_text(
        f'#!/bin/bash\necho "$(basename "$(dirname "$0")")" >>{path.parent.parent}/order\n{body}\n'
    )


def test_sweep_script_runs_each_layout_in_turn_and_stops_it(tmp_path: Path) -> None:
    """In one allocation: layout a runs until STOP appears (this machine writes it after the
    benchmark), b fails by itself, c runs past the layout timeout; each EXIT is recorded and
    the next starts only after the one before ended."""
    site = venv_site()
    lays = sweep_layouts(site, None, 2, "auto")
    job = plan_sweep(site, "m", 2, lays, home=str(tmp_path), sweep_dir=str(tmp_path / "sw"))
    job = dataclasses.replace(job, layout_timeout=2)
    for lj in job.layouts:
        Path(lj.job_dir).mkdir(parents=True)
    a, b, c = (Path(lj.job_dir) for lj in job.layouts)
    forever = (
        'trap \'echo stopped >>"$(dirname "$0")/ran"; exit 0\' TERM\nwhile :; do sleep 0.1; done'
    )
    _fake_launcher(a / "launcher.sbatch", f': >"$(dirname "$0")/{STOP}"\n{forever}')
    _fake_launcher(b / "launcher.sbatch", "echo 'vLLM refused this' >&2\nexit 3")
    _fake_launcher(c / "launcher.sbatch", forever)
    script = tmp_path / "sw" / "sweep.sbatch"
    script.write_text(sweep_script(job))
    env = {**os.environ, "SLURM_JOB_ID": "55"}
    proc = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sw" / "order").read_text().split() == [a.name, b.name, c.name]
    assert (a / EXIT).read_text().strip() == "0" and (a / "ran").read_text() == "stopped\n"
    assert (b / EXIT).read_text().strip() == "3"
    assert "vLLM refused this" in (b / "slurm-55.out").read_text()  # the layout's batch log
    assert (c / EXIT).read_text().strip() == "0" and (c / "ran").read_text() == "stopped\n"


# --- the report --------------------------------------------------------------------------------


def metrics(conc: int, tok_s: float, ttft: float, tpot: float, failed: int = 0) -> Metrics:
    stats = {
        "p50_ttft_ms": ttft / 2,
        "p95_ttft_ms": ttft,
        "p50_tpot_ms": tpot / 2,
        "p95_tpot_ms": tpot,
    }
    return Metrics(
        completed=10, failed=failed, duration=1.0, total_input_tokens=1, total_output_tokens=1,
        request_throughput=1.0, output_throughput=tok_s, total_token_throughput=tok_s,
        max_output_tokens_per_s=tok_s, max_concurrent_requests=conc, stats_ms=stats,
        max_concurrency=conc,
    )  # fmt: skip


def results() -> list[LayoutResult]:
    return [
        LayoutResult("dp1-tp2-pp1", "TP=2 × PP=1", 1, 2, 1, False, True,
                     runs=[metrics(1, 50, 100, 20), metrics(8, 300, 350, 40)]),
        LayoutResult("dp2-tp1-pp1", "DP=2 × TP=1", 2, 1, 1, False, True,
                     runs=[metrics(1, 45, 90, 21), metrics(8, 420, 500, 50)]),
        LayoutResult("dp1-tp1-pp2", "TP=1 × PP=2", 1, 1, 2, False, False,
                     reason="a node's vLLM process died: EngineCore encountered a fatal error."),
    ]  # fmt: skip


def test_recommendation_is_the_highest_throughput_inside_the_slo() -> None:
    bounds = parse_slo("ttft_p95<=400ms,tpot_p95<=55ms")
    pick = report.recommend(results(), bounds)
    assert pick is not None and pick.result.label == "dp1-tp2-pp1" and pick.run.max_concurrency == 8
    pick = report.recommend(results(), ())  # no SLO: the highest throughput
    assert pick is not None and pick.result.label == "dp2-tp1-pp1"
    assert report.recommend(results(), parse_slo("ttft_p95<=10ms")) is None
    failing = [dataclasses.replace(results()[1], runs=[metrics(8, 900, 1, 1, failed=2)])]
    assert report.recommend(failing, ()) is None  # failed requests are never inside


def test_table_lists_failed_layouts_with_their_cause() -> None:
    bounds = parse_slo("ttft_p95<=400ms")
    lines = report.table_lines(results(), bounds)
    assert "TTFT p95" in lines[0] and "out tok/s" in lines[0]
    assert any("TP=2 × PP=1" in x and "300.0" in x and x.endswith("met") for x in lines)
    assert any("DP=2 × TP=1" in x and "ttft_p95 500.0ms (SLO ttft_p95<=400ms)" in x for x in lines)
    failed = [x for x in lines if "TP=1 × PP=2" in x]
    assert len(failed) == 1 and "failed" in failed[0] and "EngineCore encountered" in failed[0]
    verdict = report.verdict(report.recommend(results(), bounds), bounds)
    assert verdict.startswith("recommendation: TP=2 × PP=1 (dp1-tp2-pp1): 300.0 output tok/s")


def test_raw_json_keeps_every_run_and_the_pick() -> None:
    data = json.loads(report.to_json(results(), parse_slo("ttft_p95<=400ms"), {"job_id": "9"}))
    assert data["job_id"] == "9" and data["slo"] == ["ttft_p95<=400ms"]
    assert [x["label"] for x in data["layouts"]] == ["dp1-tp2-pp1", "dp2-tp1-pp1", "dp1-tp1-pp2"]
    assert data["layouts"][0]["runs"][1]["p95_ttft_ms"] == 350
    assert data["layouts"][2]["ok"] is False and data["layouts"][2]["runs"] == []
    assert data["recommended"] == {"label": "dp1-tp2-pp1", "max_concurrency": 8}


# --- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--slo", "ttft_p95<=400"), "--slo 'ttft_p95<=400': expected METRIC_STAT<=VALUE(ms|s)"),
        (("--concurrency", "1,x"), "--concurrency '1,x': expected positive whole numbers"),
    ],
)
def test_bad_sweep_options_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str
) -> None:
    from cliutil import run_main

    code, out, err = run_main(
        capsys, "sweep", "--site", "local", "--model", "m", "--nodes", "2", *args
    )
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and says in err and "Traceback" not in err
