"""A local port forward ``127.0.0.1:LOCAL -> login node -> ADDR:PORT`` that survives drops.

:class:`Forwarder` listens on 127.0.0.1 only and opens one SSH ``direct-tcpip`` channel per
accepted connection on a shared SSH connection, pumping bytes with one ``select`` loop per
connection (64 KiB reads, TCP_NODELAY, 16 MiB SSH windows). :meth:`Forwarder.retarget` points it
at another address (a service's next job): new connections and the next request of open ones go
there, requests in flight finish where they are. A watchdog sends keepalive requests
that need a reply; when the connection is gone it reconnects with exponential backoff and keeps
the same listening socket, so clients simply retry on the same port.

The background mode and ``--stop`` keep a pid file and a state file per job in
``Registry().root / "tunnels"``. :func:`openssh_argv` builds the ``ssh -N -L`` fallback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcserve.errors import HpcserveError, UsageError

if TYPE_CHECKING:
    from hpcserve.cluster.sshconfig import Route

BUF = 65536
BACKOFF_MAX_S = 30.0
KEEPALIVE_S = 15.0
KEEPALIVE_COUNT = 3  # like OpenSSH's ServerAliveCountMax
WAIT_FOR_LINK_S = 60.0  # a client arriving during a reconnect waits this long

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bind_local(port: int, *, explicit: bool, log: Log = _stderr) -> socket.socket:
    """Listen on 127.0.0.1:``port``; a taken default port gives way to a free one (and says
    so); a taken port the user asked for is an error."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            s.close()
            raise HpcserveError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}") from e
        if explicit:
            s.close()
            raise UsageError(
                f"local port {port} is already in use (another tunnel?); pick another with "
                "--local-port, or leave it out to get a free one"
            ) from e
        s.bind(("127.0.0.1", 0))
        log(f"local port {port} is in use; using {s.getsockname()[1]} instead")
    s.listen(128)
    return s


# How an HTTP/1.x request starts: a connection moves to a new target only at one of these.
_REQUEST_STARTS = tuple(
    m.encode() + b" " for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
)

Reopen = Callable[[], Any]
"""None while the forward has its target, else a new channel to the new one (or None)."""


class _Link:
    """One client connection pumped through an SSH channel: one thread per direction, each
    blocked in its own recv (no select: fewer system calls per round trip); half-closes are
    passed on.

    With ``reopen`` the connection follows a re-targeted forward at a request boundary: when
    the client starts a new request (its bytes begin with an HTTP method) after the answer to
    its last one came, and ``reopen`` gives a channel to the new target, the request goes
    there; an answer still coming on the old channel is never cut (HTTP/1.1 clients wait for
    it before they send the next request).
    """

    def __init__(self, sock: socket.socket, chan: Any, reopen: Reopen | None = None) -> None:
        self.sock = sock
        self.chan = chan
        self.reopen = reopen
        self.answered = False  # the server sent something since the client last did
        self.down = self._start_down(chan)

    def _start_down(self, chan: Any) -> threading.Thread:
        th = threading.Thread(target=self._down, args=(chan,), daemon=True, name="tunnel-down")
        th.start()
        return th

    def _down(self, chan: Any) -> None:
        try:
            while True:
                data = chan.recv(BUF)
                if not data:
                    break
                self.answered = True
                self.sock.sendall(data)
        except Exception:  # noqa: BLE001 - OSError, or paramiko.SSHException when the link dies
            pass
        if chan is self.chan:  # not a channel this connection moved away from
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def _maybe_move(self, data: bytes) -> None:
        if self.reopen is None or not self.answered or not data.startswith(_REQUEST_STARTS):
            return
        new = self.reopen()
        if new is None:
            return
        old, self.chan = self.chan, new
        with contextlib.suppress(Exception):
            old.close()
        self.down.join(timeout=10)
        self.down = self._start_down(new)

    def run(self) -> None:
        """Pump until both sides are done, then close both."""
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(True)
        self.chan.settimeout(None)
        try:
            while True:
                data = self.sock.recv(BUF)
                if not data:
                    self.chan.shutdown_write()
                    break
                self._maybe_move(data)
                self.answered = False
                self.chan.sendall(data)
        except Exception:  # noqa: BLE001 - as above
            pass
        # the client is done sending; wait for the answer to finish (or the link to drop)
        self.down.join()
        with contextlib.suppress(Exception):  # the link may be gone already
            self.chan.close()
        self.sock.close()


def _pump(sock: socket.socket, chan: Any, reopen: Reopen | None = None) -> None:
    """Copy bytes both ways until both sides are done (:class:`_Link`)."""
    _Link(sock, chan, reopen).run()


class Forwarder:
    """Forward 127.0.0.1:``local_port`` to ``remote`` through an SSH client from ``connect``.

    ``connect`` returns an object with ``get_transport()`` and ``close()`` (a
    :class:`hpcserve.cluster.ssh.ChainClient`); it is called again after a drop.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        remote: tuple[str, int],
        local_port: int = 0,
        *,
        explicit_port: bool = False,
        keepalive_s: float = KEEPALIVE_S,
        log: Log = _stderr,
    ) -> None:
        self._connect = connect
        self.remote = remote
        self.requested_port = local_port
        self.explicit_port = explicit_port
        self.keepalive_s = keepalive_s
        self.log = log
        self._client: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.reconnects = 0
        self.generation = 0  # how often :meth:`retarget` changed the target

    @property
    def local_port(self) -> int:
        assert self._listener is not None, "start() first"
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def start(self) -> Forwarder:
        """Connect (errors propagate), bind, then serve in background threads."""
        self._client = self._connect()
        self._listener = bind_local(self.requested_port, explicit=self.explicit_port, log=self.log)
        for target in (self._accept_loop, self._watchdog):
            th = threading.Thread(target=target, daemon=True, name=f"tunnel-{target.__name__}")
            th.start()
            self._threads.append(th)
        return self

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until :meth:`stop` (Ctrl-C in the caller's thread ends it cleanly)."""
        while not self._stop.wait(0.5):
            pass

    def retarget(self, remote: tuple[str, int]) -> bool:
        """Forward to ``remote`` from now on: new connections go there, and open ones at their
        next request (:class:`_Link`); what is in flight finishes on the old target. True when
        the target changed."""
        with self._lock:
            if remote == self.remote:
                return False
            self.remote = remote
            self.generation += 1
        return True

    def _target(self) -> tuple[int, tuple[str, int]]:
        with self._lock:
            return self.generation, self.remote

    def _reopener(self, generation: int, peer: tuple[str, int]) -> Reopen:
        """For one connection opened at ``generation``: a channel to the new target once the
        forward was re-targeted since (None until then, or when it cannot be opened)."""
        seen = [generation]

        def reopen() -> Any:
            gen, remote = self._target()
            t = self._transport() if gen != seen[0] else None
            if t is None:
                return None
            try:
                chan = t.open_channel("direct-tcpip", remote, peer, timeout=20)
            except Exception:  # noqa: BLE001 - stay on the old target for this request
                return None
            seen[0] = gen
            return chan

        return reopen

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None

    # -- internals -------------------------------------------------------------------------

    def _transport(self) -> Any:
        with self._lock:
            c = self._client
        t = c.get_transport() if c is not None else None
        return t if t is not None and t.is_active() else None

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn, peer), daemon=True).start()

    def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        deadline = time.monotonic() + WAIT_FOR_LINK_S
        while not self._stop.is_set():
            t = self._transport()
            if t is None:  # reconnecting: hold the client until the link is back
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
                continue
            generation, remote = self._target()
            try:
                chan = t.open_channel("direct-tcpip", remote, peer, timeout=20)
            except Exception as e:  # noqa: BLE001 - paramiko.ChannelException, SSHException
                if getattr(e, "code", None) is not None:  # ChannelException: sshd refused
                    self.log(f"the login node could not connect to {remote[0]}:{remote[1]}: {e}")
                    break
                t.close()  # the link is failing: let the watchdog reconnect, then retry
                time.sleep(0.2)
                continue
            _pump(conn, chan, self._reopener(generation, peer))
            return
        conn.close()

    def _probe(self, t: Any) -> bool:
        """One keepalive that needs an answer (any answer, as OpenSSH's ServerAlive does)."""
        done = threading.Event()

        def ask() -> None:
            with contextlib.suppress(Exception):
                t.global_request("keepalive@openssh.com", wait=True)
            done.set()

        threading.Thread(target=ask, daemon=True).start()
        return done.wait(self.keepalive_s * KEEPALIVE_COUNT) and t.is_active()

    def _watchdog(self) -> None:
        last_probe = time.monotonic()
        while not self._stop.wait(0.5):
            t = self._transport()
            if t is not None and time.monotonic() - last_probe >= self.keepalive_s:
                last_probe = time.monotonic()
                if not self._probe(t):
                    t.close()
                    t = None
            if t is not None or self._stop.is_set():
                continue
            self.log("SSH connection lost; reconnecting")
            self._reconnect()
            last_probe = time.monotonic()

    def _reconnect(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            with self._lock:
                old, self._client = self._client, None
            if old is not None:
                with contextlib.suppress(Exception):
                    old.close()
            try:
                client = self._connect()
            except Exception as e:  # noqa: BLE001 - report and retry whatever it was
                self.log(f"reconnect failed ({e}); next try in {delay:.0f} s")
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            with self._lock:
                self._client = client
            self.reconnects += 1
            self.log(f"SSH connection re-established; still on 127.0.0.1:{self.local_port}")
            return


def openssh_argv(
    route: Route, local_port: int, remote: tuple[str, int], known_hosts: list[str] | None = None
) -> list[str]:
    """``ssh -N -L 127.0.0.1:LOCAL:ADDR:PORT`` for a resolved
    :class:`~hpcserve.cluster.sshconfig.Route`
    (same host, user, port, identities, jump hosts and known_hosts files as the paramiko path;
    ``$HPCSERVE_SSH_CONFIG``, when set, is passed with ``-F`` so jump hosts resolve alike)."""
    t = route.target
    argv = ["ssh"]
    cfg = os.environ.get("HPCSERVE_SSH_CONFIG")
    if cfg:
        argv += ["-F", cfg]
    argv += [
        "-N",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=15",
        "-o", "StrictHostKeyChecking=yes",
        "-p", str(t.port),
        "-L", f"127.0.0.1:{local_port}:{remote[0]}:{remote[1]}",
    ]  # fmt: skip
    for f in t.identity_files:
        if os.path.isfile(f):
            argv += ["-i", f]
    if route.jumps:
        argv += ["-J", ",".join(f"{h.user}@{h.hostname}:{h.port}" for h in route.jumps)]
    files = list(known_hosts if known_hosts is not None else t.known_hosts_files)
    if files:
        argv += ["-o", "UserKnownHostsFile=" + " ".join(files)]
    argv.append(f"{t.user}@{t.hostname}")
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class OpensshTunnel:
    """``ssh -N -L`` as a child process (the ``--via openssh`` fallback)."""

    def __init__(self, argv: list[str], local_port: int) -> None:
        self.argv = argv
        self.local_port = local_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def start(self, timeout: float = 30.0) -> OpensshTunnel:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HpcserveError(f"`{' '.join(self.argv)}` exited {self.proc.returncode}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.local_port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise HpcserveError(f"ssh did not open 127.0.0.1:{self.local_port} in {timeout:.0f} s")

    def wait(self) -> None:
        assert self.proc is not None
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- background tunnels: pid + state files ----------------------------------------------------


@dataclass
class TunnelState:
    """What a background tunnel writes to ``tunnels/<job>.json``."""

    job: str
    pid: int
    local_port: int
    remote: str
    url: str
    via: str
    status: str  # starting | up | failed
    started_at: float
    message: str = ""


def tunnels_dir() -> Path:
    """``Registry().root / "tunnels"`` (created 0700)."""
    from hpcserve.jobs.registry import Registry

    root = Path(Registry().root)
    d = root / "tunnels"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _safe(job: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in job) or "tunnel"


def state_path(job: str) -> Path:
    return tunnels_dir() / f"{_safe(job)}.json"


def pid_path(job: str) -> Path:
    return tunnels_dir() / f"{_safe(job)}.pid"


def write_state(state: TunnelState) -> None:
    path = state_path(state.job)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f)
    os.replace(tmp, path)
    pid_path(state.job).write_text(f"{state.pid}\n")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(job: str) -> TunnelState | None:
    """The job's background tunnel if its process still runs (stale files are removed)."""
    path = state_path(job)
    try:
        state = TunnelState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not pid_alive(state.pid):
        clear_state(job)
        return None
    return state


def clear_state(job: str) -> None:
    for p in (state_path(job), pid_path(job)):
        with contextlib.suppress(OSError):
            p.unlink()


def running_tunnels() -> list[TunnelState]:
    out = []
    for p in sorted(tunnels_dir().glob("*.json")):
        s = read_state(p.stem)
        if s is not None:
            out.append(s)
    return out


def stop_tunnel(job: str, timeout: float = 10.0) -> TunnelState:
    """SIGTERM the job's background tunnel and wait for it to go."""
    state = read_state(job)
    if state is None:
        raise UsageError(f"no background tunnel runs for {job!r}")
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(state.pid):
        os.kill(state.pid, signal.SIGKILL)
    clear_state(job)
    return state


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``--stop`` closes as cleanly as Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
