"""The job client (hpcserve.jobs.handle) and the executor seam, with fake executors (FakeExecutor,
named as such) and a stand-in HTTP server: no scheduler, SSH or vLLM is involved here."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import venv_site
from fakes import FakeClock, FakeExecutor, result
from net_fixtures import StandInHTTP

import hpcserve
from hpcserve.cluster.executor import LocalExecutor, tail_from
from hpcserve.cluster.slurm import Slurm
from hpcserve.errors import RemoteError, UsageError
from hpcserve.jobs.handle import Job, Jobs, LogEnd, LogLine, submit
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.registry import Registry
from hpcserve.launch.render import LaunchRequest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    return Registry()


def record(job_id: str, site: str = "lab", **kw: object) -> JobRecord:
    return JobRecord(job_id, site, "m", 1, 1, 1, f"/jobs/{job_id}", time.time(), True, **kw)  # type: ignore[arg-type]


def squeue_row(jid: str, state: str) -> str:
    return f"{jid}|{state}|None|1|n1|10:00|20:00|N/A|0:01\n"


# -- the executor seam -------------------------------------------------------------------------
def test_local_read_from_an_offset_restarts_when_the_file_shrank(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("abcdef")
    ex = LocalExecutor()
    assert (ex.read_from(str(log), 2).text, ex.read_from(str(log), 2).start) == ("cdef", 2)
    log.write_text("xy")
    shrunk = ex.read_from(str(log), 6)
    assert (shrunk.text, shrunk.start) == ("xy", 0)
    missing = ex.read_from(str(tmp_path / "none.log"), 3)
    assert (missing.text, missing.start) == ("", 3)


def test_executors_say_where_they_are(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert LocalExecutor.remote is False and LocalExecutor().home() == str(tmp_path)
    ex = FakeExecutor(lambda a: result(a, "/home/u\n") if a[0] == "printenv" else None)
    assert ex.remote is True and ex.home() == "/home/u"
    assert ex.calls == [["printenv", "HOME"]]
    bad = FakeExecutor(lambda a: result(a, "", "", 1))
    with pytest.raises(RemoteError, match="cannot find the home directory"):
        bad.home()


def test_ssh_executor_reads_and_finds_home_through_commands() -> None:
    pytest.importorskip("paramiko")
    from hpcserve.cluster.ssh import SshExecutor

    class Recorded(SshExecutor):
        """SshExecutor whose commands are answered here instead of over a connection."""

        def __init__(self) -> None:
            super().__init__(login="login.example.org")
            self.calls: list[list[str]] = []

        def run(self, argv, *, input=None, timeout=60):  # noqa: A002
            self.calls.append(list(argv))
            return result(argv, "/home/me\n" if argv[0] == "printenv" else "tail of log")

    ex = Recorded()
    assert ex.remote is True
    assert ex.home() == "/home/me"
    chunk = ex.read_from("/j/node-0.log", 10)
    assert (chunk.text, chunk.start) == ("tail of log", 10)
    assert ex.calls == [["printenv", "HOME"], ["tail", "-c", "+11", "/j/node-0.log"]]


def test_tail_from_a_missing_file_is_empty() -> None:
    chunk = tail_from(FakeExecutor(), "/j/none.log", 7)
    assert (chunk.text, chunk.start) == ("", 7)


# -- opening -----------------------------------------------------------------------------------
def test_open_an_unknown_job_connects_nowhere(state: Registry) -> None:
    opened: list[str] = []

    def connect(name: str):
        opened.append(name)
        return venv_site(name=name), FakeExecutor()

    with pytest.raises(UsageError, match="no job 'nope' in the registry"):
        Job.open("nope", connect=connect)
    assert opened == []


def test_open_by_name_and_close_closes_the_executor(state: Registry) -> None:
    state.add(record("5", name="five"))
    ex = FakeExecutor()
    with Job.open("five", connect=lambda name: (venv_site(name=name), ex)) as job:
        assert (job.job_id, job.label, job.site.name) == ("5", "five (5)", "lab")
    assert ex.closed


# -- cancel ------------------------------------------------------------------------------------
def cancel_cluster(steps_left_for: int):
    """A fake scheduler where the job is RUNNING until scancel, then its steps linger for
    ``steps_left_for`` step queries."""
    seen = {"state": "RUNNING", "step_queries": 0}

    def respond(argv: list[str]):
        if argv[0] == "squeue" and "-s" in argv:
            seen["step_queries"] += 1
            left = seen["step_queries"] <= steps_left_for
            return result(argv, "9.0\n9.batch\n" if left else "")
        if argv[0] == "squeue":
            return result(argv, squeue_row("9", str(seen["state"])))
        if argv[0] == "scancel":
            seen["state"] = "CANCELLED"
            return result(argv)
        return None

    return FakeExecutor(respond)


def test_cancel_waits_for_the_steps_to_go(state: Registry) -> None:
    ex = cancel_cluster(steps_left_for=2)
    job = Job(record("9"), venv_site(name="lab"), ex, registry=state)
    clock = FakeClock()
    res = job.cancel(60, sleep=clock.sleep, clock=clock)
    assert res.cancelled and res.state == "CANCELLED"
    assert res.message.startswith("cancelled job 9 in 1.2 s: scheduler state CANCELLED")
    assert len(ex.commands("scancel")) == 1
    assert [c for c in ex.calls if "-s" in c] == [["squeue", "-h", "-s", "-j", "9", "-o", "%i"]] * 3


def test_cancel_that_cannot_be_confirmed_names_the_steps(state: Registry) -> None:
    ex = cancel_cluster(steps_left_for=1000)
    job = Job(record("9"), venv_site(name="lab"), ex, registry=state)
    clock = FakeClock()
    with pytest.raises(RemoteError, match="after 5 s job 9 is still CANCELLED with steps 9.0"):
        job.cancel(5, sleep=clock.sleep, clock=clock)


# -- logs --------------------------------------------------------------------------------------
def test_follow_logs_ends_with_the_last_lines_and_the_state(state: Registry) -> None:
    states = ["RUNNING", "COMPLETED"]

    def respond(argv: list[str]):
        if argv[0] == "squeue":
            return result(argv, squeue_row("3", states.pop(0) if len(states) > 1 else states[0]))
        return None

    ex = FakeExecutor(respond, files={"/jobs/3/node-0.log": "one\n"})
    job = Job(record("3"), venv_site(name="lab"), ex, registry=state)
    sources = job.log_sources(node=0)
    clock = FakeClock()

    def sleep(s: float) -> None:  # the log grows while following; the last line has no newline
        clock.sleep(s)
        ex.files["/jobs/3/node-0.log"] = "one\ntwo\nthree"

    events = list(job.follow_logs(sources, sched_every_s=0.4, clock=clock, sleep=sleep))
    lines = [(e.text, e.final) for e in events if isinstance(e, LogLine)]
    assert lines == [("one", False), ("two", False), ("three", True)]
    assert events[-1] == LogEnd("COMPLETED")


def test_follow_logs_resumes_after_the_login_node_came_back(state: Registry) -> None:
    """sshd restarted mid-follow: one pause, then the lines written meanwhile, none twice."""
    from hpcserve.errors import Unreachable
    from hpcserve.jobs.handle import LogPause

    clock = FakeClock()
    log = "/jobs/3/node-0.log"
    ex = FakeExecutor(files={log: "one\n"})
    run = ex.run
    ended = [False]

    def run_or_fail(argv: list[str], **kw: object) -> object:
        if 2.0 <= clock.t < 20.0:  # sshd is down
            raise Unreachable("cannot reach 127.0.0.1:2222: [Errno 111] Connection refused")
        if argv[0] == "squeue":
            return result(argv, squeue_row("3", "COMPLETED" if ended[0] else "RUNNING"))
        return run(argv, **kw)  # type: ignore[arg-type]

    ex.run = run_or_fail  # type: ignore[method-assign]

    def sleep(s: float) -> None:
        clock.sleep(s)
        if clock.t >= 5.0:
            ex.files[log] = "one\ntwo\nthree\n"  # written while the login node was away
        ended[0] = clock.t >= 30.0

    job = Job(record("3"), venv_site(name="lab"), ex, registry=state)
    events = list(job.follow_logs(job.log_sources(node=0), clock=clock, sleep=sleep))
    pauses = [e for e in events if isinstance(e, LogPause)]
    assert len(pauses) == 1 and "Connection refused" in pauses[0].reason
    assert [e.text for e in events if isinstance(e, LogLine)] == ["one", "two", "three"]
    assert events[-1] == LogEnd("COMPLETED")


def test_log_sources_head_workers_then_batch(state: Registry) -> None:
    rec = record("4")
    rec.nodes = 2
    job = Job(rec, venv_site(name="lab"), FakeExecutor(), registry=state)
    labels = [s.label for s in job.log_sources()]
    assert labels == ["node-0.log (head)", "node-1.log (worker 1)", "batch step"]
    assert [s.path for s in job.log_sources(batch=True)] == ["/jobs/4/slurm-4.out"]
    with pytest.raises(UsageError, match="--node must be between 0 and 1"):
        job.log_sources(node=2)


# -- the registry's side -----------------------------------------------------------------------
def test_status_all_asks_each_site_once_and_reports_unreachable_ones(state: Registry) -> None:
    for jid, site in (("1", "a"), ("2", "a"), ("3", "b")):
        state.add(record(jid, site=site))

    def respond(argv: list[str]):
        if argv[0] == "squeue":
            return result(argv, squeue_row("1", "RUNNING") + squeue_row("2", "PENDING"))
        return None

    ex = FakeExecutor(respond)

    def connect(name: str):
        if name == "b":
            raise RemoteError("cannot reach login.b")
        return venv_site(name=name), ex

    rows = Jobs(connect=connect).status_all()
    assert [(r.record.job_id, r.status.state if r.status else None, r.error) for r in rows] == [
        ("1", "RUNNING", None),
        ("2", "PENDING", None),
        ("3", None, "cannot reach login.b"),
    ]
    assert len(ex.commands("squeue")) == 1 and ex.closed


def test_prune_keeps_jobs_of_unreachable_sites_and_queued_ones(state: Registry) -> None:
    old = time.time() - 10 * 86400
    for jid, site in (("1", "a"), ("2", "a"), ("3", "b")):
        rec = record(jid, site=site)
        rec.submitted_at = old
        state.add(rec)

    def respond(argv: list[str]):
        if argv[0] == "squeue":
            return result(argv, squeue_row("1", "COMPLETED") + squeue_row("2", "RUNNING"))
        return None

    def connect(name: str):
        if name == "b":
            raise RemoteError("down")
        return venv_site(name=name), FakeExecutor(respond)

    res = Jobs(connect=connect).prune(7)
    assert [r.job_id for r in res.removed] == ["1"] and res.old == 3
    assert res.unreachable == ["b: down"]
    assert sorted(r.job_id for r in state.list()) == ["2", "3"]
    with pytest.raises(UsageError, match="--older-than"):
        Jobs(connect=connect).prune(-1)


# -- the API -----------------------------------------------------------------------------------
def test_endpoint_and_query_with_the_jobs_key(state: Registry, tmp_path: Path) -> None:
    server = StandInHTTP(api_key="k-123")
    try:
        key_file = tmp_path / "key"
        key_file.write_text("k-123\n")
        rec = record("tun-test-1", head_addr="127.0.0.1", api_port=server.port)
        rec.api_key_file = str(key_file)
        job = Job(rec, venv_site(name="lab"), FakeExecutor(), registry=state)
        with job.endpoint() as ep:
            assert (ep.base_url, ep.api_key, ep.model) == (server.url, "k-123", "m")
            assert ep.openai_base_url == server.url + "/v1"
        assert job.query("hi", max_tokens=4) == "Hello from the stand-in"
    finally:
        server.close()


def test_endpoint_reads_endpoint_json_when_the_record_has_none(state: Registry) -> None:
    ex = FakeExecutor(
        files={
            "/jobs/6/endpoint.json": '{"job_id": "6", "head_addr": "127.0.0.1", "head_host": '
            '"n1", "api_port": 1, "master_port": 2}'
        }
    )
    state.add(record("6"))
    job = Job(state.get("6"), venv_site(name="lab"), ex, registry=state)
    with pytest.raises(hpcserve.HpcserveError, match="no login host"), job.endpoint():
        pass
    assert state.get("6").head_host == "n1"  # saved for the next command


def test_submit_returns_a_handle_on_the_registered_job(
    state: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def respond(argv: list[str]):
        if argv[0] == "printenv":
            return result(argv, "/home/u\n")
        if argv[0] == "sbatch":
            return result(argv, "777\n")
        return None

    ex = FakeExecutor(respond)
    req = LaunchRequest(model="org/m", nodes=1, job_dir="")
    with submit(venv_site(name="lab"), req, name="mine", executor=ex) as job:
        assert (job.job_id, job.record.name, job.record.remote) == ("777", "mine", True)
        assert job.record.job_dir.startswith("/home/u/hpcserve-jobs/")
        assert ex.commands("sbatch") == [
            ["sbatch", "--parsable", job.record.path("launcher.sbatch")]
        ]
        assert Path(job.record.api_key_file or "").read_text().strip()
    assert state.get("mine").job_id == "777" and ex.closed


def test_failed_sbatch_says_so_and_closes_the_executor(state: Registry) -> None:
    def respond(argv: list[str]):
        if argv[0] == "printenv":
            return result(argv, "/home/u\n")
        return result(argv, "", "sbatch: error: Invalid account", 1)

    ex = FakeExecutor(respond)
    req = LaunchRequest(model="org/m", nodes=1, job_dir="")
    with pytest.raises(RemoteError, match="^sbatch failed: .*Invalid account"):
        submit(venv_site(name="lab"), req, executor=ex)
    assert ex.closed and state.list() == []


def test_python_api_names_are_lazy() -> None:
    code = (
        "import sys, hpcserve; before = ('requests' in sys.modules, 'paramiko' in sys.modules); "
        "names = [getattr(hpcserve, n) for n in hpcserve.__all__]; "
        "print(before, hpcserve.Job.__module__, hpcserve.submit.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.split() == ["(False,", "False)", "hpcserve.jobs.handle", "hpcserve.client"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hpcserve.nope  # noqa: B018


def test_slurm_job_steps() -> None:
    ex = FakeExecutor(lambda a: result(a, "70.0\n70.batch\n"))
    assert Slurm(ex).job_steps("70") == ["70.0", "70.batch"]
    gone = FakeExecutor(lambda a: result(a, "", "slurm_load_jobs error: Invalid job id", 1))
    assert Slurm(gone).job_steps("70") == []


def test_the_python_api_doc_shows_the_example_file() -> None:
    doc = (REPO / "docs" / "python-api.md").read_text()
    example = (REPO / "docs" / "examples" / "python_api.py").read_text()
    blocks = doc.split("```python\n")[1:]
    assert [b.split("```")[0] for b in blocks] == [example]
