"""The SLURM adapter: parsers on real output, one squeue call, fallbacks, retries."""

from __future__ import annotations

import pytest
from fakes import FakeExecutor, data, result

from hpcserve.cluster.slurm import (
    Slurm,
    format_duration,
    parse_duration,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol,
    parse_squeue,
)
from hpcserve.errors import RemoteError

SQUEUE = (
    "101|RUNNING|None|2|lab-n[1-2]|4:31|5:00|2026-11-22T19:01:02|0:29\n"
    "102|PENDING|Resources|2||5:00|5:00|N/A|0:00\n"
    "103|PENDING|(ReqNodeNotAvail, UnavailableNodes:lab-n3)|1||1-00:00:00|1-00:00:00|N/A|0:00\n"
)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("4:31", 271),
        ("00:10:00", 600),
        ("7-00:00:00", 7 * 86400),
        ("1-02:03:04", 93784),
        ("1-02", 93600),
        ("30", 1800),
        ("UNLIMITED", None),
        ("INVALID", None),
        ("N/A", None),
        ("", None),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_format_duration():
    assert format_duration(93784) == "1-02:03:04"
    assert format_duration(271) == "00:04:31"
    assert format_duration(None) == "-"


def test_parse_squeue_rows():
    jobs = parse_squeue(SQUEUE)
    run, pend, bad = jobs["101"], jobs["102"], jobs["103"]
    assert (run.state, run.reason, run.nodes, run.nodelist) == ("RUNNING", None, 2, "lab-n[1-2]")
    assert (run.time_left_s, run.time_limit_s, run.elapsed_s) == (271, 300, 29)
    assert run.start_time == "2026-11-22T19:01:02"
    assert (pend.state, pend.reason, pend.nodelist, pend.start_time) == (
        "PENDING",
        "Resources",
        None,
        None,
    )
    assert bad.reason == "(ReqNodeNotAvail, UnavailableNodes:lab-n3)"
    assert run.active and not run.ended


def test_parse_scontrol_real_pending_outputs():
    job = parse_scontrol(data("slurm", "scontrol-pending.txt"))
    assert job is not None
    assert (job.job_id, job.state, job.nodes, job.time_limit_s) == ("2", "PENDING", 1, 600)
    assert job.reason is not None and job.reason.startswith("Nodes required for job are DOWN")
    assert job.nodelist is None and job.start_time is None
    qos = parse_scontrol(data("slurm", "scontrol-pending-qos.txt"))
    assert qos is not None
    assert (qos.reason, qos.nodes, qos.time_limit_s) == ("QOSMaxJobsPerUserLimit", 20, 604800)


def test_parse_scontrol_one_line_ended_job():
    text = (
        "JobId=7 JobName=hpcserve UserId=root(0) GroupId=root(0) JobState=TIMEOUT "
        "Reason=TimeLimit Dependency=(null) ExitCode=0:15 RunTime=00:01:09 TimeLimit=00:01:00 "
        "StartTime=2026-11-22T19:00:00 EndTime=2026-11-22T19:01:09 NodeList=lab-n[1-2] NumNodes=2"
    )
    job = parse_scontrol(text)
    assert job is not None
    assert (job.state, job.reason, job.exit_code, job.nodelist) == (
        "TIMEOUT",
        "TimeLimit",
        "0:15",
        "lab-n[1-2]",
    )
    assert job.time_left_s is None and job.source == "scontrol"
    assert parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None


def test_parse_sacct():
    jobs = parse_sacct(
        "55|CANCELLED by 1000|0:0|n[1-2]|2026-11-22T10:00:00|2026-11-22T10:05:00|00:05:00|"
        "01:00:00|2|None\n56|OUT_OF_MEMORY|0:125|n3|Unknown|Unknown|00:00:10|00:10:00|1|None\n"
    )
    assert jobs["55"].state == "CANCELLED"
    assert jobs["56"].state == "OUT_OF_MEMORY" and jobs["56"].exit_code == "0:125"


def test_parse_sbatch_parsable():
    assert parse_sbatch_parsable("4711\n") == ("4711", None)
    assert parse_sbatch_parsable("4711;meluxina\n") == ("4711", "meluxina")
    assert parse_sbatch_parsable("sbatch: warning: x\n4712\n") == ("4712", None)
    with pytest.raises(RemoteError, match="no job id"):
        parse_sbatch_parsable("sbatch: error: Batch job submission failed")


def squeue_says(text: str, rc: int = 0, stderr: str = ""):
    return lambda argv: result(argv, text, stderr, rc) if argv[0] == "squeue" else None


def test_query_uses_one_squeue_call_for_all_jobs():
    ex = FakeExecutor(squeue_says(SQUEUE))
    jobs = Slurm(ex).query(["101", "102", "103"])
    assert [j.state for j in jobs.values()] == ["RUNNING", "PENDING", "PENDING"]
    assert len(ex.calls) == 1
    argv = ex.calls[0]
    assert argv[:5] == ["squeue", "-h", "-t", "all", "-j"] and argv[5] == "101,102,103"


def test_query_falls_back_to_scontrol_then_sacct():
    def scontrol(argv):
        if argv[0] != "scontrol":
            return None
        if argv[-1] == "201":
            return result(
                argv,
                "JobId=201 JobState=COMPLETED Reason=None ExitCode=0:0 "
                "RunTime=00:02:00 TimeLimit=00:10:00 NodeList=n1 NumNodes=1",
            )
        return result(argv, "", "slurm_load_jobs error: Invalid job id specified", 1)

    def sacct(argv):
        if argv[0] != "sacct":
            return None
        return result(argv, "")  # the lab: no slurmdbd, sacct prints nothing

    ex = FakeExecutor(
        squeue_says("", 1, "slurm_load_jobs error: Invalid job id specified"), scontrol, sacct
    )
    jobs = Slurm(ex).query(["201", "202"])
    assert jobs["201"].state == "COMPLETED" and jobs["201"].source == "scontrol"
    assert jobs["202"].state == "UNKNOWN"
    assert [c[0] for c in ex.calls] == ["squeue", "scontrol", "scontrol", "sacct"]


def test_query_without_sacct_installed():
    ex = FakeExecutor(
        squeue_says(""),
        lambda a: (
            result(a, "", "slurm_load_jobs error: Invalid job id specified", 1)
            if a[0] == "scontrol"
            else None
        ),
    )
    assert Slurm(ex).query(["9"])["9"].state == "UNKNOWN"


@pytest.mark.parametrize(
    "message",
    [
        "squeue: error: slurm_receive_msg: Socket timed out on send/recv operation",
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
        "squeue: error: slurm_receive_msg: Zero Bytes were transmitted or received",
    ],
)
def test_transient_failures_are_retried_with_backoff(message):
    answers = [result([], "", message, 1), result([], "", message, 1), result([], SQUEUE)]
    ex = FakeExecutor(lambda a: answers.pop(0))
    slept: list[float] = []
    jobs = Slurm(ex, sleep=slept.append).squeue(["101"])
    assert jobs["101"].state == "RUNNING"
    assert slept == [1.0, 2.0]
    assert len(ex.calls) == 3


def test_persistent_transient_failure_is_reported_plainly():
    msg = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    ex = FakeExecutor(lambda a: result(a, "", msg, 1))
    slept: list[float] = []
    with pytest.raises(RemoteError, match="did not answer after 4 tries") as e:
        Slurm(ex, sleep=slept.append).squeue(["1"])
    assert "Unable to contact slurm controller" in str(e.value)
    assert slept == [1.0, 2.0, 4.0]


def test_other_failures_are_not_retried():
    ex = FakeExecutor(
        lambda a: result(
            a, "", "scancel: error: Kill job error on job id 5: Access/permission denied", 1
        )
    )
    with pytest.raises(RemoteError, match="permission denied"):
        Slurm(ex, sleep=lambda s: None).cancel("5")
    assert len(ex.calls) == 1


def test_submit_and_cancel_argv():
    ex = FakeExecutor(lambda a: result(a, "4711;lab\n") if a[0] == "sbatch" else result(a))
    s = Slurm(ex)
    assert s.submit("/jobs/x/launcher.sbatch", ["--time=00:01:00"]) == ("4711", "lab")
    s.cancel("4711")
    assert ex.calls == [
        ["sbatch", "--parsable", "--time=00:01:00", "/jobs/x/launcher.sbatch"],
        ["scancel", "4711"],
    ]


def test_real_lab_squeue_rows():
    jobs = parse_squeue(data("slurm", "lab-squeue-pending.txt"))
    assert jobs["4"].state == "PENDING" and jobs["4"].reason == "PartitionNodeLimit"
    assert jobs["4"].nodes == 3 and jobs["4"].nodelist is None
    assert jobs["6"].reason == "BeginTime" and jobs["6"].start_time == "2026-11-22T20:05:35"
    assert jobs["7"].reason == "JobHeldUser"
    assert jobs["3"].state == "FAILED" and jobs["3"].ended
    assert jobs["6"].time_limit_s is None  # UNLIMITED
    cancelled = parse_squeue(data("slurm", "lab-squeue-cancelled.txt"))
    assert {j.state for j in cancelled.values()} == {"CANCELLED"}


def test_real_lab_scontrol_one_line():
    job = parse_scontrol(data("slurm", "lab-scontrol-partitionconfig.txt"))
    assert job is not None
    assert (job.job_id, job.state, job.reason, job.nodes) == (
        "4",
        "PENDING",
        "PartitionNodeLimit",
        3,
    )
    assert job.nodelist is None and job.time_limit_s is None


def test_real_lab_sbatch_rejection_is_one_plain_error():
    msg = data("slurm", "lab-errors.txt").splitlines()[0]
    ex = FakeExecutor(lambda a: result(a, "", msg + "\n", 1))
    with pytest.raises(RemoteError) as e:
        Slurm(ex, sleep=lambda s: None).submit("/x/launcher.sbatch")
    assert str(e.value).endswith("Invalid feature specification")
    assert len(ex.calls) == 1


def test_real_lab_ended_jobs():
    jobs = parse_squeue(data("lab-runs", "ended.squeue.txt"))
    assert jobs["3"].state == "TIMEOUT" and jobs["3"].reason == "TimeLimit"
    assert jobs["3"].time_left_s is None and jobs["3"].time_limit_s == 60  # "INVALID", "1:00"
    assert jobs["2"].state == "FAILED" and jobs["2"].reason == "NonZeroExitCode"
    assert jobs["6"].state == "COMPLETING" and jobs["6"].active
    assert jobs["1"].state == "COMPLETED" and jobs["1"].ended


def test_controller_down_after_retries_is_unreachable_so_wait_keeps_polling():
    from hpcserve.errors import Unreachable

    msg = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    ex = FakeExecutor(lambda a: result(a, "", msg, 1))
    with pytest.raises(Unreachable, match="did not answer after 4 tries"):
        Slurm(ex, sleep=lambda s: None).squeue(["1"])


def test_munge_down_is_one_line_naming_munge_and_not_retried():
    from hpcserve.errors import Unreachable

    # squeue's own lines with munged stopped (SLURM 22.05, auth/munge)
    err = (
        "squeue: error: If munged is up, restart with --num-threads=10\n"
        'squeue: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2": '
        "No such file or directory\n"
        "squeue: error: slurm_send_node_msg: auth_g_create: REQUEST_JOB_INFO has authentication "
        "error\n"
        "slurm_load_jobs error: Protocol authentication error\n"
    )
    ex = FakeExecutor(lambda a: result(a, "", err, 1))
    with pytest.raises(RemoteError, match=r"authentication \(munge\) failed on remote") as e:
        Slurm(ex, sleep=lambda s: None).squeue(["1"])
    assert not isinstance(e.value, Unreachable)
    assert "\n" not in str(e.value) and "Protocol authentication error" in str(e.value)
    assert len(ex.calls) == 1
