"""The tunnel lifecycle (hpcserve.net.session) against real sshd processes and a stand-in HTTP
server: foreground runs end by SIGTERM (what ``tunnel --stop`` sends), as Ctrl-C would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from net_fixtures import SshLab, StandInHTTP, get, hold_then_stop, lab1, ssh_lab, stand_in_http  # noqa: F401

from hpcserve.cluster.ssh import Login
from hpcserve.errors import HpcserveError, UsageError
from hpcserve.jobs.record import JobRecord
from hpcserve.net import session
from hpcserve.net import tunnel as tn
from hpcserve.net.session import Target, TunnelRequest

REPO = Path(__file__).resolve().parents[1]


class Lines:
    """A Reporter that keeps the lines."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.shown: list[str] = []

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    def show(self, msg: str) -> None:
        self.shown.append(msg)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Once a tunnel is held (in ``wait``), fetch /v1/models through it from a thread, then
    SIGTERM this process as ``tunnel --stop`` does; the answers are returned."""
    return hold_then_stop(monkeypatch, (tn.Forwarder, tn.OpensshTunnel))


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh registry root; SIGTERM ignored outside the tunnel's own handler (a backstop so a
    stray signal cannot end the test run)."""
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    old = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield tmp_path / "state"
    finally:
        signal.signal(signal.SIGTERM, old)


def remote_req(http: StandInHTTP, **kw: object) -> TunnelRequest:
    return TunnelRequest(remote=f"127.0.0.1:{http.port}", login="login", **kw)  # type: ignore[arg-type]


def reap(pid: int) -> None:
    """Reap a child of this process once it ends (so ``--stop`` sees it gone)."""
    threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True).start()


# -- planning ----------------------------------------------------------------------------------


def test_plan_needs_a_job_or_remote() -> None:
    with pytest.raises(UsageError, match="name a JOB, or give --remote HOST:PORT with --login"):
        session.plan(TunnelRequest())


def test_plan_for_a_remote_names_it_and_has_no_key() -> None:
    tun = session.plan(TunnelRequest(remote="10.1.2.3:8000", via="openssh"))
    assert (tun.target.key, tun.remote, tun.api_key, tun.via) == (
        "remote-10.1.2.3-8000",
        ("10.1.2.3", 8000),
        None,
        "openssh",
    )
    assert tun.remote_text == "10.1.2.3:8000"


def test_plan_for_a_job_uses_its_endpoint_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import venv_site

    keyfile = tmp_path / "key"
    keyfile.write_text("job-key\n")
    rec = JobRecord(
        job_id="88", site="s", model="m", nodes=1, tp=1, pp=1, job_dir="/tmp", submitted_at=0,
        remote=True, head_addr="10.0.0.9", api_port=8123, api_key_file=str(keyfile),
    )  # fmt: skip
    monkeypatch.setattr(session, "job_target", lambda ref: Target("88", rec, venv_site()))
    tun = session.plan(TunnelRequest(job="myjob"))
    assert (tun.target.key, tun.remote, tun.api_key) == ("88", ("10.0.0.9", 8123), "job-key")
    # --remote replaces the head address, the job's key stays
    tun = session.plan(TunnelRequest(job="myjob", remote="127.0.0.1:9"))
    assert (tun.target.key, tun.remote, tun.api_key) == ("88", ("127.0.0.1", 9), "job-key")


def test_plan_for_a_job_without_endpoint_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = JobRecord(
        job_id="89", site="s", model="m", nodes=1, tp=1, pp=1, job_dir="/tmp", submitted_at=0,
        remote=True, extra={"phase": "PENDING"},
    )  # fmt: skip
    monkeypatch.setattr(session, "job_target", lambda ref: Target("89", rec, None))
    with pytest.raises(HpcserveError, match="no API endpoint yet .phase: PENDING"):
        session.plan(TunnelRequest(job="89"))


def test_choose_login() -> None:
    from conftest import apptainer_site

    assert session.choose_login(Target(""), "me@gate:2222") == Login(
        host="gate", user="me", port=2222
    )
    site_login = session.choose_login(Target("1", site=apptainer_site()), None)
    assert (site_login.host, site_login.port) == ("login.example.org", 8822)
    with pytest.raises(UsageError, match="--remote without a JOB needs --login"):
        session.choose_login(Target(""), None)


def test_child_argv_swaps_background_for_child() -> None:
    argv = session.child_argv(["tunnel", "7", "--background", "--via", "openssh"])
    assert argv == [sys.executable, "-m", "hpcserve", "tunnel", "7", "--via", "openssh", "--child"]


# -- the API check -----------------------------------------------------------------------------


def test_check_api_healthy(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    lines = Lines()
    session.check_api(stand_in_http.url, None, None, lines)
    assert lines.notes == ["server healthy; models: stand-in"]
    assert lines.shown == [
        f"OpenAI base URL: {stand_in_http.url}/v1",
        "API key: none (any value works)",
    ]


def test_check_api_failure_is_a_warning_and_the_key_is_shown() -> None:
    keyed = StandInHTTP(api_key="right")
    try:
        lines = Lines()
        session.check_api(keyed.url, "wrong", "loading", lines)
    finally:
        keyed.close()
    assert len(lines.notes) == 1 and lines.notes[0].startswith("warning: ")
    assert "401" in lines.notes[0]
    assert lines.shown == [f"OpenAI base URL: {keyed.url}/v1", "API key: wrong"]


# -- foreground tunnels ------------------------------------------------------------------------


def test_paramiko_tunnel_until_sigterm(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    held: list[bytes],
) -> None:
    lines = Lines()
    assert session.run(remote_req(stand_in_http), lines, []) is None
    assert held and held[0].startswith(b'{"data"')
    # the default port (the remote's) is taken by the stand-in itself: a free one is used
    moved = lines.notes[0]
    assert moved.startswith(f"local port {stand_in_http.port} is in use; using ")
    port = int(moved.split("using ")[1].split()[0])
    assert lines.notes[1:] == [
        f"tunnel up: 127.0.0.1:{port} -> 127.0.0.1:{stand_in_http.port} via login",
        "server healthy; models: stand-in",
        "Ctrl-C closes the tunnel.",
        "tunnel closed",
    ]
    assert lines.shown == [
        f"OpenAI base URL: http://127.0.0.1:{port}/v1",
        "API key: none (any value works)",
    ]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # closed


def test_paramiko_explicit_port_in_use_is_a_usage_error(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
) -> None:
    with pytest.raises(UsageError, match="already in use"):
        session.run(remote_req(stand_in_http, local_port=stand_in_http.port), Lines(), [])


def test_openssh_tunnel_until_sigterm(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    held: list[bytes],
) -> None:
    lines = Lines()
    assert session.run(remote_req(stand_in_http, via="openssh"), lines, []) is None
    assert held and held[0].startswith(b'{"data"')
    moved = lines.notes[0]
    assert moved.startswith(f"local port {stand_in_http.port} is in use; using ")
    port = int(moved.split("using ")[1].split()[0])
    assert lines.notes[1:] == [
        f"tunnel up (openssh): http://127.0.0.1:{port} -> 127.0.0.1:{stand_in_http.port}",
        "server healthy; models: stand-in",
        "tunnel closed",
    ]


def test_openssh_explicit_port_in_use_is_a_usage_error(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
) -> None:
    req = remote_req(stand_in_http, via="openssh", local_port=stand_in_http.port)
    with pytest.raises(UsageError, match=f"local port {stand_in_http.port} is already in use"):
        session.run(req, Lines(), [])


def test_child_writes_state_detaches_and_clears(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    state_dir: Path,
    held: list[bytes],
) -> None:
    lines = Lines()
    seen: list[dict[str, object]] = []
    logs: list[Path] = []
    key = f"remote-127.0.0.1-{stand_in_http.port}"

    def detach(log: Path) -> None:
        logs.append(log)
        seen.append(json.loads((state_dir / "tunnels" / f"{key}.json").read_text()))

    assert session.run(remote_req(stand_in_http, child=True), lines, [], detach=detach) is None
    assert logs == [state_dir / "tunnels" / f"{key}.log"]
    state = seen[0]
    assert (state["job"], state["pid"], state["status"], state["via"]) == (
        key, os.getpid(), "up", "paramiko",
    )  # fmt: skip
    assert state["remote"] == f"127.0.0.1:{stand_in_http.port}"
    assert state["url"] == f"http://127.0.0.1:{state['local_port']}"
    assert held and held[0].startswith(b'{"data"')
    assert "Ctrl-C closes the tunnel." not in lines.notes  # nobody is at a terminal
    assert lines.notes[-1] == "tunnel closed"
    assert tn.read_state(key) is None and not (state_dir / "tunnels" / f"{key}.pid").exists()


def test_running_tunnel_refuses_a_second_but_not_its_child() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        tn.write_state(tn.TunnelState(
            job="k", pid=sleeper.pid, local_port=1, remote="h:1", url="http://127.0.0.1:1",
            via="paramiko", status="up", started_at=0,
        ))  # fmt: skip
        refusal = (
            r"a background tunnel for k already runs on http://127.0.0.1:1 \(pid \d+\); "
            r"stop it with `hpcserve tunnel --stop k`"
        )
        with pytest.raises(UsageError, match=refusal):
            session.refuse_if_running("k", child=False)
        session.refuse_if_running("k", child=True)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_detach_stdio_sends_output_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    code = (
        "import sys; from pathlib import Path; from hpcserve.net.session import detach_stdio\n"
        "print('before'); detach_stdio(Path(sys.argv[1])); print('after');"
        "print('err', file=sys.stderr); print(repr(sys.stdin.read()))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(log)],
        capture_output=True, text=True, timeout=60, input="typed", cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "before\n" and r.stderr == ""
    assert log.read_text() == "after\nerr\n''\n"
    assert log.stat().st_mode & 0o777 == 0o600


# -- background tunnels ------------------------------------------------------------------------


def test_background_spawn_refuse_and_stop(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    argv = ["tunnel", "--remote", f"127.0.0.1:{stand_in_http.port}", "--login", "login"]
    lines = Lines()
    state = session.run(remote_req(stand_in_http, background=True), lines, [*argv, "--background"])
    assert state is not None
    reap(state.pid)
    assert lines.notes == [] and lines.shown == []  # the child speaks for itself
    key = f"remote-127.0.0.1-{stand_in_http.port}"
    assert (state.job, state.status) == (key, "up")
    assert get(f"{state.url}/v1/models").startswith(b'{"data"')
    with pytest.raises(UsageError, match="already runs"):
        session.run(remote_req(stand_in_http), lines, argv)
    stopped = session.stop(None)
    assert (stopped.job, stopped.pid, stopped.url) == (key, state.pid, state.url)
    assert tn.running_tunnels() == []
    with pytest.raises(OSError):
        get(f"{state.url}/health", timeout=5)


def test_background_child_that_fails_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    # no --login and no job: the child exits 2 before any tunnel is up
    argv = ["tunnel", "--remote", "127.0.0.1:9", "--background"]
    with pytest.raises(HpcserveError, match=r"the background tunnel exited \(2\) before it was up"):
        session.spawn_background("remote-127.0.0.1-9", argv)


def test_stop_without_tunnels() -> None:
    with pytest.raises(UsageError, match="^no background tunnel runs$"):
        session.stop(None)
    # a name that is neither a running tunnel nor a job
    with pytest.raises(UsageError, match="no background tunnel runs for 'nope'"):
        session.stop("nope")


def test_stop_picks_by_name_when_several_run() -> None:
    sleepers = {k: subprocess.Popen(["sleep", "60"]) for k in ("a", "b")}
    try:
        for k, p in sleepers.items():
            tn.write_state(tn.TunnelState(
                job=k, pid=p.pid, local_port=1, remote="h:1", url=f"http://127.0.0.1:{k}",
                via="paramiko", status="up", started_at=0,
            ))  # fmt: skip
            reap(p.pid)
        several = (
            r"several background tunnels run: a \(http://127.0.0.1:a\), "
            r"b \(http://127.0.0.1:b\); name the one to stop"
        )
        with pytest.raises(UsageError, match=several):
            session.stop(None)
        assert session.stop("a").pid == sleepers["a"].pid
        assert [s.job for s in tn.running_tunnels()] == ["b"]
        assert session.stop(None).job == "b"
    finally:
        for p in sleepers.values():
            if p.poll() is None:
                p.kill()


def test_stop_by_job_name_resolves_to_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    reap(sleeper.pid)
    tn.write_state(tn.TunnelState(
        job="4242", pid=sleeper.pid, local_port=1, remote="h:1", url="http://127.0.0.1:1",
        via="paramiko", status="up", started_at=0,
    ))  # fmt: skip
    monkeypatch.setattr(session, "resolve", lambda job, url: Target("4242"))
    assert session.stop("myjob").job == "4242"
