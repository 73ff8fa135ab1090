"""hpcserve's parsers and planner on the second real GPU run (tests/data/gpu-vllm-2/README.md).

Two H200s of one host, each playing one "node": the launcher rendered by the current
`hpcserve render` ran vLLM 0.26.0 as head (`--node-rank 0`) + `--headless` worker
(`--node-rank 1`), TP=1 x PP=2, once over NVLink P2P and once with P2P/SHM/IB disabled
(NET/Socket). No GPU is needed here: the tests read what came back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcserve.jobs.phases import PHASES, PhaseInfo, merge, read_phase, split_lines
from hpcserve.nccl import scan_paths
from hpcserve.plan.modelinfo import load_model_info
from hpcserve.plan.sizing import parse_vllm_kv_log, predict_kv_cache_tokens

DATA = Path(__file__).parent / "data" / "gpu-vllm-2"
REPO = Path(__file__).parent.parent
RUNS = ("p2p", "socket")
KV_TOKENS = 67_298_400  # "GPU KV cache size: 67,298,400 tokens" in both runs


def _log(run: str, node: int) -> str:
    return (DATA / run / f"node-{node}.log").read_text()


def _nccl_cli(run: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcserve", "nccl", str(DATA / run / "nccl")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


# -- NCCL ------------------------------------------------------------------------------------
def test_nccl_calls_the_p2p_run_a_single_host_p2p_path() -> None:
    files = sorted(str(p) for p in (DATA / "p2p" / "nccl").glob("*.log"))
    assert len(files) == 2  # one NCCL_DEBUG_FILE per "node"
    r = scan_paths(files).to_dict()
    assert r["nccl_version"] == "2.28.9+cuda13.0"
    assert (r["nodes"], r["ranks"]) == (1, 2)
    assert r["cross_node"]["transport"] == "none"
    assert r["intra_node"] == ["p2p"]
    assert r["verdict"] == "single-node"
    res = _nccl_cli("p2p")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "NCCL: single node (p2p)"


def test_nccl_calls_the_socket_run_one_host_over_sockets_and_degraded() -> None:
    r = scan_paths(sorted(str(p) for p in (DATA / "socket" / "nccl").glob("*.log"))).to_dict()
    assert (r["nodes"], r["ranks"]) == (1, 2)  # although NCCL itself says nNodes 2
    assert r["cross_node"]["transport"] == "none"
    assert r["intra_node"] == ["net"]
    assert r["verdict"] == "degraded"
    assert any("NET/Socket" in line for line in r["evidence"])
    assert any("nNodes 2" in w for w in r["warnings"])
    res = _nccl_cli("socket")
    assert res.returncode == 1, res.stderr  # 1 = degraded
    assert res.stdout.startswith("NCCL: degraded: one node whose GPUs talk over NET/Socket")


# -- lifecycle phases ------------------------------------------------------------------------
@pytest.mark.parametrize("run", RUNS)
def test_phases_of_the_head_log_reach_ready_with_the_kv_cache(run: str) -> None:
    head = read_phase(split_lines(_log(run, 0)))
    assert head.phase == "ready"
    assert head.vllm_version == "0.26.0"
    assert head.kv_cache_memory_gib == 128.36
    assert head.kv_cache_tokens == KV_TOKENS
    assert (head.max_model_len, head.max_concurrency) == (4096, 16430.27)
    assert head.model_memory_gib == 0.01
    assert "KV cache 67,298,400 tokens" in head.detail()


@pytest.mark.parametrize("run", RUNS)
def test_phases_line_by_line_go_through_every_phase_in_order(run: str) -> None:
    info = PhaseInfo()
    seen = [info.phase]
    for line in split_lines(_log(run, 0)):
        read_phase([line], info)
        if info.phase != seen[-1]:
            seen.append(info.phase)
    assert seen == list(PHASES)


@pytest.mark.parametrize("run", RUNS)
def test_headless_worker_loads_but_the_job_phase_is_the_heads(run: str) -> None:
    worker = read_phase(split_lines(_log(run, 1)))
    # the headless node logs its own loading, memory profile and graphs, never the API
    assert worker.weights_percent == 100
    assert worker.kv_cache_memory_gib == 128.36
    assert worker.phase in ("kv_cache", "cuda_graphs")
    job = merge([read_phase(split_lines(_log(run, 0))), worker])
    assert job.phase == "ready"
    assert job.kv_cache_tokens == KV_TOKENS


@pytest.mark.parametrize("run", RUNS)
def test_wait_loop_saw_the_phases_in_order_and_ended_ready(run: str) -> None:
    w = json.loads((DATA / run / "wait.json").read_text())
    assert w["ready"] is True and w["health_every_s"] == 0.25
    phases = [t["phase"] for t in w["timeline"]]
    assert phases[-1] == "ready"
    ranks = [PHASES.index(p) for p in phases]
    assert ranks == sorted(ranks)  # never went back
    assert {"loading", "kv_cache", "cuda_graphs", "api"} <= set(phases)


# -- planner ---------------------------------------------------------------------------------
@pytest.mark.parametrize("run", RUNS)
def test_planner_predicts_the_kv_cache_that_vllm_printed(run: str) -> None:
    seen = parse_vllm_kv_log(_log(run, 0))
    assert seen["tokens"] == KV_TOKENS
    info = load_model_info("tiny-llama", str(DATA / "tiny-model-config.json"))
    pred = predict_kv_cache_tokens(
        info, seen["available_bytes"], tp=1, pp=2, max_model_len=int(seen["max_model_len"])
    )
    assert abs(pred.tokens - seen["tokens"]) <= 0.10 * seen["tokens"], (pred.tokens, seen)
    # each PP stage holds only its own 2 of the 4 layers: ignoring PP halves the figure
    flat = predict_kv_cache_tokens(
        info, seen["available_bytes"], tp=1, pp=1, max_model_len=int(seen["max_model_len"])
    )
    assert abs(flat.tokens - seen["tokens"]) > 0.10 * seen["tokens"]


# -- what ran ----------------------------------------------------------------------------------
@pytest.mark.parametrize("run", RUNS)
def test_the_run_used_the_rendered_launchers_node_roles(run: str) -> None:
    launcher = (DATA / run / "launcher.sbatch").read_text()
    assert "export PYTHONUNBUFFERED=1" in launcher
    assert "--wait=30" in launcher
    head, worker = _log(run, 0), _log(run, 1)
    assert "--node-rank 0 --master-addr 127.0.0.1" in head
    assert "--headless" not in head.split("hpcserve: exec: ", 1)[1].splitlines()[0]
    exec_1 = worker.split("hpcserve: exec: ", 1)[1].splitlines()[0]
    assert "--node-rank 1" in exec_1 and exec_1.endswith("--headless")


@pytest.mark.parametrize("run", RUNS)
def test_hpcserve_bench_completed_every_request(run: str) -> None:
    results: list[dict[str, Any]] = json.loads((DATA / run / "bench.json").read_text())
    assert [r["max_concurrency"] for r in results] == [1, 16]
    for r in results:
        assert (r["completed"], r["failed"]) == (64, 0)
        assert r["total_output_tokens"] == 64 * 128
        assert r["median_ttft_ms"] > 0 and r["median_tpot_ms"] > 0
