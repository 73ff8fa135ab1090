"""The lifecycle of ``hpcserve tunnel``: choose the target, login and local port, start the
forward (paramiko :class:`~hpcserve.net.tunnel.Forwarder` or ``ssh -N -L``), check the API
through it, hold it until Ctrl-C/SIGTERM, and the background mode around that.

Background mode re-executes ``python -m hpcserve ARGS --child`` (``--background`` dropped) in a
new session and waits for the child's state file to say ``up``; the child writes that file once
its tunnel is up, then sends its output to ``tunnels/<key>.log`` and clears the state file when
it ends. ``--stop`` SIGTERMs it. Everything the user sees goes through a :class:`Reporter`.

A service's tunnel (``submit --keep-alive``) keeps its local port and key for the life of the
service: a :class:`~hpcserve.service.follow.ChainFollower` re-targets the forward to the head
of the job that serves now (:meth:`~hpcserve.net.tunnel.Forwarder.retarget`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hpcserve.cluster.executor import Executor
from hpcserve.errors import HpcserveError, UsageError
from hpcserve.jobs.record import JobRecord
from hpcserve.net import tunnel as tn
from hpcserve.net.target import Target, api_key_for, job_target, parse_remote, resolve

if TYPE_CHECKING:
    from hpcserve.cluster.ssh import Login
    from hpcserve.service.follow import ChainFollower, Current


class Reporter(Protocol):
    """Where the lifecycle's lines go: ``note`` for progress (stderr), ``show`` for what the
    user asked for (stdout)."""

    def note(self, msg: str) -> None: ...

    def show(self, msg: str) -> None: ...


class HeldTunnel(Protocol):
    """A started forward: :class:`~hpcserve.net.tunnel.Forwarder` or
    :class:`~hpcserve.net.tunnel.OpensshTunnel`."""

    @property
    def url(self) -> str: ...

    def start(self) -> object: ...

    def wait(self) -> None: ...

    def stop(self) -> None: ...


def detach_stdio(log_path: Path) -> None:
    """After the background tunnel is up: stdin from /dev/null, output to its log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


@dataclass
class TunnelRequest:
    """The options of ``hpcserve tunnel`` (without ``--stop``)."""

    job: str | None = None
    remote: str | None = None  # HOST:PORT instead of the job's head address
    login: str | None = None  # [user@]host[:port] instead of the site's login host
    local_port: int | None = None  # None: the remote port, or a free one when it is taken
    via: str = "paramiko"  # or "openssh"
    background: bool = False
    child: bool = False  # this process is the background child


@dataclass
class Tunnel:
    """A resolved tunnel: what it forwards to, through which login, on which local port."""

    target: Target
    remote: tuple[str, int]
    api_key: str | None
    child: bool = False
    via: str = "paramiko"
    local_port: int = 0
    explicit_port: bool = False
    detach: Callable[[Path], None] = field(default=detach_stdio, repr=False)
    serving: Current | None = None  # a service's: the job it was opened to (it follows on)

    @property
    def remote_text(self) -> str:
        return f"{self.remote[0]}:{self.remote[1]}"


def plan(req: TunnelRequest) -> Tunnel:
    """Target, remote address and API key of ``req`` (the login is chosen later, in the process
    that holds the tunnel)."""
    if req.job is None and req.remote is None:
        raise UsageError("name a JOB, or give --remote HOST:PORT with --login")
    t = job_target(req.job) if req.job else Target(key="")
    serving = None
    if req.remote:
        addr, port = parse_remote(req.remote)
    else:
        assert t.record is not None  # a job target: req.job was given
        serving = _serving(t)
        addr, port = serving[1:3] if serving is not None else _job_remote(t.record)
    if not t.key:
        t.key = f"remote-{addr}-{port}"
    key = api_key_for(t, None) if t.record is not None else None
    tun = Tunnel(target=t, remote=(addr, port), api_key=key, child=req.child, via=req.via)
    tun.serving = serving
    if serving is not None and req.via == "openssh":
        raise UsageError("a service's tunnel follows its chain with --via paramiko, not openssh")
    return tun


def _job_remote(record: JobRecord) -> tuple[str, int]:
    from hpcserve.net.endpoint import remote_of

    return remote_of(record)


def _serving(t: Target) -> Current | None:
    """For a service: the job serving it now (None for a plain job)."""
    from hpcserve.service.remote import service_info

    if t.record is None or t.site is None or service_info(t.record) is None:
        return None
    from hpcserve.service.follow import serving_now

    return serving_now(t.record, _opener(t))


def _opener(t: Target) -> Callable[[], Executor]:
    from hpcserve.cluster.connect import executor_for

    site = t.site
    assert site is not None
    return lambda: executor_for(site)


def follower(tun: Tunnel, fwd: tn.Forwarder, rep: Reporter) -> ChainFollower | None:
    """For a service's tunnel: what re-targets ``fwd`` to the job serving now."""
    if tun.serving is None or tun.target.record is None:
        return None
    from hpcserve.service.follow import ChainFollower

    return ChainFollower(tun.target.record, _opener(tun.target), fwd.retarget, rep.note)


def refuse_if_running(key: str, child: bool) -> None:
    """UsageError when a background tunnel for ``key`` already runs (a child is exempt: its
    parent cleared the state before spawning it)."""
    running = tn.read_state(key)
    if running is not None and not child:
        raise UsageError(
            f"a background tunnel for {key} already runs on {running.url} (pid {running.pid}); "
            f"stop it with `hpcserve tunnel --stop {key}`"
        )


def choose_login(t: Target, login: str | None) -> Login:
    """``--login [user@]host[:port]``, else the job's site login host."""
    from hpcserve.cluster import ssh
    from hpcserve.cluster.sshconfig import parse_hop_spec

    if login:
        user, host, port = parse_hop_spec(login)
        return ssh.Login(host=host, user=user, port=port)
    if t.site is None:
        raise UsageError("--remote without a JOB needs --login [user@]host[:port]")
    return ssh.login_from_site(t.site)


def run(
    req: TunnelRequest,
    rep: Reporter,
    argv: Sequence[str],
    *,
    detach: Callable[[Path], None] = detach_stdio,
) -> tn.TunnelState | None:
    """``hpcserve tunnel``: with ``--background`` spawn the child (``argv`` are this command's
    arguments) and return its state once up; otherwise hold the tunnel here until it ends (a
    child calls ``detach`` with its log file once it is up)."""
    tun = plan(req)
    tun.detach = detach
    refuse_if_running(tun.target.key, req.child)
    if req.background and not req.child:
        return spawn_background(tun.target.key, argv)
    login = choose_login(tun.target, req.login)
    tun.explicit_port = req.local_port is not None
    tun.local_port = req.local_port if req.local_port is not None else tun.remote[1]
    hold(tun, login, rep)
    return None


def hold(tun: Tunnel, login: Login, rep: Reporter) -> None:
    """Build the forward ``tun.via`` names through ``login`` and hold it (:func:`hold_tunnel`)."""
    if tun.via == "openssh":
        proc = openssh_tunnel(tun, login, rep)
        hold_tunnel(tun, proc, lambda: f"tunnel up (openssh): {proc.url} -> {tun.remote_text}", rep)
    else:
        fwd = paramiko_tunnel(tun, login, rep)
        follow = follower(tun, fwd, rep)
        held: HeldTunnel = fwd if follow is None else Following(fwd, follow, tun.serving)
        hold_tunnel(
            tun,
            held,
            lambda: (
                f"tunnel up: 127.0.0.1:{fwd.local_port} -> {tun.remote_text} via {login.host}"
                + (" (it follows the service's chain)" if follow is not None else "")
            ),
            rep,
            ctrl_c_hint=True,
        )


class Following:
    """A forward and the follower that re-targets it, started and stopped together."""

    def __init__(self, fwd: tn.Forwarder, follow: ChainFollower, first: Current | None) -> None:
        self.fwd = fwd
        self.follow = follow
        self.first = first

    @property
    def url(self) -> str:
        return self.fwd.url

    def start(self) -> object:
        self.fwd.start()
        self.follow.start(self.first)
        return self

    def wait(self) -> None:
        self.fwd.wait()

    def stop(self) -> None:
        self.follow.stop()
        self.fwd.stop()


def paramiko_tunnel(tun: Tunnel, login: Login, rep: Reporter) -> tn.Forwarder:
    """A paramiko forward through ``login`` (not started)."""
    from hpcserve.cluster import ssh

    return tn.Forwarder(
        lambda: ssh.connect(login),
        tun.remote,
        tun.local_port,
        explicit_port=tun.explicit_port,
        log=rep.note,
    )


def openssh_tunnel(tun: Tunnel, login: Login, rep: Reporter) -> tn.OpensshTunnel:
    """``ssh -N -L`` through ``login`` (not started), on a free port when the default one is
    taken."""
    from hpcserve.cluster import ssh

    port = tun.local_port
    if not tn.port_is_free(port):
        if tun.explicit_port:
            raise UsageError(f"local port {port} is already in use; pick another --local-port")
        new = tn.free_port()
        rep.note(f"local port {port} is in use; using {new} instead")
        port = new
    route, extra = ssh.route_for(login)
    known = ssh.known_hosts_files(route.target, extra)
    return tn.OpensshTunnel(tn.openssh_argv(route, port, tun.remote, known), port)


def hold_tunnel(
    tun: Tunnel,
    held: HeldTunnel,
    up_line: Callable[[], str],
    rep: Reporter,
    *,
    ctrl_c_hint: bool = False,
) -> None:
    """Start ``held``, say so (``up_line`` once it is up), check the API, announce it, and hold
    it until Ctrl-C/SIGTERM or its end; then stop it and, in a background child, clear its
    state file."""
    with tn.sigterm_as_interrupt():
        try:
            held.start()
            rep.note(up_line())
            check_api(held.url, tun.api_key, tun.target.phase, rep)
            announce(tun, held.url)
            if ctrl_c_hint and not tun.child:
                rep.note("Ctrl-C closes the tunnel.")
            held.wait()
        except KeyboardInterrupt:
            pass
        finally:
            held.stop()
            if tun.child:
                tn.clear_state(tun.target.key)
    rep.note("tunnel closed")


def check_api(url: str, key: str | None, phase: str | None, rep: Reporter) -> None:
    """``/health`` and ``/v1/models`` through the tunnel (a failure is a warning), then the base
    URL and key to paste into an OpenAI client."""
    from hpcserve.net.api import ApiError, Client

    c = Client(url, key, timeout=30, phase=phase)
    try:
        c.health()
        models = c.models()
        rep.note(f"server healthy; models: {', '.join(models) or 'none'}")
    except ApiError as e:
        rep.note(f"warning: {e}")
    rep.show(f"OpenAI base URL: {url}/v1")
    rep.show(f"API key: {key}" if key else "API key: none (any value works)")


def announce(tun: Tunnel, url: str) -> None:
    """In a background child: write the ``up`` state file, then detach from the terminal."""
    if not tun.child:
        return
    key = tun.target.key
    tn.write_state(tn.TunnelState(
        job=key, pid=os.getpid(), local_port=int(url.rsplit(":", 1)[1]),
        remote=tun.remote_text, url=url, via=tun.via, status="up", started_at=time.time(),
    ))  # fmt: skip
    tun.detach(tn.tunnels_dir() / f"{key}.log")


def child_argv(argv: Sequence[str]) -> list[str]:
    """The background child's command line: this command again, ``--background`` replaced by
    the hidden ``--child``."""
    return [sys.executable, "-m", "hpcserve", *[a for a in argv if a != "--background"], "--child"]


def spawn_background(key: str, argv: Sequence[str], poll_s: float = 0.2) -> tn.TunnelState:
    """Start the child for ``argv`` and wait until its state file says ``up`` (HpcserveError if
    it exits first). It keeps this terminal until then, so one-time-code prompts reach it."""
    tn.clear_state(key)
    proc = subprocess.Popen(child_argv(argv), start_new_session=True)
    while True:
        state = tn.read_state(key)
        if state is not None and state.status == "up":
            return state
        if proc.poll() is not None:
            raise HpcserveError(
                f"the background tunnel exited ({proc.returncode}) before it was up"
            )
        time.sleep(poll_s)


def stop(job: str | None) -> tn.TunnelState:
    """``hpcserve tunnel --stop [JOB]``: stop JOB's background tunnel (a job name works too), or
    the only one running; returns its state."""
    if job is None:
        running = tn.running_tunnels()
        if not running:
            raise UsageError("no background tunnel runs")
        if len(running) > 1:
            names = ", ".join(f"{s.job} ({s.url})" for s in running)
            raise UsageError(f"several background tunnels run: {names}; name the one to stop")
        job = running[0].job
    elif tn.read_state(job) is None:
        with contextlib.suppress(Exception):
            job = resolve(job, None).key
    return tn.stop_tunnel(job)
