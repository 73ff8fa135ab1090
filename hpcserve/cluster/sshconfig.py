"""Resolve a login host the way OpenSSH does from ``~/.ssh/config`` (pure: no paramiko, no I/O
beyond reading config files).

Precedence for each setting, as in OpenSSH where the first value obtained wins:

1. the command line (:class:`Overrides`, e.g. ``--user``/``--port`` given to hpcserve),
2. ``~/.ssh/config`` (first matching ``Host`` block that sets it; ``Include`` and ``Host``
   patterns with ``*``, ``?`` and ``!negation`` are honoured; ``Match`` blocks are skipped),
3. the site's ``login`` entry (``host`` is the name looked up in the config, its ``port``,
   ``user`` and ``jump`` apply only where the config says nothing),
4. OpenSSH's defaults (port 22, the local user name, ``~/.ssh/id_{ed25519,ecdsa,rsa}``).

``IdentityFile`` and ``UserKnownHostsFile`` accumulate (all of them are tried, in order).
``ProxyJump`` takes one or more comma-separated ``[user@]host[:port]`` hops; each hop is itself
resolved through the config (the first hop with its own ``ProxyJump``, later hops without, which
is what ``ssh -J a,b`` does). ``ProxyJump none`` switches jumping off.
"""

from __future__ import annotations

import fnmatch
import getpass
import glob
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hpcserve.errors import UsageError

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
MULTI = {"identityfile", "userknownhostsfile", "certificatefile"}
MAX_JUMP_DEPTH = 8


@dataclass(frozen=True)
class Overrides:
    """Values given on the command line; they beat the config and the site."""

    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()
    jump: str | None = None


@dataclass(frozen=True)
class Hop:
    """One SSH endpoint with every setting resolved."""

    alias: str  # the name as written (site login host, or a ProxyJump hop)
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    identities_only: bool = False
    known_hosts_files: tuple[str, ...] = DEFAULT_KNOWN_HOSTS
    host_key_alias: str | None = None
    proxy_command: str | None = None
    keepalive_s: int = 0  # ServerAliveInterval; 0 means unset
    connect_timeout_s: float | None = None

    @property
    def known_hosts_name(self) -> str:
        """The name looked up in known_hosts: ``host`` or ``[host]:port`` (OpenSSH's form)."""
        host = self.host_key_alias or self.hostname
        return host if self.port == 22 else f"[{host}]:{self.port}"

    def describe(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


@dataclass(frozen=True)
class Route:
    """How to reach a host: zero or more jump hosts, in order, then the target."""

    target: Hop
    jumps: tuple[Hop, ...] = ()

    @property
    def hops(self) -> tuple[Hop, ...]:
        return (*self.jumps, self.target)

    def describe(self) -> str:
        return " -> ".join(h.describe() for h in self.hops)


@dataclass
class _Block:
    patterns: list[str] | None  # None = Match block (skipped)
    options: list[tuple[str, str]] = field(default_factory=list)


def _split(line: str) -> tuple[str, list[str]] | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if "=" in line.split(None, 1)[0]:  # Key=value
        key, _, rest = line.partition("=")
    else:
        parts = line.split(None, 1)
        key, rest = parts[0], parts[1] if len(parts) > 1 else ""
    rest = rest.strip().lstrip("=").strip()
    try:
        args = shlex.split(rest, comments=True)
    except ValueError as e:
        raise UsageError(f"ssh config: cannot parse line {line!r}: {e}") from e
    return key.lower(), args


def parse_config(text: str, base_dir: Path | None = None, _depth: int = 0) -> list[_Block]:
    """Split ssh_config text into blocks; ``Include`` is expanded (globs, ~, relative to
    ``base_dir``, default ``~/.ssh``)."""
    base = base_dir or Path(os.path.expanduser("~/.ssh"))
    blocks = [_Block(patterns=["*"])]  # options before the first Host apply to all hosts
    for raw in text.splitlines():
        parsed = _split(raw)
        if parsed is None:
            continue
        key, args = parsed
        if key == "host":
            blocks.append(_Block(patterns=args or ["*"]))
        elif key == "match":
            # `Match all` is the only Match form honoured; others are skipped.
            blocks.append(_Block(patterns=["*"] if args == ["all"] else None))
        elif key == "include":
            _include(blocks, args, base, _depth)
        elif args:
            value = _rest_raw(raw) if key == "proxycommand" else " ".join(args)
            blocks[-1].options.append((key, value))
    return blocks


def _include(blocks: list[_Block], patterns: list[str], base: Path, depth: int) -> None:
    """Expand an ``Include`` into ``blocks``: its options join the including block, its Host
    blocks follow, then the including block resumes (ssh_config(5), Include)."""
    if depth > 8:
        raise UsageError("ssh config: Include nested too deeply")
    cur = blocks[-1].patterns
    for pat in patterns:
        p = os.path.expanduser(pat)
        if not os.path.isabs(p):
            p = str(base / p)
        for f in sorted(glob.glob(p)):
            sub = parse_config(Path(f).read_text(errors="replace"), base, depth + 1)
            # included options belong to the block that includes them, then its blocks
            head, *rest = sub
            blocks[-1].options.extend(head.options)
            if rest:
                blocks.extend(rest)
                blocks.append(_Block(patterns=cur))  # back to the including block


def _rest_raw(raw: str) -> str:
    line = raw.strip()
    first = line.split(None, 1)
    if "=" in first[0]:
        return line.partition("=")[2].strip()
    return first[1].strip().lstrip("=").strip() if len(first) > 1 else ""


def _matches(patterns: list[str], host: str) -> bool:
    hit = False
    for p in patterns:
        for sub in p.split(","):
            neg = sub.startswith("!")
            pat = sub[1:] if neg else sub
            if fnmatch.fnmatchcase(host.lower(), pat.lower()):
                if neg:
                    return False
                hit = True
    return hit


def lookup(blocks: list[_Block], host: str) -> dict[str, list[str]]:
    """Options for ``host``: first value wins; IdentityFile/UserKnownHostsFile accumulate."""
    out: dict[str, list[str]] = {}
    for b in blocks:
        if b.patterns is None or not _matches(b.patterns, host):
            continue
        for key, value in b.options:
            if key in MULTI:
                out.setdefault(key, []).append(value)
            elif key not in out:
                out[key] = [value]
    return out


def _expand(value: str, *, host: str, hostname: str, port: int, user: str) -> str:
    """OpenSSH tokens (%h %p %r %u %d %n %%) and ~."""
    reps = {
        "h": hostname,
        "p": str(port),
        "r": user,
        "u": getpass.getuser(),
        "d": os.path.expanduser("~"),
        "n": host,
        "%": "%",
    }
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "%" and i + 1 < len(value) and value[i + 1] in reps:
            out.append(reps[value[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    s = "".join(out)
    return os.path.expanduser(s) if s.startswith("~") else s


def parse_hop_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (also ``ssh://user@host:port`` and ``[v6]:port``)."""
    s = spec.strip()
    if s.startswith("ssh://"):
        s = s[len("ssh://") :]
    user = None
    if "@" in s:
        user, _, s = s.rpartition("@")
    port: int | None = None
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], spec)
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        port = _port(p, spec)
    else:
        host = s
    if not host:
        raise UsageError(f"bad SSH host {spec!r}: expected [user@]host[:port]")
    return user or None, host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"bad port in SSH host {spec!r}")
    return int(text)


def resolve_hop(
    alias: str,
    blocks: list[_Block],
    *,
    user: str | None = None,
    port: int | None = None,
    identity_files: tuple[str, ...] = (),
    site_user: str | None = None,
    site_port: int | None = None,
) -> tuple[Hop, str | None]:
    """Resolve one host; returns the Hop and its ProxyJump value (None if none)."""
    opts = lookup(blocks, alias)

    def one(key: str) -> str | None:
        v = opts.get(key)
        return v[0] if v else None

    hostname_raw = one("hostname") or alias
    cfg_port = one("port")
    final_port = port or (int(cfg_port) if cfg_port and cfg_port.isdigit() else None)
    final_port = final_port or site_port or 22
    final_user = user or one("user") or site_user or getpass.getuser()
    hostname = _expand(hostname_raw, host=alias, hostname=alias, port=final_port, user=final_user)

    def ex(v: str) -> str:
        return _expand(v, host=alias, hostname=hostname, port=final_port, user=final_user)

    ids = [ex(v) for v in identity_files] + [ex(v) for v in opts.get("identityfile", [])]
    ids = [i for i in ids if i.lower() != "none"]
    known = [
        ex(f) for v in opts.get("userknownhostsfile", []) for f in v.split() if f.lower() != "none"
    ]
    keepalive = one("serveraliveinterval")
    timeout = one("connecttimeout")
    proxy_command = one("proxycommand")
    hop = Hop(
        alias=alias,
        hostname=hostname,
        port=final_port,
        user=final_user,
        identity_files=tuple(ids) or tuple(os.path.expanduser(p) for p in DEFAULT_IDENTITIES),
        identities_only=(one("identitiesonly") or "no").lower() == "yes",
        known_hosts_files=tuple(known) or tuple(os.path.expanduser(p) for p in DEFAULT_KNOWN_HOSTS),
        host_key_alias=one("hostkeyalias"),
        proxy_command=ex(proxy_command) if proxy_command and proxy_command != "none" else None,
        keepalive_s=int(keepalive) if keepalive and keepalive.isdigit() else 0,
        connect_timeout_s=float(timeout) if timeout and timeout.isdigit() else None,
    )
    jump = one("proxyjump")
    return hop, (None if jump is None or jump.lower() == "none" else jump)


def resolve(
    host: str,
    *,
    config_text: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    site_user: str | None = None,
    site_port: int | None = None,
    site_jump: str | None = None,
    overrides: Overrides | None = None,
) -> Route:
    """Resolve ``host`` (a site login host or an ssh_config alias) into a :class:`Route`.

    ``config_text`` wins over ``config_path``; by default ``$HPCSERVE_SSH_CONFIG`` or
    ``~/.ssh/config`` is read if it exists.
    """
    ov = overrides or Overrides()
    if config_text is None:
        path = Path(
            os.path.expanduser(
                str(config_path or os.environ.get("HPCSERVE_SSH_CONFIG") or "~/.ssh/config")
            )
        )
        config_text = path.read_text(errors="replace") if path.is_file() else ""
    blocks = parse_config(config_text)
    return _resolve(host, blocks, ov, site_user, site_port, site_jump, depth=0)


def _resolve(
    host: str,
    blocks: list[_Block],
    ov: Overrides,
    site_user: str | None,
    site_port: int | None,
    site_jump: str | None,
    depth: int,
) -> Route:
    if depth > MAX_JUMP_DEPTH:
        raise UsageError(f"ProxyJump chain for {host!r} is too long (a loop in ~/.ssh/config?)")
    target, cfg_jump = resolve_hop(
        host,
        blocks,
        user=ov.user,
        port=ov.port,
        identity_files=ov.identity_files,
        site_user=site_user,
        site_port=site_port,
    )
    jump = ov.jump or cfg_jump or site_jump
    if target.proxy_command and not ov.jump and not cfg_jump:
        jump = None  # ProxyCommand from the config beats a site default jump
    if not jump or jump.lower() == "none":
        return Route(target=target)
    jumps: list[Hop] = []
    for i, spec in enumerate(s for s in jump.split(",") if s.strip()):
        user, h, p = parse_hop_spec(spec)
        if i == 0:
            sub = _resolve(h, blocks, Overrides(user=user, port=p), None, None, None, depth + 1)
            jumps.extend(sub.hops)
        else:
            hop, _ = resolve_hop(h, blocks, user=user, port=p)
            jumps.append(hop)
    return Route(target=target, jumps=tuple(jumps))
