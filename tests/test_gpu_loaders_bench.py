"""hpcserve's parsers, planner and bench on the fourth real GPU run (tests/data/gpu-vllm-4/).

One H200, one "node", the 8 B Llama-3 layout of run 3: a cold start of the rendered launcher
with three rounds of ``vllm bench serve`` and ``hpcserve bench`` on that server, then warm
starts with the page cache dropped under each weight loader. No GPU is needed here.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
from test_gpu_ready_runs import _within, check_memory_chain

from hpcserve.jobs.phases import PHASES, PhaseInfo, read_phase, split_lines

DATA = Path(__file__).parent / "data" / "gpu-vllm-4"
#: what each loader step passed to ``hpcserve render`` (tests/gpu/ready_runs.py LOADS) and a
#: line of the loader's own that vLLM then printed
LOADERS = {
    "default": ("", "Loading safetensors checkpoint shards:"),
    "eager": ("--safetensors-load-strategy eager", "checkpoint shards (eager):"),
    "prefetch": ("--safetensors-load-strategy prefetch", "Prefetching checkpoint files into"),
    "mt8": (
        '--model-loader-extra-config {"enable_multithread_load": true, "num_threads": 8}',
        "Loading weights took",
    ),
    "fastsafetensors": ("--load-format fastsafetensors", "Loading fastsafetensors checkpoint"),
    "runai": ("--load-format runai_streamer", "Loading safetensors using Runai Model Streamer"),
    "instanttensor": ("--load-format instanttensor", "using InstantTensor loader"),
}


def _results() -> list[dict[str, Any]]:
    out = []
    for f in sorted(DATA.glob("r*/results.jsonl")):
        for line in f.read_text().splitlines():
            out.append({**json.loads(line), "round": f.parent.name})
    return out


RESULTS = _results()
STARTS = {f"{r['round']}/{r['name']}": r for r in RESULTS if "name" in r}
LOADS = [k for k, r in STARTS.items() if r["step"].startswith("load=")]


def _log(start: str) -> str:
    return (DATA / start / "node-0.log").read_text()


def test_the_run_kept_every_start_it_made() -> None:
    steps = [r["step"] for r in STARTS.values()]
    assert steps.count("cold") == 1
    counts = {name: steps.count(f"load={name}") for name in LOADERS}
    assert counts == {n: 3 if n == "default" else 2 for n in LOADERS}
    assert all(r["ready_s"] and r["wait_rc"] == 0 for r in STARTS.values())
    skipped = [r["step"] for r in RESULTS if r.get("skipped")]
    assert skipped == ["load=fastsafetensors"]  # its third start would have passed the deadline


@pytest.mark.parametrize("start", LOADS)
def test_each_loader_reached_vllm_and_read_from_disk(start: str) -> None:
    rec = STARTS[start]
    option, own_line = LOADERS[rec["step"].removeprefix("load=")]
    want = "vllm serve /tmp/llama-8b --tensor-parallel-size 1 --pipeline-parallel-size 1 "
    want += f"{option} " if option else ""
    assert rec["exec"] == want + "--host 0.0.0.0 --port 8000"
    assert own_line in _log(start)
    assert rec["page_cache_dropped"] is True
    assert rec["compile_cache"] == "hit"  # the loader is not part of the compile cache's key


@pytest.mark.parametrize("start", sorted(STARTS))
def test_phases_in_order_from_the_first_line_of_loading(start: str) -> None:
    info, seen = PhaseInfo(), ["starting"]
    lines = split_lines(_log(start))
    for line in lines:
        read_phase([line], info)
        if info.phase != seen[-1]:
            seen.append(info.phase)
            if info.phase == "loading":  # vLLM 0.26's V2 model runner starts loading so
                assert "Loading model from scratch..." in line
    assert seen == list(PHASES)


@pytest.mark.parametrize("start", LOADS)
def test_wait_shows_the_loaders_progress(start: str) -> None:
    """Every loader's own progress bar gives ``wait`` a percentage before 100%."""
    info, percents, details = PhaseInfo(), set(), []
    for line in split_lines(_log(start)):
        read_phase([line], info)
        if info.phase == "loading":
            percents.add(info.weights_percent)
            details.append(info.detail())
    if STARTS[start]["step"] != "load=mt8":  # its thread pool prints no progress bar
        assert {p for p in percents if p is not None and 0 < p < 100}
    if STARTS[start]["step"] in ("load=default", "load=eager", "load=prefetch"):
        # vLLM's safetensors iterator says where the checkpoint is (the others do not)
        assert "loading weights (14.96 GiB on EXT4)" in details
        assert (info.checkpoint_fs, info.checkpoint_gib) == ("EXT4", 14.96)
    else:
        assert info.checkpoint_fs is None


@pytest.mark.parametrize("start", sorted(STARTS))
def test_the_whole_memory_chain_predicts_every_starts_kv_cache(start: str) -> None:
    check_memory_chain(_log(start))


# -- both benchmarks, three rounds on the cold start's server -------------------------------
BENCH = DATA / "r4" / "01-cold" / "bench"
LEVELS = {1: 16, 16: 64, 64: 128}


def _metrics(tool: str, rnd: int, c: int) -> dict[str, Any]:
    d = json.loads((BENCH / f"{tool}-r{rnd}-c{c}.json").read_text())
    return d[0] if isinstance(d, list) else d


@pytest.mark.parametrize("c", sorted(LEVELS))
def test_every_round_of_both_tools_completed_the_same_load(c: int) -> None:
    for rnd in (1, 2, 3):
        vllm, hpc = _metrics("vllm", rnd, c), _metrics("hpcserve", rnd, c)
        assert vllm["max_concurrency"] == hpc["max_concurrency"] == c
        assert vllm["completed"] == hpc["completed"] == LEVELS[c]
        assert vllm["total_output_tokens"] == hpc["total_output_tokens"] == 128 * LEVELS[c]
        # prompts of the same size: 128 tokens + the chat template, within 1%
        assert _within(hpc["total_input_tokens"], vllm["total_input_tokens"])


def test_no_round_or_level_repeated_another_ones_prompts() -> None:
    seeds = [
        int(s) for f in sorted(BENCH.glob("vllm-r*-bench.txt")) for s in
        re.findall(r"Namespace\(.*?\bseed=(\d+)", f.read_text())
    ]  # fmt: skip
    assert sorted(seeds) == [100, 101, 102, 200, 201, 202, 300, 301, 302]
    (cold,) = [r for r in STARTS.values() if r["step"] == "cold"]
    assert [r["first"] for r in cold["bench"]["rounds"]] == ["vllm", "hpcserve", "vllm"]
    rates = re.findall(r"Prefix cache hit rate: ([\d.]+)%", _log("r4/01-cold"))
    assert rates and max(float(r) for r in rates) < 1.0  # run 3: up to 34.9%


def _median_ratio(key: str, c: int) -> float:
    vllm = statistics.median(_metrics("vllm", r, c)[key] for r in (1, 2, 3))
    hpc = statistics.median(_metrics("hpcserve", r, c)[key] for r in (1, 2, 3))
    return float(hpc / vllm)


@pytest.mark.parametrize("c", sorted(LEVELS))
@pytest.mark.parametrize("key", ["output_throughput", "median_tpot_ms", "mean_itl_ms"])
def test_both_tools_agree_on_tokens_within_ten_percent(key: str, c: int) -> None:
    assert 0.9 <= _median_ratio(key, c) <= 1.1


def test_first_token_times_agree_within_ten_percent_at_16() -> None:
    # run 3 (one round, same prompts at every level, a thread per request): 0.551
    assert 0.9 <= _median_ratio("median_ttft_ms", 16) <= 1.1
