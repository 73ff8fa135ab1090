"""The line parser: recognise an ``NCCL_DEBUG=INFO`` line and read a connection line.

Facts the parser rests on (NCCL source, ``src/transport/*.cc``, ``src/init.cc``, ``src/debug.cc``):

* a line is ``host:pid:tid [dev] NCCL INFO msg``; WARN lines carry ``file.cc:line`` (and from
  2.26 a ``[YYYY-MM-DD HH:MM:SS]`` stamp); launchers add their own prefixes in front of that;
* an error's trail is INFO lines ``file.cc:line -> code`` (``NCCLCHECK``, ``src/include/checks.h``;
  from 2.27 ``file.cc:line (function) -> code``, ``INFO_LOC`` in ``src/include/debug.h``);
* connection lines end in ``via P2P/...``, ``via SHM/...`` (old: ``via direct shared memory``),
  ``via NET/<name>/<dev>[(<proxy rank>)][/GDRDMA][(PCI)][/Shared]`` or ``via COLLNET/...``;
* two ranks of one communicator never share a GPU, so a connection whose two ends carry the same
  device id (bus id in 2.7-2.17, NVML index from 2.18) joins two different hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Message heads worth reading. The fast path finds them with one regex over a whole chunk.
_HEADS = (
    "Channel ",
    "Ring ",
    "CollNet ",
    "Coll ",
    "comm ",
    "ncclComm",
    "NET/",
    "Using ",
    "NCCL_",
    "NCCL version",
    "NVLS ",
    "Connected NVLS",
    "Connected all rings",
    "Bootstrap",
    "Failed to open libibverbs",
    "P2P plugin",
    "Assigned NET plugin",
    # error trails through the socket code (``NCCLCHECK`` lines, see the module docstring)
    "transport/net_socket.cc:",
    "bootstrap.cc:",
    "misc/socket.cc:",
)
_HEAD_ALT = "|".join(re.escape(h) for h in _HEADS)
# group 1: the message from INFO/WARN/version on (what is deduplicated and parsed)
_MSG_PAT = r"NCCL ((?:INFO (?:" + _HEAD_ALT + r")|WARN |version )[^\n]*)"
MSG_RE_B = re.compile(_MSG_PAT.encode())
MSG_RE = re.compile(_MSG_PAT)

_ANSI_RE = re.compile(r"(?:\x1b|ESC)?\[[0-9;]*m")
_RAY_REPEAT_RE = re.compile(r"\s*\[repeated \d+x across cluster\].*$")
# the host:pid:tid [dev] part just before "NCCL", with an optional "file.cc:123 (func) " (WARN)
_ORIGIN_RE = re.compile(r"([^\s:]*):(\d+):(\d+) \[(\d+)\] (?:(\S+):\d+ (?:\([^)]*\) )?)?$")
_RAY_IP_RE = re.compile(r"\bip=(\d{1,3}(?:\.\d{1,3}){3})")

_CONN_RE = re.compile(
    r"^(Channel|Ring) (\d+)(?:/(\d+))? : (\d+)(?:\[([0-9a-fA-F]+)\])? -> (\d+)"
    r"(?:\[([0-9a-fA-F]+)\])?(?: \[(send|receive)\])? via (.+)$"
)
_COLL_RE = re.compile(
    r"^(?:CollNet|Coll) \d+(?:/\d+)? : (\d+) \[(send|receive)\] via (COLLNET/.+)$"
)
_COMM_SUFFIX_RE = re.compile(r"\s+comm 0x[0-9a-fA-F]+ nRanks \d+\s*$")
_NET_TAIL_RE = re.compile(r"^NET/(.+?)/(\d+)(?:\((\d+)\))?((?:/[A-Za-z]+(?:\(PCI\))?)*)\s*$")

_P2P_KINDS = ("P2P/",)
_SHM_KINDS = ("SHM/", "direct shared memory")


def net_kind(name: str) -> str:
    """Map a NET plugin name from a connection line to ``ib``, ``socket``, ``ofi`` or ``other``."""
    low = name.lower()
    if low.startswith("ib"):  # IB, IBext, IBext_v8, ...
        return "ib"
    if low == "socket":
        return "socket"
    if "libfabric" in low or low.startswith("ofi") or low == "efa":
        return "ofi"
    return "other"


@dataclass(frozen=True)
class Line:
    """One recognised NCCL line, split into its origin and its message."""

    text: str  # the whole line, launcher prefix included, colour codes removed (what is cited)
    host: str | None
    pid: int | None
    dev: int | None
    level: str  # INFO, WARN or version
    msg: str  # after "NCCL INFO " / "NCCL WARN "; "NCCL version ..." for bare version lines
    ray_ip: str | None = None
    where: str | None = None  # the source file a WARN line names, e.g. "misc/socket.cc"


def split_line(line: str) -> Line | None:
    """Recognise an NCCL line whatever the launcher put in front of it; None if not one."""
    if "NCCL" not in line:
        return None
    text = line.rstrip("\r\n")
    clean = _ANSI_RE.sub("", text) if ("\x1b" in text or "[" in text) else text
    m = MSG_RE.search(clean)
    if m is None:
        return None
    body = _RAY_REPEAT_RE.sub("", m.group(1)).rstrip()
    head = clean[: m.start()]
    if body.startswith("version "):
        level, msg = "version", "NCCL " + body
    else:
        level, _, msg = body.partition(" ")
    host: str | None = None
    pid: int | None = None
    dev: int | None = None
    where: str | None = None
    o = _ORIGIN_RE.search(head)
    if o is not None:
        host, pid, dev, where = o.group(1), int(o.group(2)), int(o.group(4)), o.group(5)
    ip = _RAY_IP_RE.search(head)
    return Line(clean, host, pid, dev, level, msg, ip.group(1) if ip else None, where)


# --- connections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conn:
    """One connection line: who talks to whom, over what."""

    transport: str  # p2p, shm, net, collnet
    detail: str  # e.g. "P2P/CUMEM/read", "NET/IB/0/GDRDMA"
    src: int | None = None
    dst: int | None = None
    same_device: bool = False  # both ends carry the same device id: two different hosts
    net: str | None = None  # plugin name for NET/COLLNET ("IB", "Socket", "AWS Libfabric", ...)
    gdr: bool = False
    pxn: bool = False
    shared: bool = False


def parse_connection(msg: str) -> Conn | None:
    """Parse a ``Channel/Ring/CollNet ... via ...`` message of any NCCL version."""
    if " via " not in msg:
        return None
    m = _CONN_RE.match(msg)
    if m is None:
        c = _COLL_RE.match(msg)
        if c is None:
            return None
        tail = c.group(3)
        parts = tail.split("/")
        return Conn(
            "collnet", tail, src=int(c.group(1)), net=parts[1] if len(parts) > 1 else None,
            gdr="/GDRDMA" in tail,
        )  # fmt: skip
    kind, src, dev_a, dst, dev_b, tail = (
        m.group(1), int(m.group(4)), m.group(5), int(m.group(6)), m.group(7), m.group(9),
    )  # fmt: skip
    tail = _COMM_SUFFIX_RE.sub("", tail).strip()
    # Ring (2.4-2.6) brackets hold the CUDA device, which repeats on one host; Channel brackets
    # hold the bus id / NVML index, unique per host.
    same = kind == "Channel" and dev_a is not None and dev_a == dev_b and src != dst
    if tail.startswith(_P2P_KINDS):
        return Conn("p2p", tail, src, dst, same)
    if tail.startswith(_SHM_KINDS):
        return Conn("shm", tail, src, dst, same)
    if tail.startswith("NET/"):
        n = _NET_TAIL_RE.match(tail)
        if n is None:
            name = tail[4:].split("/")[0]
            return Conn("net", tail, src, dst, same, net=name, gdr="/GDRDMA" in tail)
        flags = n.group(4) or ""
        return Conn(
            "net", tail, src, dst, same, net=n.group(1), gdr="/GDRDMA" in flags,
            pxn=n.group(3) is not None, shared="/Shared" in flags,
        )  # fmt: skip
    return Conn("other", tail, src, dst, same)
