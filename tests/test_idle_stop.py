"""--idle-stop: the cause `status` shows for a job its launcher ended (hpcserve/service/stop.py),
against the fake SLURM of tests/test_cli_jobs.py (FakeCluster, named as such)."""

from __future__ import annotations

import pytest
from test_cli_jobs import FakeCluster, add_job

from hpcserve.service.stop import StopCause, stop_cause

IDLE = "hpcserve: stopped: idle for 1m (nothing running or waiting since 12:00:01)"


def test_stop_cause_is_the_last_stop_line() -> None:
    lines = ["hpcserve: job 7: head n1", IDLE, "srun: error: n1: task 0: Terminated"]
    assert stop_cause(lines) == StopCause("idle", IDLE.removeprefix("hpcserve: "))
    handover = "hpcserve: stopped: handed over to job 8 (drained in 12 s)"
    assert stop_cause([handover]) == StopCause("handover", handover.removeprefix("hpcserve: "))
    assert stop_cause(["hpcserve: stopped: something else", "stopped: idle for 1m"]) is None


@pytest.fixture
def lab(tmp_path, monkeypatch) -> FakeCluster:
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    return FakeCluster()


def test_a_job_ended_by_idle_stop_is_stopped_not_failed(lab, capsys) -> None:
    add_job("51", name="idle", nodes=1)
    lab.add("51", "COMPLETED", nodes=1)
    lab.ex.files["/jobs/51/slurm-51.out"] = f"{IDLE}\nsrun: error: n1: task 0: Terminated\n"
    code, out, err = lab.run(capsys, "status", "idle")
    assert code == 0, err
    assert out.splitlines()[0] == f"job idle (51) on lab: COMPLETED - {IDLE[10:]}"
    assert "cause:" not in out


def test_a_failure_before_the_stop_still_counts(lab, capsys) -> None:
    add_job("52", nodes=1)
    lab.add("52", "FAILED", nodes=1)
    lab.ex.files["/jobs/52/node-0.log"] = "torch.OutOfMemoryError: CUDA out of memory.\n"
    lab.ex.files["/jobs/52/slurm-52.out"] = f"{IDLE}\n"
    code, out, _ = lab.run(capsys, "status", "52")
    assert code == 1 and "failed: CUDA out of memory" in out


def test_a_running_job_is_not_called_stopped(lab, capsys) -> None:
    add_job("53", nodes=1)
    lab.add("53", "RUNNING", nodes=1)
    lab.ex.files["/jobs/53/slurm-53.out"] = f"{IDLE}\n"
    _code, out, _ = lab.run(capsys, "status", "53")
    assert "stopped: idle" not in out
