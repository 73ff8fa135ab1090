"""SSH to a login node with paramiko (the only module that imports paramiko).

:func:`connect` follows the route from :mod:`hpcserve.cluster.sshconfig` (ProxyJump hops as
``direct-tcpip`` channels, or a ``ProxyCommand``), verifies every host key against known_hosts
and refuses unknown or changed keys, then authenticates with the ssh-agent and IdentityFile keys
and, when the server asks for it, keyboard-interactive (one-time codes) on the terminal.
:class:`SshExecutor` is :class:`hpcserve.cluster.executor.Executor` over one such connection.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import posixpath
import shlex
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import paramiko

from hpcserve.cluster.executor import Chunk, CommandResult, home_from_env, tail_from
from hpcserve.cluster.sshconfig import Hop, Overrides, Route, resolve
from hpcserve.errors import HpcserveError, RemoteError, Unreachable, UsageError
from hpcserve.sites.schema import Site

# paramiko logs dropped connections as tracebacks; hpcserve reports them as sentences instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_KEEPALIVE_S = 30
WINDOW = 16 * 1024 * 1024  # large SSH windows: a tunnel streaming tokens never stalls on acks
MAX_PACKET = 32768  # the SSH spec's guaranteed maximum; OpenSSH uses the same
SFTP_TIMEOUT_S = 60.0  # one SFTP request on a stalled link fails after this, as a command does

# Key types to prefer when known_hosts already holds a key of that kind for the host.
_ALGOS = {
    "ssh-ed25519": ["ssh-ed25519"],
    "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"],
    "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
    "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"],
    "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
}

Prompter = Callable[[str, bool], str]  # (prompt text, echo) -> answer


class HostKeyError(HpcserveError):
    """A host key that is not known, or that changed."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint: ``SHA256:base64`` without padding."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_files(hop: Hop, extra: Sequence[str] = ()) -> list[str]:
    """Files checked for ``hop``'s key: the config's (or ~/.ssh/known_hosts), then
    ``$HPCSERVE_KNOWN_HOSTS`` (os.pathsep-separated), then ``extra`` (site/lab-provided)."""
    files = list(hop.known_hosts_files)
    env = os.environ.get("HPCSERVE_KNOWN_HOSTS")
    if env:
        files += [p for p in env.split(os.pathsep) if p]
    files += [os.path.expanduser(p) for p in extra if p]
    return files


def load_host_keys(files: Sequence[str]) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for f in files:
        if os.path.isfile(f):
            try:
                keys.load(f)
            except (OSError, paramiko.SSHException) as e:
                raise UsageError(f"cannot read known_hosts file {f}: {e}") from e
    return keys


def accept_key_hint(hop: Hop) -> str:
    """How the user accepts ``hop``'s key themselves (hpcserve never does)."""
    scan = f"ssh-keyscan -p {hop.port} {hop.hostname} >> ~/.ssh/known_hosts"
    return (
        f"accept it with `{scan}` or by running `ssh -p {hop.port} "
        f"{hop.user}@{hop.hostname}` once (hpcserve never accepts keys by itself)"
    )


def check_host_key(hop: Hop, key: paramiko.PKey, keys: paramiko.HostKeys, files: list[str]) -> None:
    """Raise :class:`HostKeyError` unless ``key`` is the known key of ``hop``."""
    name = hop.known_hosts_name
    entry = keys.lookup(name)
    fp = fingerprint(key)
    shown = ", ".join(files[:2]) or "~/.ssh/known_hosts"
    if entry is None or key.get_name() not in entry:
        known = f" (known_hosts has a {', '.join(entry.keys())} key for it)" if entry else ""
        raise HostKeyError(
            f"the SSH host key of {name} is not known{known}: it offered "
            f"{key.get_name()} {fp}. Check that fingerprint with your site's documentation, "
            f"then {accept_key_hint(hop)}"
        )
    if entry[key.get_name()] != key:
        raise HostKeyError(
            f"WARNING: THE SSH HOST KEY OF {name} HAS CHANGED (it now offers {key.get_name()} "
            f"{fp}, known_hosts in {shown} says {fingerprint(entry[key.get_name()])}). "
            "Someone may be intercepting the connection, or the host was reinstalled. "
            "hpcserve refuses to connect and changes nothing; ask your site which key is right, "
            f"then remove the old line with `ssh-keygen -R '{name}'`"
        )


def terminal_prompter(text: str, echo: bool) -> str:
    """Ask on the terminal (hidden input unless the server says echo)."""
    import click

    if not sys.stdin or not sys.stdin.isatty():
        raise UsageError(
            f"the login node asks {text.strip()!r} but there is no terminal to answer on; "
            "run the command in a terminal (or use `--via openssh` with a ControlMaster)"
        )
    answer: str = click.prompt(
        text.rstrip().rstrip(":"), hide_input=not echo, default="", show_default=False, err=True
    )
    return answer


def _load_key(path: str, prompter: Prompter | None) -> paramiko.PKey | None:
    if not os.path.isfile(path):
        return None
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        if prompter is None:
            return None
        pw = prompter(f"Passphrase for key {path}: ", False)
        try:
            return paramiko.PKey.from_path(path, password=pw)
        except paramiko.SSHException as e:
            raise UsageError(f"cannot unlock SSH key {path}: {e}") from e
    except (paramiko.SSHException, OSError, ValueError):
        return None


def _candidate_keys(hop: Hop, prompter: Prompter | None) -> list[tuple[str, paramiko.PKey]]:
    keys: list[tuple[str, paramiko.PKey]] = []
    files = [f for f in hop.identity_files if os.path.isfile(f)]
    if not hop.identities_only or not files:
        with contextlib.suppress(paramiko.SSHException, OSError):
            keys += [(f"agent key {fingerprint(k)}", k) for k in paramiko.Agent().get_keys()]
    for f in files:
        k = _load_key(f, prompter)
        if k is not None:
            keys.append((f, k))
    return keys


def _authenticate(t: paramiko.Transport, hop: Hop, prompter: Prompter | None) -> None:
    """Log in as OpenSSH does: "none", then public keys (agent, IdentityFile), then
    keyboard-interactive or a password, among the methods the server allows (RFC 4252)."""
    allowed = _auth_none(t, hop)
    if allowed is None:
        return
    tried: list[str] = []
    if "publickey" in allowed:
        allowed = _auth_keys(t, hop, prompter, allowed, tried)
        if allowed is None:
            return
    if _auth_prompted(t, hop, prompter, allowed, tried):
        return
    raise RemoteError(
        f"SSH login to {hop.describe()} was refused (server allows {', '.join(allowed) or '?'}; "
        f"tried {', '.join(tried) or 'no usable key'}). Check that `ssh -p {hop.port} "
        f"{hop.user}@{hop.hostname}` works, that your key is in the ssh-agent or named by "
        "IdentityFile in ~/.ssh/config"
    )


def _auth_none(t: paramiko.Transport, hop: Hop) -> list[str] | None:
    """None when the server lets us in as we are, else the methods it allows."""
    try:
        t.auth_none(hop.user)
        return None
    except paramiko.BadAuthenticationType as e:
        return list(e.allowed_types)
    except paramiko.AuthenticationException:
        return ["publickey", "keyboard-interactive", "password"]


def _auth_keys(
    t: paramiko.Transport,
    hop: Hop,
    prompter: Prompter | None,
    allowed: list[str],
    tried: list[str],
) -> list[str] | None:
    """Offer each key; None once logged in, else the methods still allowed (after a partial
    success, the second factor the server wants)."""
    for label, key in _candidate_keys(hop, prompter):
        try:
            rest = t.auth_publickey(hop.user, key)
        except paramiko.AuthenticationException:
            tried.append(label)
            continue
        if t.is_authenticated():
            return None
        return list(rest)  # partial success: the server wants a second factor
    return allowed


def _auth_prompted(
    t: paramiko.Transport,
    hop: Hop,
    prompter: Prompter | None,
    allowed: list[str],
    tried: list[str],
) -> bool:
    """Keyboard-interactive, else a password (only on a terminal); True once logged in."""
    if prompter is None:
        return False
    if "keyboard-interactive" in allowed:
        return _auth_interactive(t, hop, prompter, tried)
    if "password" in allowed and sys.stdin and sys.stdin.isatty():
        try:
            t.auth_password(hop.user, prompter(f"{hop.describe()} password: ", False))
            return t.is_authenticated()
        except paramiko.AuthenticationException:
            tried.append("password")
    return False


def _auth_interactive(
    t: paramiko.Transport, hop: Hop, prompter: Prompter, tried: list[str]
) -> bool:
    def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        if (title or instructions) and prompts:
            print(" ".join(x for x in (title, instructions) if x).strip(), file=sys.stderr)
        return [prompter(text, echo) for text, echo in prompts]

    try:
        t.auth_interactive(hop.user, handler)
        return t.is_authenticated()
    except paramiko.AuthenticationException:
        tried.append("keyboard-interactive")
    return False


@dataclass
class Login:
    """What to connect to: a host (site login host or ssh_config alias) plus defaults."""

    host: str
    port: int | None = None
    user: str | None = None
    jump: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None


def login_from_site(site: Site | None, index: int = 0) -> Login:
    """The site's ``index``-th login host as a :class:`Login` (UsageError if it has none)."""
    logins = site.login if site is not None else []
    if not logins:
        name = site.name if site is not None else "?"
        raise UsageError(f"site {name!r} has no login host to SSH to")
    lh = logins[index]
    return Login(
        host=lh.host,
        port=lh.port,
        user=lh.user,
        jump=lh.jump,
        identity_file=getattr(lh, "identity_file", None),
        known_hosts=getattr(lh, "known_hosts", None),
    )


def route_for(login: Login | str, overrides: Overrides | None = None) -> tuple[Route, list[str]]:
    """Resolve a login into a route plus the extra (site-provided) known_hosts files."""
    lg = Login(host=login) if isinstance(login, str) else login
    ov = overrides or Overrides()
    if lg.identity_file and not ov.identity_files:
        ov = Overrides(ov.user, ov.port, (lg.identity_file,), ov.jump)
    route = resolve(lg.host, site_user=lg.user, site_port=lg.port, site_jump=lg.jump, overrides=ov)
    return route, [lg.known_hosts] if lg.known_hosts else []


class ReadAheadSocket:
    """A socket whose ``recv(n)`` reads up to 64 KiB at once and serves the rest from memory.

    paramiko reads each SSH packet with two ``recv`` calls (header, then body); with this, one
    system call brings in one or many packets, which is most of the tunnel's per-packet cost
    where system calls are slow.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._quickack = getattr(socket, "TCP_QUICKACK", 0)  # Linux only

    def settimeout(self, timeout: float | None) -> None:
        """Time out in the kernel (SO_RCVTIMEO) rather than with Python's poll-then-recv, which
        costs a second system call per read; a kernel timeout is reported as socket.timeout."""
        self._sock.settimeout(None)
        sec = int(timeout or 0)
        usec = int(((timeout or 0) - sec) * 1e6)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))

    def recv(self, n: int) -> bytes:
        if not self._buf:
            try:
                data = self._sock.recv(max(n, 65536))
            except BlockingIOError as e:
                raise TimeoutError("timed out") from e
            if self._quickack:
                # ACK at once: sshd does not set TCP_NODELAY for a tunnel-only session, so
                # its Nagle algorithm waits for our (otherwise delayed, up to 40 ms) ACK
                # before sending the next small packet: the p99 of every streamed token.
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            if len(data) <= n:
                return data
            self._buf = data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ChainClient(paramiko.SSHClient):
    """An SSHClient whose transport was opened hop by hop; closing it closes every hop."""

    def __init__(self, transports: list[paramiko.Transport], route: Route) -> None:
        super().__init__()
        self.route = route
        self._hops = transports
        self._transport = transports[-1]

    def close(self) -> None:
        for t in reversed(self._hops):
            t.close()
        self._transport = None  # type: ignore[assignment]


def _open_transport(
    hop: Hop, sock: Any, extra_known: list[str], prompter: Prompter | None, timeout: float
) -> paramiko.Transport:
    files = known_hosts_files(hop, extra_known)
    known = load_host_keys(files)
    t = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
    t.set_keepalive(hop.keepalive_s or DEFAULT_KEEPALIVE_S)
    opts = t.get_security_options()
    # AES-GCM first: one AEAD call per packet instead of a cipher pass plus an HMAC object.
    gcm = [c for c in opts.ciphers if c.startswith("aes128-gcm")]
    opts.ciphers = tuple(gcm + [c for c in opts.ciphers if c not in gcm])
    entry = known.lookup(hop.known_hosts_name)
    if entry:  # like OpenSSH: negotiate a key type we already know for this host
        first = [a for k in entry for a in _ALGOS.get(k, [k]) if a in opts.key_types]
        opts.key_types = tuple(first + [k for k in opts.key_types if k not in first])
    try:
        t.start_client(timeout=timeout)
        check_host_key(hop, t.get_remote_server_key(), known, files)
        _authenticate(t, hop, prompter)
    except BaseException:
        t.close()
        raise
    return t


def connect(
    login: Login | str,
    *,
    overrides: Overrides | None = None,
    prompter: Prompter | None = terminal_prompter,
    timeout: float = 20.0,
) -> ChainClient:
    """Connect to ``login`` through its ProxyJump chain; host keys verified, never added."""
    route, extra_known = route_for(login, overrides)
    transports: list[paramiko.Transport] = []
    try:
        for i, hop in enumerate(route.hops):
            to = hop.connect_timeout_s or timeout
            sock: Any
            if i == 0 and hop.proxy_command:
                sock = paramiko.ProxyCommand(hop.proxy_command)
            elif i == 0:
                try:
                    sock = socket.create_connection((hop.hostname, hop.port), timeout=to)
                except OSError as e:
                    raise Unreachable(f"cannot reach {hop.hostname}:{hop.port}: {e}") from e
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = ReadAheadSocket(sock)
            else:
                try:
                    sock = transports[-1].open_channel(
                        "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=to
                    )
                except (paramiko.SSHException, OSError) as e:
                    raise RemoteError(
                        f"jump host {route.hops[i - 1].describe()} cannot reach "
                        f"{hop.hostname}:{hop.port}: {e}"
                    ) from e
            try:
                transports.append(_open_transport(hop, sock, extra_known, prompter, to))
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise Unreachable(f"SSH to {hop.describe()} failed: {e or type(e).__name__}") from e
    except BaseException:
        for t in reversed(transports):
            t.close()
        raise
    return ChainClient(transports, route)


class SshExecutor:
    """:class:`hpcserve.cluster.executor.Executor` on a site's login host over one reused
    connection."""

    remote: ClassVar[bool] = True

    def __init__(
        self,
        site: Site | None = None,
        *,
        login: Login | str | None = None,
        overrides: Overrides | None = None,
        prompter: Prompter | None = terminal_prompter,
    ) -> None:
        if login is None:
            login = login_from_site(site)
        self.login = login
        self.overrides = overrides
        self.prompter = prompter
        self._client: ChainClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None

    def client(self) -> ChainClient:
        """The live connection (opened on first use; reopened once if it dropped)."""
        t = self._client.get_transport() if self._client else None
        if t is None or not t.is_active():
            self.close()
            self._client = connect(self.login, overrides=self.overrides, prompter=self.prompter)
        assert self._client is not None
        return self._client

    def run(
        self, argv: list[str], *, input: str | None = None, timeout: float | None = 60
    ) -> CommandResult:
        """Run ``argv`` on the login node; :class:`Unreachable` when the connection cannot be
        opened, drops while the command runs, or the command does not finish in ``timeout``."""
        chan = self._session(timeout)
        try:
            code, out, err = self._exchange(chan, argv, input, timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            self.close()
            raise Unreachable(
                f"the connection to {self.describe()} dropped while `{shlex.join(argv)}` ran: "
                f"{e or type(e).__name__}"
            ) from e
        finally:
            with contextlib.suppress(Exception):
                chan.close()
        if code == -1 and self._dropped():
            self.close()
            raise Unreachable(
                f"the connection to {self.describe()} dropped while `{shlex.join(argv)}` ran"
            )
        return CommandResult(
            tuple(argv), code, out.decode(errors="replace"), err.decode(errors="replace")
        )

    def _session(self, timeout: float | None) -> paramiko.Channel:
        """A new session channel, reconnecting once when the connection turns out dead (the
        command has not started then, so trying again is safe)."""
        for attempt in (1, 2):
            t = self.client().get_transport()
            assert t is not None
            try:
                return t.open_session(timeout=timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                self.close()
                if attempt == 2:
                    raise Unreachable(
                        f"SSH to {self.describe()} failed: {e or type(e).__name__}"
                    ) from e
        raise AssertionError("unreachable")

    def _exchange(
        self, chan: paramiko.Channel, argv: list[str], input: str | None, timeout: float | None
    ) -> tuple[int, bytearray, bytearray]:
        """Start ``argv`` on ``chan``, feed ``input``, collect output until it exits."""
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        chan.exec_command(shlex.join(argv))
        if input is not None:
            chan.sendall(input.encode())
        chan.shutdown_write()
        while True:
            busy = False
            while chan.recv_ready():
                out += chan.recv(65536)
                busy = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                busy = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if deadline is not None and time.monotonic() > deadline:
                self.close()  # a stalled link: the next command connects afresh
                raise Unreachable(f"`{shlex.join(argv)}` did not finish in {timeout} s")
            if not busy:
                time.sleep(0.005)
        return chan.recv_exit_status(), out, err

    def _dropped(self, grace_s: float = 1.0) -> bool:
        """True when the connection is gone. A channel closed without an exit status is
        either that or a command killed by a signal; paramiko closes the channels just before
        it marks the transport inactive, so look again for up to ``grace_s``."""
        deadline = time.monotonic() + grace_s
        while self._client_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def sftp(self) -> paramiko.SFTPClient:
        """The SFTP session (reopened with the connection); each request times out after
        ``SFTP_TIMEOUT_S`` rather than hang on a stalled link."""
        if self._sftp is None or self._client is None or not self._client_alive():
            try:
                self._sftp = self.client().open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as e:
                self.close()
                raise Unreachable(
                    f"SFTP to {self.describe()} failed: {e or type(e).__name__}"
                ) from e
            chan = self._sftp.get_channel()
            if chan is not None:
                chan.settimeout(SFTP_TIMEOUT_S)
        return self._sftp

    def _client_alive(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    @contextlib.contextmanager
    def _sftp_errors(self, what: str) -> Iterator[None]:
        """SFTP failures as errors: :class:`Unreachable` when the link failed (a dropped or
        stalled connection), else RemoteError "cannot WHAT on the login node: ..."."""
        try:
            yield
        except (paramiko.SSHException, EOFError, TimeoutError, ConnectionError) as e:
            self.close()
            raise Unreachable(
                f"the connection to {self.describe()} dropped (cannot {what}): "
                f"{e or type(e).__name__}"
            ) from e
        except OSError as e:
            if not self._client_alive():
                self.close()
                raise Unreachable(
                    f"the connection to {self.describe()} dropped (cannot {what}): {e}"
                ) from e
            raise RemoteError(f"cannot {what} on the login node: {e}") from e

    def _path(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            if self._home is None:
                with self._sftp_errors("find the home directory"):
                    self._home = self.sftp().normalize(".")
            return self._home + path[1:]
        return path

    def read_text(self, path: str) -> str:
        p = self._path(path)
        with self._sftp_errors(f"read {p}"), self.sftp().open(p, "r") as f:
            data: bytes = f.read()
        return data.decode(errors="replace")

    def read_from(self, path: str, offset: int) -> Chunk:
        return tail_from(self, path, offset)

    def home(self) -> str:
        return home_from_env(self)

    def describe(self) -> str:
        """``user@host:port`` of the login host, after ``~/.ssh/config`` (nothing contacted)."""
        route, _ = route_for(self.login, self.overrides)
        return route.target.describe()

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Write atomically: a temporary file with ``mode`` set before any byte, then rename."""
        p = self._path(path)
        parent = posixpath.dirname(p)
        if parent:
            self.makedirs(parent)
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with self._sftp_errors(f"write {p}"):
                sftp = self.sftp()
                with sftp.open(tmp, "wx") as f:
                    f.chmod(mode)
                    f.write(text.encode())
                sftp.posix_rename(tmp, p)
        except Unreachable:
            raise
        except RemoteError as e:
            with contextlib.suppress(Exception):
                self.sftp().remove(tmp)
            raise RemoteError(f"{e}{self._why_unwritable(parent)}") from e

    def _why_unwritable(self, folder: str) -> str:
        """What the login node's shell says when it writes into ``folder`` (SFTP answers a full
        or read-only filesystem with a bare "Failure"): ``" (sh: ...: No space left on
        device)"``, or "" when the shell can write there."""
        probe = posixpath.join(folder or ".", f".hpcserve-probe-{uuid.uuid4().hex[:8]}")
        try:
            res = self.run(
                [
                    "sh",
                    "-c",
                    'head -c 4096 /dev/zero > "$1"; rc=$?; rm -f "$1"; exit $rc',
                    "sh",
                    probe,
                ],
                timeout=30,
            )
        except RemoteError:
            return ""
        lines = (res.stderr or res.stdout).strip().splitlines()
        return f" ({lines[-1].strip()})" if not res.ok and lines else ""

    def exists(self, path: str) -> bool:
        p = self._path(path)
        try:
            with self._sftp_errors(f"check {p}"):
                self.sftp().stat(p)
        except RemoteError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                return False
            raise
        return True

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        p = self._path(path)
        parts: list[str] = []
        cur = p.rstrip("/")
        while cur and cur != "/" and not self.exists(cur):
            parts.append(cur)
            cur = posixpath.dirname(cur)
        for d in reversed(parts):
            try:
                with self._sftp_errors(f"create {d}"):
                    self.sftp().mkdir(d, mode)
            except Unreachable:
                raise
            except RemoteError as e:
                if not self.exists(d):
                    raise RemoteError(f"{e}{self._why_unwritable(posixpath.dirname(d))}") from e

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None
