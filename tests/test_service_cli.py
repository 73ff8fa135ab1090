"""`status NAME` of a service, its cancel, and the launch options' checks, against the fake
SLURM of tests/test_cli_jobs.py (FakeCluster, named as such). No real scheduler is involved."""

from __future__ import annotations

import json
import time

import pytest
from cliutil import run_main
from test_cli_jobs import STARTUP, FakeCluster, add_job, endpoint, health_server  # noqa: F401

from hpcserve.jobs.registry import Registry
from hpcserve.service import chain
from hpcserve.service.remote import mark_service

SVC = "/jobs/svc"
LOG = f"{SVC}/{chain.LOG}"


class ServiceCluster(FakeCluster):
    """The fake SLURM, and the append to the chain log that the service code runs with bash."""

    def respond(self, argv: list[str]):  # type: ignore[no-untyped-def]
        if argv[:2] == ["bash", "-c"] and argv[3] == "hpcserve-chain":
            path, events = argv[4], argv[5:]
            stamp = int(time.time())
            self.ex.files[path] = self.ex.files.get(path, "") + "".join(
                f"{stamp} {e}\n" for e in events
            )
            return self._ok(argv)
        return super().respond(argv)

    def _ok(self, argv: list[str]):  # type: ignore[no-untyped-def]
        from fakes import result

        return result(argv)


@pytest.fixture
def svc(tmp_path, monkeypatch) -> ServiceCluster:
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    c = ServiceCluster()
    rec = add_job("101", name="qwen", nodes=1)
    Registry().update(mark_service(rec, SVC))
    c.ex.files[LOG] = (
        "1000 service 101 name=qwen\n"
        "1000 submitted 101 by=user\n"
        "1090 ready 101 restart=0 addr=127.0.0.1 port=9\n"
        "1200 submitted 102 by=101\n"
        "1270 ready 102 restart=0 addr=127.0.0.1 port=9\n"
        "1290 ended 101 cause=handover rc=0\n"
        "1400 submitted 103 by=102\n"
    )
    c.ex.files[f"{SVC}/{chain.CURRENT}"] = "102 127.0.0.1 9 0\n"
    c.add("101", "COMPLETED", nodes=1)
    c.add("102", "RUNNING", nodes=1)
    c.add("103", "PENDING", nodes=1, reason="Resources")
    return c


def test_status_of_a_service_shows_its_current_job_and_the_chain(svc, capsys) -> None:
    code, out, err = svc.run(capsys, "status", "qwen")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("job qwen (service, job 102) on lab: RUNNING")
    assert "  service:   3 job(s); current 102 (RUNNING), serving since " in out
    assert "; next 103 (PENDING: Resources)" in out
    assert "  handovers: 1 (101 -> 102 at " in out
    assert "  gaps:      none" in out
    assert "  lead time: 2m23s (the slowest of 2 measured submit-to-ready times: 1m30s)" in out


def test_status_json_of_a_service(svc, capsys) -> None:
    code, out, _ = svc.run(capsys, "status", "qwen", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["job_id"] == "102"
    chain_d = d["service"]["chain"]
    assert chain_d["current"] == "102" and chain_d["next_job"] == "103"
    assert [h["to_job"] for h in chain_d["handovers"]] == ["102"]
    assert d["service"]["scheduler"]["103"]["state"] == "PENDING"


def test_cancel_of_a_service_ends_every_job_of_its_chain_and_nothing_else(svc, capsys) -> None:
    add_job("200", name="other", nodes=1)
    svc.add("200", "RUNNING", nodes=1)
    code, out, err = svc.run(capsys, "cancel", "qwen")
    assert code == 0, err
    assert sorted(c[-1] for c in svc.ex.commands("scancel")) == ["102", "103"]
    assert svc.jobs["200"]["state"] == "RUNNING"
    assert "cancelled service qwen" in out and "102 CANCELLED, 103 CANCELLED" in out
    assert svc.ex.files[f"{SVC}/{chain.STOP}"] == "cancel user\n"  # no job submits another
    st = chain.fold(chain.parse_log(svc.ex.files[LOG]))
    assert st.stopped is not None and st.stopped.fields["cause"] == "cancel"


def test_cancel_catches_a_successor_submitted_meanwhile(svc, capsys) -> None:
    real_cancel = svc.respond

    def respond(argv: list[str]):  # type: ignore[no-untyped-def]
        if argv[0] == "scancel" and argv[-1] == "102" and "104" not in svc.jobs:
            svc.ex.files[LOG] += "1500 submitted 104 by=102\n"
            svc.add("104", "PENDING", nodes=1)
        return real_cancel(argv)

    svc.ex.responders = [respond]
    code, _out, err = svc.run(capsys, "cancel", "qwen")
    assert code == 0, err
    assert sorted(c[-1] for c in svc.ex.commands("scancel")) == ["102", "103", "104"]


def test_a_service_ended_by_idle_stop_says_so(svc, capsys) -> None:
    svc.ex.files[LOG] += "1500 stopped 102 cause=idle\n1505 ended 102 cause=idle rc=0\n"
    svc.jobs["102"]["state"] = "COMPLETED"
    svc.jobs["103"]["state"] = "CANCELLED"
    svc.ex.files[f"{SVC}/jobs/102/slurm-102.out"] = (
        "hpcserve: stopped: idle for 1m (nothing running or waiting since 12:00:01)\n"
        "srun: error: n1: task 0: Terminated\n"
    )
    code, out, err = svc.run(capsys, "status", "qwen")
    assert code == 0, err
    assert "COMPLETED - stopped: idle for 1m (nothing running or waiting since 12:00:01)" in out
    assert "  stopped:   idle (by job 102 at " in out


def test_wait_of_a_service_follows_its_chain_onto_the_next_job(
    tmp_path,
    monkeypatch,
    capsys,
    health_server,  # noqa: F811
) -> None:
    # the first job ran out of time before it was ready (a start slower than the lead time);
    # its successor, submitted by it meanwhile, is the one that serves: wait ends with its URL
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    c = ServiceCluster()
    Registry().update(mark_service(add_job("101", name="qwen", nodes=1), SVC))
    c.ex.files[LOG] = "1000 service 101 name=qwen\n1000 submitted 101 by=user\n"
    c.add("101", "RUNNING", nodes=1)
    c.ex.files["/jobs/101/node-0.log"] = "INFO Starting to load model x...\n"
    c.script["101"] = ["RUNNING", "TIMEOUT"]
    c.ex.files["/jobs/101/slurm-101.out"] = (
        "slurmstepd: error: *** JOB 101 ON lab-n1 CANCELLED AT 2026-12-01T19:30:01 DUE TO TIME "
        "LIMIT ***\n"
    )
    real = c.respond

    def respond(argv: list[str]):  # type: ignore[no-untyped-def]
        answer = real(argv)
        if c.jobs["101"]["state"] == "TIMEOUT" and "102" not in c.jobs:
            c.ex.files[LOG] += "1200 submitted 102 by=101\n"
            c.add("102", "RUNNING", nodes=1)
            c.ex.files[f"{SVC}/jobs/102/node-0.log"] = STARTUP
            c.ex.files[f"{SVC}/jobs/102/endpoint.json"] = endpoint("102", health_server)
            c.ex.files[f"{SVC}/{chain.CURRENT}"] = f"102 127.0.0.1 {health_server} 0\n"
        return answer

    c.ex.responders = [respond]
    # the head of a service is read from its `current` file through an executor of its own
    monkeypatch.setattr("hpcserve.cluster.connect.executor_for", lambda site: c.ex)
    code, out, err = c.run(capsys, "wait", "qwen", "--timeout", "30")
    assert code == 0, err
    assert out.strip() == f"http://127.0.0.1:{health_server}"
    assert "ready at" in err


# -- the options -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep-alive"], "--keep-alive needs --name: a service is reached by its name"),
        (["--name", "x", "--until", "3d"], "--until needs --keep-alive"),
        (["--idle-stop", "10"], "--idle-stop '10': expected a duration such as 90s"),
        (["--name", "x", "--keep-alive", "--until", "soon"], "--until 'soon': expected a date"),
    ],
)
def test_bad_service_options_are_one_line_exit_2(capsys, args: list[str], message: str) -> None:
    code, out, err = run_main(
        capsys, "render", "--site", "site_configs/local.yaml", "--model", "/m", *args
    )
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_render_with_the_options(capsys) -> None:
    code, out, err = run_main(
        capsys, "render", "--site", "site_configs/local.yaml", "--model", "/m",
        "--name", "svc", "--keep-alive", "--idle-stop", "1h30m", "--job-dir", "/srv/svc",
    )  # fmt: skip
    assert code == 0, err
    assert "IDLE_STOP_S=5400\n" in out and "SERVICE_DIR=/srv/svc\n" in out
