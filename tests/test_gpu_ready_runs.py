"""hpcserve's parsers and planner on the third real GPU run (tests/data/gpu-vllm-3/README.md).

One H200, one "node": an 8 B Llama-3 layout (random bf16 weights) served by bare `vllm serve`
and by the rendered launcher, cold (empty caches) and warm (the site's compilation cache left
by a cold job), three rounds; both benchmarks on one server. No GPU is needed here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from hpcserve.jobs.phases import PHASES, PhaseInfo, read_phase, split_lines
from hpcserve.plan.modelinfo import load_model_info
from hpcserve.plan.planner import plan_for_site
from hpcserve.plan.sizing import (
    GIB,
    kv_memory_budget,
    parse_vllm_kv_log,
    predict_kv_cache_tokens,
    stage_weight_bytes,
    vllm_rules,
)
from hpcserve.sites.loader import load_site_file

REPO = Path(__file__).parent.parent
DATA = REPO / "tests" / "data" / "gpu-vllm-3"
CONFIG = DATA / "llama8b-config.json"
H200_MIB = 143771  # nvidia-smi's memory.total of the H200


def _results() -> list[dict[str, Any]]:
    out = []
    for f in sorted(DATA.glob("r*/results.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            rec["round"] = f.parent.name
            out.append(rec)
    return out


RESULTS = _results()
STARTS = [r for r in RESULTS if "name" in r]
LAUNCHED = [r for r in STARTS if r["step"] != "bare"]
COLD = [f"{r['round']}/{r['name']}" for r in STARTS if r["step"] == "cold"]
WARM = [f"{r['round']}/{r['name']}" for r in STARTS if r["step"] in ("warm", "load=default")]
BARE = [f"{r['round']}/{r['name']}" for r in STARTS if r["step"] == "bare"]


def _log(start: str) -> str:
    d = DATA / start
    return ((d / "node-0.log") if (d / "node-0.log").exists() else (d / "serve.log")).read_text()


def test_the_run_kept_three_of_each_start() -> None:
    assert (len(BARE), len(COLD), len(WARM)) == (
        3,
        3,
        4,
    )  # warm: 3 + one with the page cache dropped
    assert all(r.get("ready_s") for r in STARTS)  # every start became ready
    skipped = [r["step"] for r in RESULTS if r.get("skipped")]
    assert skipped == ["load=eager", "load=prefetch"]  # the device time ran out


# -- phases ----------------------------------------------------------------------------------
@pytest.mark.parametrize("start", COLD + WARM)
def test_launcher_logs_go_through_every_phase_in_order(start: str) -> None:
    info, seen = PhaseInfo(), ["starting"]
    for line in split_lines(_log(start)):
        read_phase([line], info)
        if info.phase != seen[-1]:
            seen.append(info.phase)
    assert seen == list(PHASES)


@pytest.mark.parametrize("start", COLD + BARE)
def test_a_cold_start_compiles(start: str) -> None:
    info = read_phase(split_lines(_log(start)))
    assert info.compile_cache == "miss"
    assert info.compile_seconds is not None and info.compile_seconds > 15  # "took 23.20 s"
    assert "saved AOT compiled function to" in _log(start)


@pytest.mark.parametrize("start", WARM)
def test_a_warm_start_loads_what_the_cold_one_compiled(start: str) -> None:
    text = _log(start)
    info = read_phase(split_lines(text))
    assert info.compile_cache == "hit"
    assert (
        "Directly load AOT compilation from path /tmp/hpcserve-jobs/vllm-cache/vllm-0.26.0/" in text
    )
    assert info.compile_seconds is not None and info.compile_seconds < 10  # "took 4.33 s"
    assert "Compiling a graph" not in text


@pytest.mark.parametrize("start", COLD + WARM)
def test_the_launcher_put_the_cache_under_the_sites_workdir(start: str) -> None:
    launcher = (DATA / start / "launcher.sbatch").read_text()
    assert "export VLLM_CACHE_ROOT=/tmp/hpcserve-jobs/vllm-cache/vllm-0.26.0\n" in launcher
    assert "export TRITON_CACHE_DIR=/tmp/hpcserve-jobs/vllm-cache/vllm-0.26.0/triton\n" in launcher
    m = re.search(r"Using cache directory: (\S+) for vLLM's torch.compile", _log(start))
    assert m and m.group(1).startswith("/tmp/hpcserve-jobs/vllm-cache/vllm-0.26.0/torch_compile")


@pytest.mark.parametrize("start", COLD + WARM)
def test_wait_saw_the_phases_in_order_and_said_whether_the_cache_hit(start: str) -> None:
    w = json.loads((DATA / start / "wait.json").read_text())
    assert w["ready"] is True and w["health_every_s"] == 0.25
    phases = [t["phase"] for t in w["timeline"]]
    ranks = [PHASES.index(p) for p in phases]
    assert ranks == sorted(ranks) and phases[-1] == "ready"
    assert {"loading", "compiling", "cuda_graphs", "api"} <= set(phases)
    outcome = "hit" if start in WARM else "miss"
    assert f"compile cache {outcome} (torch.compile " in w["final"]["detail"]
    assert w["merged"]["compile_cache"] == outcome


def test_bare_and_launcher_ran_the_same_vllm_command() -> None:
    bare = {" ".join(r["argv"]) for r in STARTS if r["step"] == "bare"}
    execs = {r["exec"] for r in LAUNCHED}
    assert (
        bare
        == execs
        == {
            "vllm serve /tmp/llama-8b --tensor-parallel-size 1 --pipeline-parallel-size 1 "
            "--host 0.0.0.0 --port 8000"
        }
    )


# -- KV cache and the planner's memory chain -------------------------------------------------
@pytest.mark.parametrize("start", COLD + WARM + BARE)
def test_the_kv_lines(start: str) -> None:
    info = read_phase(split_lines(_log(start)))
    assert info.vllm_version is not None and info.max_model_len == 8192
    assert info.model_memory_gib == 14.96
    # a cold start profiles with the compiler's extra peak: 0.23 GiB less KV cache
    want = (112.33, 920_192, 112.33) if info.compile_cache == "miss" else (112.56, 922_064, 112.56)
    assert (info.kv_cache_memory_gib, info.kv_cache_tokens, info.max_concurrency) == want


def _desired_gib(text: str) -> float:
    m = re.search(r"Desired GPU memory utilization is \([\d.]+, ([\d.]+) GiB\)", text)
    assert m
    return float(m.group(1))


def _within(pred: float, seen: float) -> bool:
    return abs(pred - seen) <= 0.10 * seen


@pytest.mark.parametrize("start", COLD + WARM)
def test_the_whole_memory_chain_predicts_vllms_kv_cache(start: str) -> None:
    check_memory_chain(_log(start))


def check_memory_chain(text: str) -> None:
    """nvidia-smi's total × 0.92 − weights − activation peak − non-torch -> Available KV cache
    memory, then tokens; vLLM 0.26.0's rules, the 8 B layout's config (one start's log)."""
    seen = parse_vllm_kv_log(text)
    info = load_model_info("llama-8b", str(CONFIG))
    rules = vllm_rules("0.26.0")
    (weights,) = stage_weight_bytes(info, 1)
    assert abs(weights / GIB - 14.96) < 0.01  # "Model loading took 14.96 GiB"
    b = kv_memory_budget(
        info, H200_MIB * 2**20, rules.default_utilization, weights, tp=1, rules=rules
    )
    assert _within(b.requested, _desired_gib(text) * GIB)
    assert _within(b.available, seen["available_bytes"]), (b, seen)
    pred = predict_kv_cache_tokens(
        info, b.available, tp=1, pp=1, max_model_len=8192, report=rules.kv_report
    )
    assert _within(pred.tokens, seen["tokens"]), (pred.tokens, seen)


def test_the_gpu_sites_plan_gives_vllms_kv_cache() -> None:
    site = load_site_file(str(REPO / "tests" / "gpu" / "site.yaml"))
    info = load_model_info("llama-8b", str(CONFIG))
    plan = plan_for_site(site, info, nodes=1, max_model_len=8192)
    seen = parse_vllm_kv_log(_log(COLD[0]))
    assert plan.fit.fits
    assert _within(plan.fit.kv_budget_per_gpu[0], seen["available_bytes"])
    assert plan.fit.kv is not None and _within(plan.fit.kv.tokens, seen["tokens"])


# -- both benchmarks on one server -----------------------------------------------------------
BENCH = DATA / "r2" / "03-warm" / "bench"


@pytest.mark.parametrize("c", [1, 16, 64])
def test_both_benchmarks_completed_the_same_load(c: int) -> None:
    vllm = json.loads((BENCH / f"vllm-c{c}.json").read_text())
    hpc = json.loads((BENCH / f"hpcserve-c{c}.json").read_text())
    hpc = hpc[0] if isinstance(hpc, list) else hpc
    assert vllm["max_concurrency"] == hpc["max_concurrency"] == c
    assert vllm["completed"] == hpc["completed"] == {1: 16, 16: 64, 64: 128}[c]
    assert vllm["total_output_tokens"] == hpc["total_output_tokens"] == 128 * vllm["completed"]
    for key in ("output_throughput", "median_tpot_ms", "mean_itl_ms"):
        assert _within(hpc[key], vllm[key]), (key, hpc[key], vllm[key])
