"""Combining scheduler state, phase, failure and /health into one status."""

from __future__ import annotations

import time

from hpcserve.cluster.slurm import SchedJob
from hpcserve.jobs.failures import diagnose
from hpcserve.jobs.phases import read_phase
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.state import apply_endpoint, combine, explain_reason, parse_endpoint


def rec() -> JobRecord:
    return JobRecord("42", "local", "Qwen/Qwen3-8B", 2, 1, 2, "/jobs/42", time.time(), False)


def sched(state: str, **kw) -> SchedJob:
    return SchedJob("42", state, **kw)


def test_pending_with_reason_and_start():
    st = combine(rec(), sched("PENDING", reason="Resources", start_time="2026-11-22T20:00:00"))
    assert st.phase == "pending" and not st.finished
    assert "Resources: waiting for free nodes" in st.detail
    assert "expected start 2026-11-22T20:00:00" in st.detail


def test_pending_on_bad_constraint_is_a_failure():
    st = combine(rec(), sched("PENDING", reason="BadConstraints"))
    assert st.phase == "failed" and st.failure is not None
    assert st.failure.cause == "unschedulable"


def test_running_phase_from_logs_with_time_left():
    info = read_phase(["Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01]"])
    st = combine(rec(), sched("RUNNING", time_left_s=271), progress=info)
    assert st.phase == "loading"
    assert st.detail == "loading weights (50%, 1/2 shards); 00:04:31 left"


def test_running_and_health_ok_is_ready_with_url():
    r = rec()
    assert apply_endpoint(
        r,
        parse_endpoint(
            '{"job_id":"42","head_addr":"10.0.0.5","head_host":"n1","api_port":8001,'
            '"master_port":29501}'
        ),
    )
    st = combine(r, sched("RUNNING"), health=True)
    assert st.ready and st.phase == "ready" and st.url == "http://10.0.0.5:8001"
    assert not apply_endpoint(r, {"head_addr": "10.0.0.5", "api_port": 8001})


def test_partial_endpoint_is_ignored():
    assert parse_endpoint('{"job_id": "42"}') is None
    assert parse_endpoint("{not json") is None


def test_running_with_fatal_log_line_is_failed():
    f = diagnose({"node-1.log": ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"]})
    st = combine(rec(), sched("RUNNING"), failure=f)
    assert st.phase == "failed" and st.finished
    assert st.failure is not None and st.failure.node == 1


def test_timeout_state_gives_time_limit_cause():
    st = combine(rec(), sched("TIMEOUT", reason="TimeLimit"))
    assert st.phase == "failed" and st.failure is not None
    assert st.failure.cause == "time_limit"


def test_log_root_cause_wins_over_state():
    f = diagnose(
        {
            "node-0.log": [
                "ValueError: Total number of attention heads (32) must be "
                "divisible by tensor parallel size (3)."
            ]
        }
    )
    st = combine(rec(), sched("FAILED", exit_code="1:0"), failure=f)
    assert st.failure is not None and st.failure.cause == "layout_heads"


def test_failed_without_log_cause_says_so():
    st = combine(rec(), sched("FAILED", exit_code="1:0"))
    assert st.failure is not None and st.failure.cause == "job_failed"
    assert "exit code 1:0" in st.failure.line


def test_oom_state():
    st = combine(rec(), sched("OUT_OF_MEMORY"))
    assert st.failure is not None and st.failure.cause == "cpu_oom"


def test_cancelled_is_ended_not_failed_unless_it_failed_first():
    killed = diagnose({"slurm-42.out": ["srun: error: n2: task 1: Killed"]})
    st = combine(rec(), sched("CANCELLED"), failure=killed)
    assert st.phase == "ended" and st.failure is None and st.detail.startswith("cancelled")
    oom = diagnose({"node-0.log": ["torch.OutOfMemoryError: CUDA out of memory."]})
    st = combine(rec(), sched("CANCELLED"), failure=oom)
    assert st.phase == "failed"


def test_unknown_job_without_failure_is_ended():
    st = combine(rec(), sched("UNKNOWN"))
    assert st.phase == "ended" and "no longer knows" in st.detail


def test_log_says_ready_but_api_not_reached():
    info = read_phase(["INFO:     Application startup complete."])
    st = combine(rec(), sched("RUNNING"), progress=info, health=False)
    assert st.phase == "ready" and not st.ready
    assert "API not reached yet" in st.detail


def test_explain_reason_unknown_code_passes_through():
    assert explain_reason("SomethingNew") == "SomethingNew"
    assert explain_reason(None) is None


def test_real_lab_partition_node_limit_is_unschedulable():
    from fakes import data

    from hpcserve.cluster.slurm import parse_squeue

    job = parse_squeue(data("slurm", "lab-squeue-pending.txt"))["4"]
    st = combine(rec(), job)
    assert st.phase == "failed" and st.failure is not None
    assert st.failure.cause == "unschedulable"
    held = combine(rec(), parse_squeue(data("slurm", "lab-squeue-pending.txt"))["7"])
    assert held.phase == "pending" and "held by you" in held.detail


def test_requeued_after_a_node_failure_names_the_node_and_keeps_waiting():
    fail = diagnose(
        {"slurm-1.out": ["srun: error: Node failure on node2", "*** DUE TO NODE FAILURE ***"]}
    )
    st = combine(rec(), SchedJob("1", "PENDING", reason="BeginTime"), failure=fail)
    assert st.phase == "pending" and not st.finished  # SLURM runs it again: wait goes on
    assert st.detail.startswith("requeued after a node failure on node2; ")
    assert st.failure is not None and st.failure.host == "node2"
    plain = combine(rec(), SchedJob("1", "PENDING", reason="BeginTime"))
    assert not plain.detail.startswith("requeued") and plain.failure is None
