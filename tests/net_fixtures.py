"""Real sshd processes and a stand-in HTTP server for the tunnel/SSH/API tests.

Each :class:`Sshd` is ``/usr/sbin/sshd -D`` on 127.0.0.1 with its own host key, key-only auth and
``AllowTcpForwarding yes``. Needs root (sshd's privilege separation) and OpenSSH installed;
tests using it are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def have_sshd() -> bool:
    return os.path.exists(SSHD) and os.geteuid() == 0 and shutil.which("ssh-keygen") is not None


needs_sshd = pytest.mark.skipif(not have_sshd(), reason="needs root and /usr/sbin/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


class Sshd:
    """One sshd on 127.0.0.1:port; ``host_key`` is its private key file."""

    def __init__(self, d: Path, client_pub: Path, name: str) -> None:
        self.dir = d / name
        self.dir.mkdir()
        self.host_key = self.dir / "host_ed25519"
        keygen(self.host_key)
        self.port = free_port()
        self.log = self.dir / "sshd.log"
        (self.dir / "authorized_keys").write_text(client_pub.read_text())
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
LogLevel DEBUG1
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        Path("/run/sshd").mkdir(exist_ok=True)

    def start(self) -> Sshd:
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-E", str(self.log), "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen")

    def known_hosts_line(self) -> str:
        pub = Path(f"{self.host_key}.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"

    def session_pids(self) -> list[int]:
        """Every descendant of the sshd listener: the per-connection processes."""
        assert self.proc is not None
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.proc.pid]
        while todo:
            for c in children.get(todo.pop(), []):
                out.append(c)
                todo.append(c)
        return out

    def kill_sessions(self) -> int:
        """Kill the processes serving current connections (the listener stays)."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_sessions()
            self.proc.terminate()
            self.proc.wait(5)


class SshLab:
    """A client key, N sshd servers, a known_hosts file and an ssh config naming them."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.key = d / "id_ed25519"
        keygen(self.key)
        self.known_hosts = d / "known_hosts"
        self.ssh_config = d / "ssh_config"
        self.servers: dict[str, Sshd] = {}

    def add(self, name: str) -> Sshd:
        s = Sshd(self.dir, Path(f"{self.key}.pub"), name).start()
        self.servers[name] = s
        return s

    def write_known_hosts(self, *names: str) -> None:
        self.known_hosts.write_text("".join(self.servers[n].known_hosts_line() for n in names))

    def write_config(self, extra: str = "") -> None:
        blocks = [
            f"""Host {name}
  HostName 127.0.0.1
  Port {s.port}
"""
            for name, s in self.servers.items()
        ]
        self.ssh_config.write_text(
            "".join(blocks)
            + extra
            + f"""
Host *
  User root
  IdentityFile {self.key}
  IdentitiesOnly yes
  UserKnownHostsFile {self.known_hosts}
"""
        )

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()


@pytest.fixture
def ssh_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SshLab]:
    if not have_sshd():
        pytest.skip("needs root and /usr/sbin/sshd")
    lab = SshLab(tmp_path)
    monkeypatch.setenv("HPCSERVE_SSH_CONFIG", str(lab.ssh_config))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("HPCSERVE_KNOWN_HOSTS", raising=False)
    try:
        yield lab
    finally:
        lab.stop()


# -- a stand-in HTTP server (not vLLM): echoes paths, needs a key when given one ---------------


class _StandInServer(ThreadingHTTPServer):
    stand_in: StandInHTTP


class _StandInHandler(BaseHTTPRequestHandler):
    """The request handler of :class:`StandInHTTP` (its settings on ``server.stand_in``)."""

    server: _StandInServer

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()  # like uvicorn: no Nagle delay between headers and body
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        if (
            self.server.stand_in.api_key
            and self.headers.get("Authorization") != f"Bearer {self.server.stand_in.api_key}"
        ):
            self._send(401, b'{"error": "Unauthorized"}')
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._send(200, b"")
        elif not self._authorized():
            return
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": "stand-in"}]}).encode())
        elif self.path.startswith("/blob/"):
            n = int(self.path.split("/")[2])
            self._send(200, bytes(i % 251 for i in range(n)), "application/octet-stream")
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._authorized():
            return
        if self.path == "/tokenize" and self.server.stand_in.tokenize:
            count = 2 * len(str(body.get("prompt", "")).split())
            self._send(200, json.dumps({"count": count}).encode())
            return
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"detail": "Not Found"}')
            return
        text = " ".join(str(m.get("content")) for m in body["messages"])
        n_in = len(text.split())
        limit = self.server.stand_in.max_context
        if n_in > limit:
            msg = (
                f"This model's maximum context length is {limit} tokens. "
                f"However, your prompt contains {n_in} input tokens, which exceeds "
                "this limit even without any output tokens."
            )
            self._send(400, json.dumps({"error": {"message": msg, "code": 400}}).encode())
            return
        words = ["Hello", " from", " the", " stand-in"]
        if not body.get("stream"):
            resp = {"choices": [{"message": {"content": "".join(words)}}]}
            self._send(200, json.dumps(resp).encode())
            return
        self._stream(words, n_in)

    def _stream(self, words: list[str], n_in: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(obj: object) -> None:
            data = f"data: {json.dumps(obj)}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        for w in words:
            event({"choices": [{"delta": {"content": w}, "finish_reason": None}]})
        event({"choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": 4}})
        done = b"data: [DONE]\n\n"
        self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
        self.wfile.flush()


class StandInHTTP:
    """A stand-in for vLLM's HTTP API on 127.0.0.1 (threaded): /health, /v1/models, a streamed
    /v1/chat/completions, /blob/N (N bytes) for byte-pumping checks, and with ``tokenize`` a
    vLLM-like /tokenize that counts two tokens per word."""

    def __init__(
        self, api_key: str | None = None, max_context: int = 64, tokenize: bool = False
    ) -> None:
        self.api_key = api_key
        self.max_context = max_context
        self.tokenize = tokenize
        self.server = _StandInServer(("127.0.0.1", 0), _StandInHandler)
        self.server.stand_in = self
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in_http() -> Iterator[StandInHTTP]:
    s = StandInHTTP()
    yield s
    s.close()


@pytest.fixture
def lab1(ssh_lab: SshLab) -> SshLab:
    """The SSH lab with one login host ``login`` in known_hosts and the ssh config."""
    ssh_lab.add("login")
    ssh_lab.write_known_hosts("login")
    ssh_lab.write_config()
    return ssh_lab


def get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data: bytes = r.read()
        return data


def hold_then_stop(monkeypatch: pytest.MonkeyPatch, classes: Iterable[type]) -> list[bytes]:
    """Once a tunnel of one of ``classes`` is held (in its ``wait``), fetch /v1/models through
    it from a thread, then SIGTERM this process as ``tunnel --stop`` does; the answers land in
    the returned list."""
    got: list[bytes] = []
    for cls in classes:
        wait = cls.wait  # type: ignore[attr-defined]

        def held_wait(self: object, wait: object = wait) -> None:
            def use_then_stop() -> None:
                try:
                    got.append(get(f"{self.url}/v1/models"))  # type: ignore[attr-defined]
                finally:
                    os.kill(os.getpid(), signal.SIGTERM)

            threading.Thread(target=use_then_stop, daemon=True).start()
            wait(self)  # type: ignore[operator]

        monkeypatch.setattr(cls, "wait", held_wait)
    return got
