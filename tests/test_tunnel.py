"""The paramiko port forward against real sshd processes and a stand-in HTTP server."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from net_fixtures import SshLab, StandInHTTP, get, lab1, ssh_lab, stand_in_http  # noqa: F401

from hpcserve.errors import UsageError
from hpcserve.net.tunnel import Forwarder, bind_local


def forwarder(lab: SshLab, http: StandInHTTP, host: str = "login", **kw: object) -> Forwarder:
    from hpcserve.cluster.ssh import connect

    msgs: list[str] = []
    fwd = Forwarder(
        lambda: connect(host, prompter=None),
        ("127.0.0.1", http.port),
        0,
        log=msgs.append,
        **kw,  # type: ignore[arg-type]
    )
    fwd.messages = msgs  # type: ignore[attr-defined]
    return fwd


def test_forward_bytes_and_many_connections(lab1: SshLab, stand_in_http: StandInHTTP) -> None:  # noqa: F811
    with forwarder(lab1, stand_in_http) as fwd:
        assert fwd.url.startswith("http://127.0.0.1:")
        blob = get(f"{fwd.url}/blob/3000000")
        assert blob == bytes(i % 251 for i in range(3000000))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda _: get(f"{fwd.url}/blob/1000"), range(32)))
        assert all(g == bytes(i % 251 for i in range(1000)) for g in got)


def test_binds_loopback_only(lab1: SshLab, stand_in_http: StandInHTTP) -> None:  # noqa: F811
    with forwarder(lab1, stand_in_http) as fwd:
        assert fwd._listener is not None
        assert fwd._listener.getsockname()[0] == "127.0.0.1"


def test_forward_through_proxyjump(ssh_lab: SshLab, stand_in_http: StandInHTTP) -> None:  # noqa: F811
    login = ssh_lab.add("login")
    ssh_lab.add("jump")
    ssh_lab.write_known_hosts("login", "jump")
    ssh_lab.write_config(
        f"Host viajump\n  HostName 127.0.0.1\n  Port {login.port}\n  ProxyJump jump\n"
    )
    with forwarder(ssh_lab, stand_in_http, host="viajump") as fwd:
        assert get(f"{fwd.url}/v1/models").startswith(b'{"data"')


def test_reconnects_after_killed_connection_on_same_port(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
) -> None:
    with forwarder(lab1, stand_in_http, keepalive_s=1.0) as fwd:
        port = fwd.local_port
        assert get(f"{fwd.url}/health") == b""
        assert lab1.servers["login"].kill_sessions() > 0
        # a request right after the drop waits for the reconnect and then succeeds
        assert get(f"http://127.0.0.1:{port}/v1/models").startswith(b'{"data"')
        assert fwd.local_port == port
        assert fwd.reconnects >= 1
        assert any("re-established" in m for m in fwd.messages)  # type: ignore[attr-defined]


def test_reconnects_after_sshd_restart(lab1: SshLab, stand_in_http: StandInHTTP) -> None:  # noqa: F811
    s = lab1.servers["login"]
    with forwarder(lab1, stand_in_http, keepalive_s=1.0) as fwd:
        s.stop()
        deadline = time.monotonic() + 20
        while fwd._transport() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fwd._transport() is None
        s.start()
        assert get(f"{fwd.url}/health", timeout=60) == b""
        assert fwd.reconnects >= 1


def test_default_port_in_use_picks_another(lab1: SshLab, stand_in_http: StandInHTTP) -> None:  # noqa: F811
    from hpcserve.cluster.ssh import connect

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        msgs: list[str] = []
        fwd = Forwarder(
            lambda: connect("login", prompter=None),
            ("127.0.0.1", stand_in_http.port),
            taken,
            log=msgs.append,
        )
        with fwd:
            assert fwd.local_port != taken
            assert f"local port {taken} is in use; using {fwd.local_port} instead" in msgs
            assert get(f"{fwd.url}/health") == b""


def test_explicit_port_in_use_is_an_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(UsageError, match="already in use"):
            bind_local(busy.getsockname()[1], explicit=True)


def test_unreachable_remote_closes_client(lab1: SshLab) -> None:  # noqa: F811
    from hpcserve.cluster.ssh import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here
    msgs: list[str] = []
    with Forwarder(
        lambda: connect("login", prompter=None), ("127.0.0.1", dead), 0, log=msgs.append
    ) as fwd:
        with pytest.raises(OSError):
            get(f"{fwd.url}/health", timeout=20)
        assert any("could not connect" in m for m in msgs)
        assert fwd.reconnects == 0


def test_stop_closes_listener(lab1: SshLab, stand_in_http: StandInHTTP) -> None:  # noqa: F811
    fwd = forwarder(lab1, stand_in_http).start()
    port = fwd.local_port
    fwd.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_cli_background_tunnel_and_stop(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HPCSERVE_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(root))
    base = [sys.executable, "-m", "hpcserve", "tunnel"]
    up = subprocess.run(
        [*base, "--remote", f"127.0.0.1:{stand_in_http.port}", "--login", "login", "--background"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "runs in the background" in up.stdout
    state = json.loads(next((tmp_path / "state" / "tunnels").glob("*.json")).read_text())
    assert state["status"] == "up" and state["url"].startswith("http://127.0.0.1:")
    assert get(f"{state['url']}/v1/models").startswith(b'{"data"')
    assert "OpenAI base URL" in up.stdout + up.stderr
    again = subprocess.run(
        [*base, "--remote", f"127.0.0.1:{stand_in_http.port}", "--login", "login"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert again.returncode == 2 and "already runs" in again.stderr
    down = subprocess.run([*base, "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "stopped the tunnel" in down.stdout
    assert not list((tmp_path / "state" / "tunnels").glob("*.json"))
    with pytest.raises(OSError):
        get(f"{state['url']}/health", timeout=5)
    none = subprocess.run([*base, "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and none.stderr.startswith("error: no background tunnel")


def test_api_base_opens_a_tunnel_when_head_unreachable(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from hpcserve.jobs.record import JobRecord
    from hpcserve.net import endpoint
    from hpcserve.sites.schema import LoginHost

    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(endpoint, "reachable", lambda host, port, timeout=1.0: False)
    rec = JobRecord(
        job_id="77", site="x", model="m", nodes=1, tp=1, pp=1, job_dir="/tmp", submitted_at=0,
        remote=True, head_addr="127.0.0.1", api_port=stand_in_http.port,
    )  # fmt: skip
    site = SimpleNamespace(name="x", login=[LoginHost(host="login")])
    with endpoint.api_base(rec, site, quiet=True) as base:
        assert base != stand_in_http.url and base.startswith("http://127.0.0.1:")
        assert get(f"{base}/v1/models").startswith(b'{"data"')
    with pytest.raises(OSError):
        get(f"{base}/health", timeout=5)  # closed with the block


def test_via_openssh_uses_same_resolution(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
) -> None:
    from hpcserve.cluster.ssh import known_hosts_files, route_for
    from hpcserve.net.tunnel import OpensshTunnel, free_port, openssh_argv

    route, extra = route_for("login")
    port = free_port()
    argv = openssh_argv(route, port, ("127.0.0.1", stand_in_http.port),
                        known_hosts_files(route.target, extra))  # fmt: skip
    assert f"127.0.0.1:{port}:127.0.0.1:{stand_in_http.port}" in argv
    t = OpensshTunnel(argv, port).start()
    try:
        assert get(f"{t.url}/v1/models").startswith(b'{"data"')
    finally:
        t.stop()
