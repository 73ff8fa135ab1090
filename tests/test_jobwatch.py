"""The watcher's pieces: log following by offsets, and wait's polling schedule (fake clock)."""

from __future__ import annotations

import time
from itertools import pairwise

from fakes import FakeClock, FakeExecutor, result

from hpcserve.cluster.executor import LocalExecutor
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.watch import JobWatch, LogFollower, WaitTiming, wait_ready


def test_local_follower_reads_only_new_complete_lines(tmp_path):
    log = tmp_path / "node-0.log"
    log.write_text("one\ntw")
    f = LogFollower(str(log))
    ex = LocalExecutor()
    assert f.read_new(ex) == ["one"]
    with log.open("a") as fh:
        fh.write("o\nthree\n")
    assert f.read_new(ex) == ["two", "three"]
    assert f.read_new(ex) == []
    log.write_text("new\n")  # replaced by a shorter file: start over
    assert f.read_new(ex) == ["new"]


def test_follower_treats_carriage_returns_as_line_ends(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("Loading 0%\rLoading 50%\rLoading 100%\n")
    assert LogFollower(str(log)).read_new(LocalExecutor()) == [
        "Loading 0%",
        "Loading 50%",
        "Loading 100%",
    ]


def test_remote_follower_uses_tail_from_offset():
    ex = FakeExecutor(files={"/j/node-0.log": "a\nb\n"})
    f = LogFollower("/j/node-0.log")
    assert f.read_new(ex) == ["a", "b"]
    ex.files["/j/node-0.log"] += "c\n"
    assert f.read_new(ex) == ["c"]
    assert ex.calls[-1] == ["tail", "-c", "+5", "/j/node-0.log"]
    assert LogFollower("/j/missing.log").read_new(ex) == []


def make_watch(states: list[str], ready_at: float, clock: FakeClock):
    rec = JobRecord(
        "7", "lab", "m", 1, 1, 1, "/j", time.time(), False, head_addr="10.0.0.1", api_port=8000
    )
    squeue_times: list[float] = []

    def squeue(argv):
        if argv[0] != "squeue":
            return None
        squeue_times.append(clock.t)
        state = states.pop(0) if len(states) > 1 else states[0]
        return result(argv, f"7|{state}|None|1|n1|10:00|20:00|N/A|0:01\n")

    probes: list[float] = []

    def probe(url: str) -> bool:
        probes.append(clock.t)
        return clock.t >= ready_at

    ex = FakeExecutor(squeue, files={"/j/node-0.log": ""})
    return JobWatch(rec, ex, probe=probe), squeue_times, probes


def test_wait_backs_off_squeue_while_pending_then_probes_health_often():
    clock = FakeClock()
    states = ["PENDING"] * 5 + ["RUNNING"]
    watch, squeue_times, probes = make_watch(states, ready_at=100.0, clock=clock)
    res = wait_ready(watch, 1000, clock=clock, sleep=clock.sleep)
    assert res.status.ready
    gaps = [b - a for a, b in pairwise(squeue_times)]
    assert gaps[:5] == [2.0, 4.0, 8.0, 16.0, 30.0]  # doubling while pending, capped
    running_gaps = [b - a for a, b in pairwise(probes)]
    assert running_gaps and max(running_gaps) <= 0.5  # /health at least every 0.5 s
    assert clock.t - 100.0 <= 0.5  # readiness noticed within one probe interval
    # squeue no more often than every 5 s while running
    running_sq = [t for t in squeue_times if t > squeue_times[5]]
    assert all(b - a >= 5.0 for a, b in pairwise(running_sq))


def test_wait_times_out():
    clock = FakeClock()
    watch, _sq, _pr = make_watch(["PENDING"], ready_at=1e9, clock=clock)
    res = wait_ready(watch, 60, clock=clock, sleep=clock.sleep)
    assert res.timed_out and not res.status.ready
    assert clock.t == 60


def test_wait_custom_timing_is_used():
    clock = FakeClock()
    watch, _sq, probes = make_watch(["RUNNING"], ready_at=3.0, clock=clock)
    wait_ready(watch, 100, timing=WaitTiming(health_every=0.1), clock=clock, sleep=clock.sleep)
    assert max(b - a for a, b in pairwise(probes)) <= 0.1 + 1e-9


def outage_watch(clock: FakeClock, down: tuple[float, float], ready_at: float):
    """A running job whose cluster does not answer between ``down[0]`` and ``down[1]`` (an sshd
    or slurmctld restart): every command then raises Unreachable, as the SSH executor does."""
    from hpcserve.errors import Unreachable

    rec = JobRecord(
        "7", "lab", "m", 1, 1, 1, "/j", time.time(), False, head_addr="10.0.0.1", api_port=8000
    )

    def cluster(argv):
        if down[0] <= clock.t < down[1]:
            raise Unreachable("cannot reach 127.0.0.1:2222: [Errno 111] Connection refused")
        if argv[0] == "squeue":
            return result(argv, "7|RUNNING|None|1|n1|10:00|20:00|N/A|0:01\n")
        return None

    ex = FakeExecutor(cluster, files={"/j/node-0.log": "Loading weights\n"})
    run = ex.run

    def run_or_fail(argv, **kw):
        cluster(argv)  # tail goes through the outage too
        return run(argv, **kw)

    ex.run = run_or_fail  # type: ignore[method-assign]
    return JobWatch(rec, ex, probe=lambda url: clock.t >= ready_at)


def test_wait_keeps_polling_through_an_outage_and_says_so_once():
    clock = FakeClock()
    watch = outage_watch(clock, down=(0.5, 40.0), ready_at=60.0)
    shown: list[str] = []
    res = wait_ready(
        watch, 600, clock=clock, sleep=clock.sleep, on_change=lambda s: shown.append(s.detail)
    )
    assert res.status.ready and not res.timed_out
    notes = [d for d in shown if "not answering" in d]
    assert len(notes) == 1 and "Connection refused" in notes[0] and "still trying" in notes[0]
    assert shown[-1].startswith("ready")


def test_wait_through_an_outage_from_the_first_look_does_not_call_the_job_ended():
    clock = FakeClock()
    watch = outage_watch(clock, down=(0.0, 20.0), ready_at=30.0)
    res = wait_ready(watch, 600, clock=clock, sleep=clock.sleep)
    assert res.status.ready  # the UNKNOWN state before any answer is not "ended"


def test_wait_gives_up_after_a_long_outage_with_one_line():
    import pytest

    from hpcserve.errors import Unreachable

    clock = FakeClock()
    watch = outage_watch(clock, down=(0.0, 1e9), ready_at=1e9)
    with pytest.raises(Unreachable, match=r"did not answer for 60\d s: cannot reach") as e:
        wait_ready(watch, None, clock=clock, sleep=clock.sleep)
    assert "\n" not in str(e.value)


def test_wait_timeout_during_an_outage_is_a_timeout():
    clock = FakeClock()
    watch = outage_watch(clock, down=(0.0, 1e9), ready_at=1e9)
    res = wait_ready(watch, 30, clock=clock, sleep=clock.sleep)
    assert res.timed_out and "not answering" in res.status.detail
