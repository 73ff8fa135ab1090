"""A tunnel re-targeted to a service's next head: the paramiko forward against a real sshd
(tests/net_fixtures.py) and two small named HTTP servers standing in for two heads; and the
follower that reads the service's `current` file."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from net_fixtures import SshLab, lab1, ssh_lab  # noqa: F401

from hpcserve.cluster.executor import LocalExecutor
from hpcserve.jobs.record import JobRecord
from hpcserve.net.tunnel import Forwarder
from hpcserve.service import chain
from hpcserve.service.follow import ChainFollower
from hpcserve.service.remote import mark_service


class Named(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive: /who answers the server's name, /slow the same after 1.5 s."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/slow":
            time.sleep(1.5)
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def heads() -> Iterator[dict[str, int]]:
    servers = {}
    for name in ("old", "new"):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Named)
        srv.name = name  # type: ignore[attr-defined]
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[name] = srv
    yield {n: int(s.server_address[1]) for n, s in servers.items()}
    for s in servers.values():
        s.shutdown()
        s.server_close()


def forwarder(port: int) -> Forwarder:
    from hpcserve.cluster.ssh import connect

    return Forwarder(lambda: connect("login", prompter=None), ("127.0.0.1", port), 0, log=print)


def ask(conn: http.client.HTTPConnection, path: str = "/who") -> str:
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def test_retarget_moves_new_and_open_connections_at_their_next_request(
    lab1: SshLab,  # noqa: F811
    heads: dict[str, int],
) -> None:
    with forwarder(heads["old"]) as fwd:
        kept = http.client.HTTPConnection("127.0.0.1", fwd.local_port, timeout=30)
        assert ask(kept) == "old"
        assert fwd.retarget(("127.0.0.1", heads["new"])) is True
        assert fwd.retarget(("127.0.0.1", heads["new"])) is False  # the same: nothing to do
        sock = kept.sock
        assert ask(kept) == "new"  # the same client connection, its next request
        assert kept.sock is sock
        fresh = http.client.HTTPConnection("127.0.0.1", fwd.local_port, timeout=30)
        assert ask(fresh) == "new"
        assert fwd.generation == 1


def test_a_request_in_flight_finishes_on_the_old_head(
    lab1: SshLab,  # noqa: F811
    heads: dict[str, int],
) -> None:
    with forwarder(heads["old"]) as fwd:
        conn = http.client.HTTPConnection("127.0.0.1", fwd.local_port, timeout=30)
        got: list[str] = []
        slow = threading.Thread(target=lambda: got.append(ask(conn, "/slow")))
        slow.start()
        time.sleep(0.3)  # the slow request is on its way to the old head
        fwd.retarget(("127.0.0.1", heads["new"]))
        slow.join(10)
        assert got == ["old"]
        assert ask(conn) == "new"  # and the connection moves for its next one


def service_record(tmp_path: Path) -> JobRecord:
    rec = JobRecord("101", "local", "m", 1, 1, 1, "", 0.0, False, name="svc")
    return mark_service(rec, str(tmp_path))


def test_follower_retargets_when_another_job_serves(tmp_path: Path) -> None:
    targets: list[tuple[str, int]] = []
    notes: list[str] = []

    def retarget(remote: tuple[str, int]) -> bool:
        changed = not targets or targets[-1] != remote
        targets.append(remote)
        return changed

    current = tmp_path / chain.CURRENT
    current.write_text("101 10.0.0.11 8012 0\n")
    follow = ChainFollower(service_record(tmp_path), LocalExecutor, retarget, notes.append)
    follow.seen = ("101", "10.0.0.11", 8012, 0)  # what the tunnel was opened to
    assert follow.look() == ("101", "10.0.0.11", 8012, 0) and targets == []
    current.write_text("102 10.0.0.12 8034 0\n")
    follow.look()
    assert targets == [("10.0.0.12", 8034)]
    assert notes == [
        "service svc: job 102 serves now at 10.0.0.12:8034; new requests go there, those in "
        "flight finish where they are"
    ]
    follow.look()
    assert targets == [("10.0.0.12", 8034)]  # no change, no re-target
    current.write_text("102 10.0.0.12 8034 1\n")  # requeued, back on the same address
    follow.look()
    assert follow.moves == 2 and "job 102 (restart 1) serves now" in notes[-1]
    current.unlink()  # a gap: the tunnel stays where it was
    assert follow.look() == ("102", "10.0.0.12", 8034, 1)
