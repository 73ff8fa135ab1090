"""Failure causes from real log lines (origins in tests/data/vllm-lines/failure-lines.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcserve.jobs.failures import RULES, diagnose, scan, strip_prefix

DATA = Path(__file__).parent / "data" / "vllm-lines"
CASES = json.loads((DATA / "failure-lines.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[f"{c['cause']}-{i}" for i, c in enumerate(CASES)])
def test_each_real_line_is_recognised(case):
    found = scan([case["line"]])
    assert found, case["line"]
    assert found[0].cause == case["cause"]
    assert found[0].suggestion


def test_every_rule_has_a_real_line():
    assert {r.cause for r in RULES} == {c["cause"] for c in CASES}


def test_healthy_startup_has_no_failure():
    lines = (DATA / "startup-gpu.log").read_text().splitlines()
    assert scan(lines) == []


def test_prefix_is_stripped():
    line = (
        "(EngineCore_DP0 pid=265) ERROR 02-27 10:31:24 [multiproc_executor.py:231] "
        "Worker proc VllmWorker-0 died unexpectedly, shutting down executor."
    )
    assert strip_prefix(line).startswith("Worker proc VllmWorker-0")


def test_heads_suggestion_names_the_numbers():
    (f,) = scan(
        [
            "ValueError: Total number of attention heads (40) must be divisible by "
            "tensor parallel size (3)."
        ]
    )
    assert "40 attention heads" in f.suggestion and "not 3" in f.suggestion


def test_srun_line_names_node_and_host():
    (f,) = scan(["srun: error: lab-n2: task 1: Killed"], source="slurm-12.out")
    assert (f.node, f.host) == (1, "lab-n2")
    assert "on node 1 (lab-n2)" in f.describe()


def test_node_comes_from_the_log_name():
    (f,) = scan(
        ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."],
        source="/jobs/7/node-3.log",
    )
    assert f.node == 3


def test_root_cause_beats_consequences_across_logs():
    logs = {
        "node-0.log": [
            "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/"
            "c10d/NCCLUtils.hpp:275, unhandled system error",
            "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root "
            "cause above. Failed core proc(s): {}",
        ],
        "node-1.log": [
            "(EngineCore_DP0 pid=412) ValueError: No available memory for the cache blocks. "
            "Try increasing `gpu_memory_utilization`."
        ],
        "slurm-7.out": ["srun: error: lab-n2: task 1: Exited with exit code 1"],
    }
    f = diagnose(logs)
    assert f is not None
    assert (f.cause, f.node) == ("kv_cache_too_small", 1)


def test_port_in_use_is_not_mistaken_for_nccl():
    line = next(c["line"] for c in CASES if "DistNetworkError" in c["line"])
    assert diagnose({"node-0.log": [line]}).cause == "port_in_use"


def test_generic_death_only_when_nothing_better():
    f = diagnose(
        {
            "node-0.log": [
                "(APIServer pid=1) RuntimeError: Engine core initialization "
                "failed. See root cause above. Failed core proc(s): {}"
            ]
        }
    )
    assert f is not None and f.cause == "process_died" and f.node == 0
    assert diagnose({"node-0.log": ["INFO all good"]}) is None


CPU = Path(__file__).parent / "data" / "vllm-cpu"  # real lab runs, vLLM 0.32.0 CPU build


def test_real_cpu_healthy_logs_have_no_failure():
    for name in ("tp2-head.log", "tp2-worker.log"):
        assert scan((CPU / name).read_text().splitlines(), name) == [], name


def test_real_cpu_pp2_engine_crash_is_process_died_on_head():
    logs = {
        "node-0.log": (CPU / "pp2-head-fails.log").read_text().splitlines(),
        "node-1.log": (CPU / "pp2-worker-fails.log").read_text().splitlines(),
    }
    f = diagnose(logs)
    assert f is not None
    assert (f.cause, f.node) == ("process_died", 0)
    assert f.line == "EngineCore encountered a fatal error."


RUNS = Path(__file__).parent / "data" / "lab-runs"  # real lab jobs, vLLM 0.32.0 CPU, SLURM 22.05


def run_logs(stem: str) -> dict[str, list[str]]:
    logs = {}
    for suffix, name in ((".node-0.log", "node-0.log"), (".slurm.out", "slurm-1.out")):
        p = RUNS / f"{stem}{suffix}"
        if p.exists():
            logs[name] = p.read_text().splitlines()
    return logs


def test_real_lab_missing_model_path():
    f = diagnose(run_logs("missing-model"))
    assert f is not None and f.cause == "model_not_found" and f.node == 0
    assert f.line.startswith("huggingface_hub.errors.HFValidationError: Repo id must be")


def test_real_lab_tp3_layout():
    f = diagnose(run_logs("layout-tp3"))
    assert f is not None and f.cause == "layout_heads"
    assert "Total number of attention heads (4) must be divisible" in f.line
    assert "4 attention heads" in f.suggestion and "not 3" in f.suggestion


def test_real_lab_oversized_kv_cache():
    f = diagnose(run_logs("kv-oversized"))
    assert f is not None and f.cause == "kv_cache_too_small"
    assert "is less than requested memory for kv (64.0 GiB)" in f.line


def test_real_lab_killed_worker_names_node_1():
    logs = run_logs("killed-worker")
    # the head's generic engine error must not hide which node died
    logs = {
        "node-0.log": [
            "RuntimeError: Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {'EngineCore': 1}"
        ],
        **logs,
    }
    f = diagnose(logs)
    assert f is not None and f.cause == "process_died"
    assert (f.node, f.host) == (1, "node2")
    assert f.line == "srun: error: node2: task 1: Exited with exit code 137"


def test_real_lab_time_limit_line():
    f = diagnose(run_logs("timeout"))
    assert f is not None and f.cause == "time_limit"
    assert f.line.startswith("slurmstepd-node1: error: *** JOB 3 ON node1 CANCELLED AT")


GPU = Path(__file__).parent / "data" / "gpu-vllm-runs"  # real H200 runs, vLLM 0.26.0


def gpu_logs(case: str) -> dict[str, list[str]]:
    return {
        f"node-{k}.log": (GPU / case / f"node-{k}.log").read_text().splitlines() for k in (0, 1)
    }


def test_real_gpu_missing_module():
    f = diagnose(gpu_logs("failed-tvm-ffi-missing"))
    assert f is not None and f.cause == "broken_install" and f.node == 0
    assert f.line == "ModuleNotFoundError: No module named 'tvm_ffi'"


def test_real_gpu_mismatched_dependency():
    f = diagnose(gpu_logs("failed-tvm-ffi-old"))
    assert f is not None and f.cause == "broken_install"
    assert "unexpected keyword argument 'extra_lib_paths'" in f.line


def test_real_gpu_healthy_start_has_no_failure_before_shutdown():
    for case in ("p2p", "socket"):
        head = gpu_logs(case)["node-0.log"]
        ready = next(i for i, ln in enumerate(head) if "Application startup complete" in ln)
        assert scan(head[: ready + 1], "node-0.log") == [], case


def test_a_node_failure_names_the_node_srun_lost():
    """A worker's slurmd killed (node down): the batch log's lines, SLURM 22.05."""
    from hpcserve.jobs.failures import scan

    batch = [
        "slurmstepd-node1: error: *** JOB 12 ON node1 CANCELLED AT 2026-12-01T12:00:00 DUE TO "
        "NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***",
        "srun: error: Node failure on node2",
    ]
    (f,) = [f for f in scan(batch, "slurm-12.out") if f.cause == "node_failure"]
    assert f.host == "node2" and f.line == "srun: error: Node failure on node2"
    assert " on node2: " in f.describe()
    (g,) = [f for f in scan(batch[:1], "slurm-12.out") if f.cause == "node_failure"]
    assert g.host is None  # the controller's line alone does not say which node
