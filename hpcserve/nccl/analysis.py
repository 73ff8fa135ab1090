"""Read ``NCCL_DEBUG=INFO`` output and tell how GPUs and nodes really talk.

Pure logic, no I/O of its own beyond reading the streams it is handed. One
:class:`NcclScanner` takes lines (or raw byte chunks, the fast path) from any number of logs and
keeps a bounded summary; :meth:`NcclScanner.report` turns it into an :class:`NcclReport` whose
:meth:`~NcclReport.to_dict` is the JSON of ``hpcserve nccl --json``.

Facts the rules rest on (NCCL source, ``src/transport/*.cc``, ``src/init.cc``, ``src/debug.cc``):

* a line is ``host:pid:tid [dev] NCCL INFO msg``; WARN lines carry ``file.cc:line`` (and from
  2.26 a ``[YYYY-MM-DD HH:MM:SS]`` stamp); launchers add their own prefixes in front of that;
* connection lines end in ``via P2P/...``, ``via SHM/...`` (old: ``via direct shared memory``),
  ``via NET/<name>/<dev>[(<proxy rank>)][/GDRDMA][(PCI)][/Shared]`` or ``via COLLNET/...``;
  only these show what was used: ``Using network X`` is a selection, ``GDR 1`` in
  ``Connected all rings`` and the ``collnet channels`` count are not evidence;
* NCCL uses NET between two ranks of one host only when P2P and SHM are unavailable or disabled;
* two ranks of one communicator never share a GPU, so a connection whose two ends carry the same
  device id (bus id in 2.7-2.17, NVML index from 2.18) joins two different hosts.

Only lines whose message starts with a known word are looked at, and each distinct message once
(its first occurrence); memory is bounded by the job's size, not the log's. The byte-chunk path
first drops, in C (``bytes.split`` + set difference), the runs of lines and the lines it has
already seen, so long logs that repeat themselves cost little more than reading them.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

# --- line recognition -------------------------------------------------------------------------

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
)
_HEAD_ALT = "|".join(re.escape(h) for h in _HEADS)
# group 1: the message from INFO/WARN/version on (what is deduplicated and parsed)
_MSG_PAT = r"NCCL ((?:INFO (?:" + _HEAD_ALT + r")|WARN |version )[^\n]*)"
MSG_RE_B = re.compile(_MSG_PAT.encode())
MSG_RE = re.compile(_MSG_PAT)

_ANSI_RE = re.compile(r"(?:\x1b|ESC)?\[[0-9;]*m")
_RAY_REPEAT_RE = re.compile(r"\s*\[repeated \d+x across cluster\].*$")
# the host:pid:tid [dev] part just before "NCCL", with an optional "file.cc:123 (func) " (WARN)
_ORIGIN_RE = re.compile(r"([^\s:]*):(\d+):(\d+) \[(\d+)\] (?:\S+:\d+ (?:\([^)]*\) )?)?$")
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
_NNODES_RE = re.compile(
    r"comm 0x[0-9a-fA-F]+ rank (\d+) nRanks (\d+) nNodes (\d+) localRanks (\d+) localRank (\d+)"
)
_INIT_RE = re.compile(
    r"comm (0x[0-9a-fA-F]+) rank (\d+) nranks (\d+) cudaDev (\d+)(?: nvmlDev (\d+))?"
    r" busId ([0-9a-fA-F]+)(?: commId (0x[0-9a-fA-F]+))?"
)
_ENV_RE = re.compile(r"^(NCCL_[A-Z0-9_]+) set (?:by environment )?to (.*?)\.?\s*$")
_VERSION_RE = re.compile(r"NCCL version (\S+)")
_IPV4_RE = re.compile(r":(\d{1,3}(?:\.\d{1,3}){3})<")
_IB_USING_RE = re.compile(r"^NET/IB\w* ?: Using")
_IB_LINK_RE = re.compile(r"\]\S+?:\d+(?::\d*)*/(IB|RoCE)\b")

_P2P_KINDS = ("P2P/",)
_SHM_KINDS = ("SHM/", "direct shared memory")

# Caps keeping memory bounded whatever the log holds.
_MAX_SEEN = 200_000
_MAX_SET = 4096
_MAX_EXAMPLES = 3
CHUNK_SIZE = 1 << 20
_MAX_SEEN_LINE = 4096  # longer lines are never remembered, always looked at
_MAX_BLOCK = 64 << 10
_MAX_BLOCK_BYTES = 32 << 20
_MAX_LINE_BYTES = 32 << 20
_SKIP_MIN, _SKIP_MAX = 4, 64  # chunks to go without a sieve that did not pay off
_SAMPLE = 64 << 10  # bytes looked at to choose the block delimiter
_SUFFIX = 8
_MAX_LINE = 64 << 20


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
    o = _ORIGIN_RE.search(head)
    if o is not None:
        host, pid, dev = o.group(1), int(o.group(2)), int(o.group(4))
    ip = _RAY_IP_RE.search(head)
    return Line(clean, host, pid, dev, level, msg, ip.group(1) if ip else None)


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


# --- the result -------------------------------------------------------------------------------


@dataclass
class CrossNode:
    transport: str = "unknown"  # ib | socket | ofi | none | unknown
    gdr: bool | None = None
    link: str | None = None  # infiniband | roce | None

    def to_dict(self) -> dict[str, Any]:
        return {"transport": self.transport, "gdr": self.gdr, "link": self.link}


@dataclass
class Cause:
    """A likely reason for a degraded result, what to do, and the lines that point to it."""

    cause: str
    fix: str
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "fix": self.fix, "lines": list(self.lines)}


@dataclass
class NodeSummary:
    """What one host's lines showed (hosts as NCCL names them; see ``warnings``)."""

    host: str
    processes: int = 0
    ranks: list[int] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "processes": self.processes,
            "ranks": self.ranks,
            "transports": self.transports,
            "networks": self.networks,
        }


@dataclass
class NcclReport:
    """The verdict; :meth:`to_dict` gives the JSON of ``hpcserve nccl --json``."""

    nccl_version: str | None = None
    nodes: int | None = None
    ranks: int | None = None
    cross_node: CrossNode = field(default_factory=CrossNode)
    intra_node: list[str] = field(default_factory=list)
    verdict: str = "unknown"  # optimal | degraded | single-node | unknown
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # beyond the fixed fields
    found: bool = False  # any NCCL line at all
    causes: list[Cause] = field(default_factory=list)
    per_node: list[NodeSummary] = field(default_factory=list)
    connections: dict[str, int] = field(default_factory=dict)  # detail -> distinct lines

    @property
    def exit_code(self) -> int:
        """0 optimal or single node, 1 degraded, 3 nothing conclusive found."""
        return {"optimal": 0, "single-node": 0, "degraded": 1}.get(self.verdict, 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nccl_version": self.nccl_version,
            "nodes": self.nodes,
            "ranks": self.ranks,
            "cross_node": self.cross_node.to_dict(),
            "intra_node": list(self.intra_node),
            "verdict": self.verdict,
            "evidence": list(self.evidence),
            "warnings": list(self.warnings),
            "causes": [c.to_dict() for c in self.causes],
            "per_node": [n.to_dict() for n in self.per_node],
            "connections": dict(self.connections),
        }


# --- the scanner ------------------------------------------------------------------------------


@dataclass
class _NetAgg:
    """NET connection lines of one shape (plugin, GDR, same-device) and where they came from."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)


@dataclass
class _Host:
    pids: set[int] = field(default_factory=set)
    ranks: set[int] = field(default_factory=set)
    transports: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)


def _add(s: set[Any], v: Any) -> None:
    if len(s) < _MAX_SET:
        s.add(v)


def _backoff(fails: int) -> tuple[int, int]:
    """Chunks to skip a sieve after its ``fails + 1``-th failure in a row, and the new count."""
    return min(_SKIP_MIN << fails, _SKIP_MAX), min(fails + 1, 8)


def _pick_delimiter(chunk: bytes) -> bytes | None:
    """A line ending that cuts ``chunk`` into short runs of lines, as evenly as can be.

    The runs are what the block sieve remembers; any ``xxxxxxxx\\n`` works for correctness
    (it ends a line), the choice only decides how often runs repeat. Among the line endings
    found on at most one line in 8 (runs of 8 lines or more on average), the one leaving the
    shortest longest run. None if there is none.
    """
    lines = chunk[:_SAMPLE].split(b"\n")[:-1]
    if len(lines) < 64:
        return None
    where: dict[bytes, list[int]] = {}
    for i, ln in enumerate(lines):
        where.setdefault(ln[-_SUFFIX:], []).append(i)
    best, longest = None, len(lines) + 1
    for suffix, at in where.items():
        if len(suffix) < _SUFFIX or not 2 <= len(at) <= len(lines) // 8:
            continue
        gap = max(b - a for a, b in zip([-1, *at], [*at, len(lines)], strict=True))
        if gap < longest:
            best, longest = suffix, gap
    return best + b"\n" if best else None


class NcclScanner:
    """Streaming reader of NCCL debug output: feed lines or byte chunks, then :meth:`report`.

    ``expect_gdr``: IB without GPUDirect RDMA counts as degraded (the default on GPU clusters).
    """

    def __init__(self, expect_gdr: bool = True) -> None:
        self.expect_gdr = expect_gdr
        self._seen: set[bytes] = set()  # messages parsed
        self._seen_lines: set[bytes] = set()  # raw lines passed to the regex (fast path)
        self._seen_blocks: set[bytes] = set()  # raw runs of lines passed on (fast path)
        self._block_bytes = 0
        self._line_bytes = 0
        self._delim: bytes | None = None  # the line ending that ends a block
        self._block_skip = self._block_fails = 0
        self._line_skip = self._line_fails = 0
        self.source: str | None = None
        self.found = False
        self.versions: dict[str, str] = {}
        self.nnodes_max: int | None = None
        self.nnodes_line: str | None = None
        self.nranks_max: int | None = None
        self.max_rank = -1
        self.hosts: dict[str, _Host] = {}
        self.ray_ips: set[str] = set()
        self.oob_ips: set[str] = set()
        self.sources: set[str] = set()
        self.bus: dict[str, dict[str, set[int]]] = {}  # commId -> busId -> ranks
        self.bus_dup_max = 1
        self.bus_dup_line: str | None = None
        self.conn_counts: dict[str, int] = {}
        self.intra_examples: dict[str, str] = {}  # p2p/shm/nvls -> first line
        self.net: dict[tuple[str, bool, bool], _NetAgg] = {}  # (name, gdr, same_device)
        self.collnet: list[str] = []
        self.nvls_used: str | None = None
        self.env: dict[str, tuple[str, str]] = {}  # NCCL_X -> (value, line)
        self.selected: dict[str, str] = {}  # "Using network X" -> line
        self.ib_using: list[str] = []
        self.ib_links: set[str] = set()
        self.ib_nodevice: str | None = None
        self.no_ibverbs: str | None = None
        self.no_ip_if: str | None = None
        self.socket_using: str | None = None
        self.gdr_disabled: str | None = None
        self.ofi_provider: str | None = None
        self.ring_gdr_line: str | None = None
        self.warn_lines: list[str] = []

    # -- input ---------------------------------------------------------------------------------

    def begin_source(self, label: str | None) -> None:
        """Name the stream that follows (e.g. ``node-1``); distinct labels count as nodes."""
        self.source = label

    def feed(self, line: str) -> None:
        """Take one line of any log; lines that are not NCCL lines are ignored."""
        if "NCCL" not in line:
            return
        m = MSG_RE.search(line)
        if m is None:
            return
        key = m.group(1).encode("utf-8", "surrogateescape")
        if key in self._seen:
            return
        self._remember(key)
        self._parse(line)

    def feed_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.feed(line)

    def feed_chunk(self, chunk: bytes) -> None:
        """Take a block of raw log bytes made of whole lines (the fast path)."""
        self._feed(b"", chunk, len(chunk))

    def _feed(self, head: bytes, block: bytes, end: int) -> None:
        """Take the whole lines ``head + block[:end]``, copying as little of ``block`` as can be.

        Three sieves, each in C over the whole chunk, each passing on only what it has not seen
        (in log order): runs of lines ("blocks", cut after lines ending in a frequent suffix),
        then single lines, then the message regex. A sieve that stops paying off (most of its
        input new, as in logs of unique lines) is skipped for a while.
        """
        if block.find(b"NCCL", 0, end) < 0 and b"NCCL" not in head + block[:3]:
            return
        text = b""
        if self._block_skip > 0:
            self._block_skip -= 1
        else:
            if self._delim is None:
                self._delim = _pick_delimiter(block)
            if self._delim is None:
                self._block_skip, self._block_fails = _backoff(self._block_fails)
            else:
                text = self._new_blocks(head, block, end, self._delim)
                if len(text) > (len(head) + end) // 2:  # try another delimiter later
                    self._block_skip, self._block_fails = _backoff(self._block_fails)
                    self._delim = None
                else:
                    self._block_fails = 0
                if not text:
                    return
        if text:
            head, block, end = b"", text, len(text)
        if self._line_skip > 0:
            self._line_skip -= 1
        else:
            text = self._new_lines(head, block, end)
            if text:
                self._scan(text)
            return
        first = 0
        if head:  # the line cut by the read, then the rest in place
            first = block.find(b"\n", 0, end) + 1
            self._scan(head + block[:first])
        self._scan(block, first, end)

    def _new_blocks(self, head: bytes, block: bytes, end: int, delim: bytes) -> bytes:
        """The lines of ``head + block[:end]`` not inside a block seen before, in order."""
        pieces = block.split(delim)  # delim ends a line: none beyond end
        if head:
            pieces[0] = head + pieces[0]
        last = pieces.pop()  # not followed by delim: handed on as it is
        if end < len(block):
            last = last[: len(last) - (len(block) - end)]
        new = set(pieces) - self._seen_blocks
        if not new:
            return last
        out = []
        for p in pieces:
            if p in new:
                new.discard(p)
                out.append(p)
                if len(p) <= _MAX_BLOCK:
                    self._seen_blocks.add(p)
                    self._block_bytes += len(p)
        if self._block_bytes > _MAX_BLOCK_BYTES:
            self._seen_blocks.clear()
            self._block_bytes = 0
        out.append(last)
        return delim.join(out)

    def _new_lines(self, head: bytes, block: bytes, end: int) -> bytes:
        """The distinct lines of ``head + block[:end]`` not seen before, in order of first
        appearance."""
        lines = block.split(b"\n")
        if end < len(block):
            lines.pop()  # the unfinished line after end
        if head:
            lines[0] = head + lines[0]
        seen = self._seen_lines
        fresh = set(lines) - seen
        if not fresh:
            self._line_fails = 0
            return b""
        if len(fresh) > len(lines) // 2 and len(lines) > 64:
            self._line_skip, self._line_fails = _backoff(self._line_fails)
        else:
            self._line_fails = 0
        new = [ln for ln in dict.fromkeys(lines) if ln in fresh]  # in order
        for ln in new:
            if len(ln) <= _MAX_SEEN_LINE:
                seen.add(ln)
                self._line_bytes += len(ln)
        if len(seen) > _MAX_SEEN or self._line_bytes > _MAX_LINE_BYTES:
            seen.clear()
            self._line_bytes = 0
        return b"\n".join(new)

    def _scan(self, text: bytes, pos: int = 0, end: int | None = None) -> None:
        """Parse the first line of each message in ``text[pos:end]`` not seen before (``pos``
        at a line start, ``end`` just after a line end)."""
        end = len(text) if end is None else end
        if text.find(b"NCCL", pos, end) < 0:
            return
        found = MSG_RE_B.findall(text, pos, end)
        if not found:
            return
        new = set(found) - self._seen
        if not new:
            return
        # Second pass over this text only: first occurrences, in order (the earliest lines are
        # the ones cited), stopping once every new message has been seen.
        for m in MSG_RE_B.finditer(text, pos, end):
            key = m.group(1)
            if key not in new:
                continue
            new.discard(key)
            self._remember(key)
            start = text.rfind(b"\n", 0, m.start()) + 1
            self._parse(text[start : m.end()].decode("utf-8", "replace"))
            if not new:
                break

    def feed_stream(self, f: IO[bytes] | gzip.GzipFile, chunk_size: int = CHUNK_SIZE) -> None:
        """Read a binary stream to its end in chunks, each taken up to its last line end."""
        pending: list[bytes] = []  # the unfinished line, in parts
        size = 0
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            cut = block.rfind(b"\n")
            if cut < 0:
                pending.append(block)
                size += len(block)
                if size > max(4 * chunk_size, _MAX_LINE):  # absurd line: look, move on
                    self.feed_chunk(b"".join(pending))
                    pending, size = [], 0
                continue
            self._feed(b"".join(pending), block, cut + 1)
            pending = [block[cut + 1 :]]
            size = len(pending[0])
        if size:
            self.feed_chunk(b"".join(pending))

    def _remember(self, key: bytes) -> None:
        if len(self._seen) >= _MAX_SEEN:
            # Forget everything together: a line or block is only skipped while its message
            # is still remembered.
            self._seen.clear()
            self._seen_lines.clear()
            self._seen_blocks.clear()
            self._block_bytes = self._line_bytes = 0
        self._seen.add(key)

    # -- one line ------------------------------------------------------------------------------

    def _parse(self, raw: str) -> None:
        ln = split_line(raw)
        if ln is None:
            return
        self.found = True
        if self.source is not None:
            _add(self.sources, self.source)
        host = self._host(ln)
        if ln.ray_ip:
            _add(self.ray_ips, ln.ray_ip)
        msg = ln.msg
        if ln.level == "version" or msg.startswith("NCCL version"):
            v = _VERSION_RE.search(msg)
            if v and len(self.versions) < 16:
                self.versions.setdefault(v.group(1), ln.text)
            return
        if ln.level == "WARN":
            if len(self.warn_lines) < 10 and ln.text not in self.warn_lines:
                self.warn_lines.append(ln.text)
            self._net_setup(msg, ln)
            return
        if " via " in msg:
            self._connection(msg, ln, host)
            return
        if msg.startswith("comm ") or msg.startswith("ncclComm"):
            self._comm(msg, ln, host)
            return
        if msg.startswith("NCCL_"):
            e = _ENV_RE.match(msg)
            if e and len(self.env) < 256:
                self.env.setdefault(e.group(1), (e.group(2), ln.text))
            return
        if msg.startswith("Using network "):
            name = msg[len("Using network ") :].strip()
            self.selected.setdefault(name, ln.text)
            if host is not None:
                _add(host.networks, name)
            return
        if msg.startswith("NVLS comm ") or msg.startswith("Connected NVLS"):
            self.nvls_used = self.nvls_used or ln.text
            if host is not None:
                _add(host.transports, "nvls")
            return
        if msg.startswith("Connected all rings") and "GDR 1" in msg:
            self.ring_gdr_line = self.ring_gdr_line or ln.text
            return
        self._net_setup(msg, ln)

    def _host(self, ln: Line) -> _Host | None:
        if ln.host is None:
            return None
        h = self.hosts.get(ln.host)
        if h is None:
            if len(self.hosts) >= _MAX_SET:
                return None
            h = self.hosts[ln.host] = _Host()
        if ln.pid is not None:
            _add(h.pids, ln.pid)
        return h

    def _connection(self, msg: str, ln: Line, host: _Host | None) -> None:
        c = parse_connection(msg)
        if c is None:
            return
        self.conn_counts[c.detail] = self.conn_counts.get(c.detail, 0) + 1
        for r in (c.src, c.dst):
            if r is not None and r > self.max_rank:
                self.max_rank = r
        if c.transport in ("p2p", "shm"):
            self.intra_examples.setdefault(c.transport, ln.text)
            if host is not None:
                _add(host.transports, c.transport)
        elif c.transport == "net":
            key = (c.net or "?", c.gdr, c.same_device)
            agg = self.net.get(key)
            if agg is None:
                agg = self.net[key] = _NetAgg()
            agg.count += 1
            if len(agg.examples) < _MAX_EXAMPLES:
                agg.examples.append(ln.text)
            if ln.host is not None:
                _add(agg.hosts, ln.host)
            if host is not None:
                _add(host.transports, f"net:{c.net}")
        elif c.transport == "collnet" and len(self.collnet) < _MAX_EXAMPLES:
            self.collnet.append(ln.text)

    def _comm(self, msg: str, ln: Line, host: _Host | None) -> None:
        m = _NNODES_RE.search(msg)
        if m is not None:
            rank, nranks, nnodes = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if self.nnodes_max is None or nnodes > self.nnodes_max:
                self.nnodes_max, self.nnodes_line = nnodes, ln.text
            self.nranks_max = max(self.nranks_max or 0, nranks)
            if host is not None:
                _add(host.ranks, rank)
            return
        i = _INIT_RE.search(msg)
        if i is None:
            return
        rank, nranks, bus, comm_id = int(i.group(2)), int(i.group(3)), i.group(6), i.group(7)
        self.nranks_max = max(self.nranks_max or 0, nranks)
        if host is not None:
            _add(host.ranks, rank)
        if comm_id is None or len(self.bus) >= _MAX_SET:
            return
        ranks = self.bus.setdefault(comm_id, {}).setdefault(bus.lower(), set())
        _add(ranks, rank)
        if len(ranks) > self.bus_dup_max:
            self.bus_dup_max, self.bus_dup_line = len(ranks), ln.text

    def _net_setup(self, msg: str, ln: Line) -> None:
        if msg.startswith("NET/IB : No device found"):
            self.ib_nodevice = self.ib_nodevice or ln.text
        elif _IB_USING_RE.match(msg):
            if len(self.ib_using) < _MAX_EXAMPLES:
                self.ib_using.append(ln.text)
            for link in _IB_LINK_RE.findall(msg):
                _add(self.ib_links, link)
            self._ips(msg)
        if "GPU Direct RDMA Disabled" in msg and not msg.startswith("NET/Socket"):
            self.gdr_disabled = self.gdr_disabled or ln.text
        if msg.startswith("NET/Socket : Using") or msg.startswith("NET/Socket: Using ["):
            self.socket_using = self.socket_using or ln.text
            self._ips(msg)
        elif msg.startswith("Bootstrap"):
            self._ips(msg)
        elif msg.startswith("NET/OFI Selected Provider is"):
            self.ofi_provider = self.ofi_provider or ln.text
        elif msg.startswith("Failed to open libibverbs"):
            self.no_ibverbs = self.no_ibverbs or ln.text
        elif "No IP interface found" in msg or "no interface found" in msg:
            self.no_ip_if = self.no_ip_if or ln.text

    def _ips(self, msg: str) -> None:
        # Only the first address: NET/Socket lists every interface of one host.
        m = _IPV4_RE.search(msg)
        if m is not None and not m.group(1).startswith("127."):
            _add(self.oob_ips, m.group(1))

    # -- verdict -------------------------------------------------------------------------------

    def report(self) -> NcclReport:
        """The verdict on everything fed so far."""
        return _judge(self)


# --- judging ----------------------------------------------------------------------------------


def _env_on(s: NcclScanner, name: str) -> bool:
    v = s.env.get(name)
    return v is not None and v[0].strip() not in ("0", "")


def _judge(s: NcclScanner) -> NcclReport:
    r = NcclReport(found=s.found)
    if s.versions:
        r.nccl_version = next(iter(s.versions))
        if len(s.versions) > 1:
            r.warnings.append("several NCCL versions in these logs: " + ", ".join(s.versions))
    r.ranks = s.nranks_max or (s.max_rank + 1 if s.max_rank >= 0 else None)
    r.connections = dict(sorted(s.conn_counts.items()))
    r.per_node = [
        NodeSummary(
            host or "(no hostname)",
            len(h.pids),
            sorted(h.ranks),
            sorted(h.transports),
            sorted(h.networks),
        )  # fmt: skip
        for host, h in sorted(s.hosts.items())
    ]
    if not s.found:
        r.warnings.append("no NCCL lines found (was NCCL_DEBUG=INFO set?)")
        return r

    # How many hosts? nNodes is NCCL's count of GPU groups that reach each other without the
    # network: the number of hosts, except when P2P and SHM are both off, where every GPU is
    # its own group (seen in real 2.28 logs: one host, "nNodes 4 localRanks 1"). The other
    # signals are lower bounds; hostnames alone can be identical on every node.
    named = {h for h in s.hosts if h}
    net_lines = sum(a.count for a in s.net.values())
    p2p_off = _env_on(s, "NCCL_P2P_DISABLE")
    shm_off = _env_on(s, "NCCL_SHM_DISABLE")
    isolated = p2p_off and shm_off
    other = max(len(named), len(s.ray_ips), len(s.oob_ips), s.bus_dup_max, len(s.sources), 1)
    same_dev = any(k[2] for k in s.net)
    multi = False
    if s.nnodes_max is not None and not isolated:
        r.nodes = max(s.nnodes_max, other)
        multi = r.nodes > 1 or same_dev
        if s.nnodes_line:
            r.evidence.append(s.nnodes_line)
    elif other > 1 or same_dev:
        multi = True
        r.nodes = other if other > 1 else None
        if r.nodes is None:
            r.warnings.append(
                "more than one host (a NET connection joins two ranks on the same device id) "
                "but the log does not say how many"
            )
        if s.bus_dup_line and s.bus_dup_max > 1:
            r.evidence.append(s.bus_dup_line)
    elif isolated and (named or s.oob_ips):
        r.nodes = 1
        if s.nnodes_max is not None and s.nnodes_max > 1 and s.nnodes_line:
            r.evidence.append(s.nnodes_line)
            r.warnings.append(
                f"NCCL reports nNodes {s.nnodes_max}, but with NCCL_P2P_DISABLE and "
                "NCCL_SHM_DISABLE every GPU counts as its own 'node' in NCCL; the hostnames, "
                "addresses and bus ids show one host"
            )
    elif net_lines and not (p2p_off or shm_off):
        # NCCL only goes through NET inside one host when P2P/SHM are off.
        multi = True
        r.warnings.append(
            "node count unknown (no nNodes line, hostnames not conclusive); NET connections "
            "without NCCL_P2P_DISABLE/NCCL_SHM_DISABLE mean more than one host"
        )
    elif net_lines or s.conn_counts:
        r.nodes = 1
        r.warnings.append("node count inferred (no nNodes line): one host")
    if len(named) == 1 and multi and r.nodes and r.nodes > 1:
        r.warnings.append(
            f"every line names host '{next(iter(named))}' but there are {r.nodes} hosts: the "
            "other hosts' logs are missing, or every host has the same name (containers); "
            "hostnames were not used to count nodes"
        )

    intra = []
    if "p2p" in s.intra_examples:
        intra.append("p2p")
    if "shm" in s.intra_examples:
        intra.append("shm")
    if s.nvls_used:
        intra.append("nvls")
    if not multi and net_lines:
        intra.append("net")
    r.intra_node = intra

    if not multi:
        _judge_single(s, r, net_lines, p2p_off, shm_off)
    else:
        _judge_cross(s, r)
        if isolated:
            r.warnings.append(
                "NCCL_P2P_DISABLE and NCCL_SHM_DISABLE are set: GPUs inside each node also go "
                "through the network"
            )
            r.evidence.extend(s.env[n][1] for n in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE"))
    if s.ring_gdr_line and r.cross_node.gdr is False:
        r.warnings.append(
            "'Connected all rings ... GDR 1' was ignored: the NET connection lines, which decide, "
            "carry no /GDRDMA"
        )
    r.evidence = _dedup(r.evidence)[:12]
    return r


def _judge_single(
    s: NcclScanner, r: NcclReport, net_lines: int, p2p_off: bool, shm_off: bool
) -> None:
    r.cross_node = CrossNode("none", None, None)
    for kind in ("p2p", "shm"):
        if kind in s.intra_examples:
            r.evidence.append(s.intra_examples[kind])
    if s.nvls_used:
        r.evidence.append(s.nvls_used)
    if net_lines:
        names = sorted({k[0] for k in s.net})
        for agg in s.net.values():
            r.evidence.extend(agg.examples[:1])
        r.verdict = "degraded"
        why = [s.env[n][1] for n in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE") if n in s.env]
        r.evidence.extend(why)
        r.warnings.append(
            "GPUs of one host talk over NET/" + "/".join(names) + " (through the network stack) "
            "instead of P2P or shared memory: this is one node, not a cross-node path, and it is "
            "much slower than NVLink/PCIe"
            + (" (NCCL_P2P_DISABLE and NCCL_SHM_DISABLE are set)" if p2p_off and shm_off else "")
        )
        lines = why
        r.causes.append(
            Cause(
                "P2P and shared-memory transports are disabled or unavailable between these GPUs",
                "unset NCCL_P2P_DISABLE / NCCL_SHM_DISABLE (and NCCL_P2P_LEVEL); in a container, "
                "give it the host's IPC namespace and a large enough /dev/shm",
                lines,
            )
        )
        return
    if s.conn_counts or s.nvls_used:
        r.verdict = "single-node"
        if p2p_off and "p2p" not in r.intra_node:
            r.warnings.append("NCCL_P2P_DISABLE is set: GPUs use shared memory, not direct P2P")
            r.evidence.append(s.env["NCCL_P2P_DISABLE"][1])
    else:
        r.verdict = "unknown"
        r.warnings.append("no connection lines (Channel ... via ...) found: nothing to judge")


def _judge_cross(s: NcclScanner, r: NcclReport) -> None:
    cross = {k: a for k, a in s.net.items()}
    if not cross:
        r.cross_node = CrossNode("unknown", None, None)
        r.verdict = "unknown"
        r.evidence.extend(s.collnet[:1])
        sel = ", ".join(sorted(s.selected)) or "none"
        r.warnings.append(
            "more than one node but no NET connection lines were found (log cut short, or only "
            f"init lines); the selected network ({sel}) is not proof of what is used"
        )
        return
    kinds = {net_kind(k[0]) for k in cross}
    if "socket" in kinds:
        transport = "socket"
    elif "ib" in kinds:
        transport = "ib"
    elif "ofi" in kinds:
        transport = "ofi"
    else:
        transport = "unknown"
    if len(kinds) > 1:
        r.warnings.append("mixed cross-node transports: " + ", ".join(sorted(kinds)))
    used = {k: a for k, a in cross.items() if net_kind(k[0]) == transport}
    for agg in used.values():
        r.evidence.extend(agg.examples[:1])
    gdr: bool | None
    if transport == "socket":
        gdr = False
    else:
        with_gdr = [k for k in used if k[1]]
        gdr = len(with_gdr) == len(used)
        if with_gdr and not gdr:
            r.warnings.append("some NET connections use GPUDirect RDMA and some do not")
    link: str | None = None
    if transport == "ib":
        if "IB" in s.ib_links:
            link = "infiniband"
            if "RoCE" in s.ib_links:
                r.warnings.append("NCCL lists both InfiniBand and RoCE ports")
        elif "RoCE" in s.ib_links:
            link = "roce"
        r.evidence.extend(s.ib_using[:1])
    r.cross_node = CrossNode(transport, gdr, link)
    if transport == "socket":
        r.verdict = "degraded"
        r.causes.extend(_socket_causes(s))
    elif transport == "ib" and not gdr:
        if s.expect_gdr:
            r.verdict = "degraded"
            r.causes.extend(_gdr_causes(s))
        else:
            r.verdict = "optimal"
            r.warnings.append("InfiniBand without GPUDirect RDMA (accepted: GDR not expected)")
    elif transport in ("ib", "ofi"):
        r.verdict = "optimal"
        if transport == "ofi":
            if s.ofi_provider:
                r.evidence.append(s.ofi_provider)
            if not gdr:
                r.warnings.append("libfabric/OFI network without GPUDirect RDMA")
    else:
        r.verdict = "unknown"
        names = ", ".join(sorted({k[0] for k in cross}))
        r.warnings.append(f"cross-node traffic over an unrecognised NET plugin: {names}")
    if s.collnet:
        r.evidence.append(s.collnet[0])


def _socket_causes(s: NcclScanner) -> list[Cause]:
    out: list[Cause] = []
    if "NCCL_IB_DISABLE" in s.env and _env_on(s, "NCCL_IB_DISABLE"):
        out.append(
            Cause(
                "NCCL_IB_DISABLE is set, so NCCL never tries InfiniBand",
                "unset NCCL_IB_DISABLE (site config network.nccl_env, your shell, the container)",
                [s.env["NCCL_IB_DISABLE"][1]],
            )
        )
    net = s.env.get("NCCL_NET")
    if net is not None and net[0].lower().startswith("socket"):
        out.append(Cause("NCCL_NET forces the socket transport", "unset NCCL_NET", [net[1]]))
    if s.no_ibverbs:
        out.append(
            Cause(
                "libibverbs is missing where NCCL runs (inside the container image)",
                "install rdma-core/libibverbs (libibverbs.so.1 and the mlx5 provider) in the image",
                [s.no_ibverbs],
            )
        )
    hca = s.env.get("NCCL_IB_HCA")
    if s.ib_nodevice:
        lines = [s.ib_nodevice] + ([hca[1]] if hca else [])
        if hca is not None:
            out.append(
                Cause(
                    f"NCCL_IB_HCA={hca[0]} matches no usable HCA port",
                    "list the HCAs with `ibv_devinfo` on a compute node and fix or unset "
                    "NCCL_IB_HCA (site config network.nccl_ib_hca)",
                    lines,
                )
            )
        out.append(
            Cause(
                "no InfiniBand device is visible to NCCL (typically inside the container)",
                "make the HCA visible where NCCL runs: /dev/infiniband and /sys/class/infiniband "
                "(Apptainer shares the host /dev unless --contain/--containall is used; Docker "
                "needs --device /dev/infiniband), the image needs rdma-core (libibverbs + mlx5 "
                "provider); check with `ibv_devinfo` inside the container",
                [s.ib_nodevice],
            )
        )
    ifn = s.env.get("NCCL_SOCKET_IFNAME")
    if s.no_ip_if:
        lines = [s.no_ip_if] + ([ifn[1]] if ifn else [])
        out.append(
            Cause(
                "no network interface matches NCCL_SOCKET_IFNAME"
                + (f"={ifn[0]}" if ifn else "")
                + " (NET/IB needs one for its out-of-band setup)",
                "set NCCL_SOCKET_IFNAME to an interface that exists on every node "
                "(`ip -br addr`), e.g. ib0 (site config network.nccl_socket_ifname)",
                lines,
            )
        )
    elif ifn is not None:
        out.append(
            Cause(
                f"sockets run over NCCL_SOCKET_IFNAME={ifn[0]}; an IPoIB interface (ib0) still "
                "means TCP, not RDMA",
                "fix IB visibility rather than the interface; NCCL_SOCKET_IFNAME only picks the "
                "TCP/bootstrap interface",
                [ifn[1]],
            )
        )
    if not out:
        lines = [x for x in (s.socket_using, *s.selected.values()) if x][:2]
        out.append(
            Cause(
                "NCCL fell back to TCP sockets without saying why in these lines",
                "run `ibv_devinfo` inside the job's container; check NCCL_IB_DISABLE, NCCL_NET, "
                "NCCL_IB_HCA; rerun with NCCL_DEBUG_SUBSYS=INIT,NET for the network setup lines",
                lines,
            )
        )
    return out


def _gdr_causes(s: NcclScanner) -> list[Cause]:
    out: list[Cause] = []
    lvl = s.env.get("NCCL_NET_GDR_LEVEL")
    if lvl is not None:
        out.append(
            Cause(
                f"NCCL_NET_GDR_LEVEL={lvl[0]} limits GPUDirect RDMA to closer GPU/NIC pairs",
                "unset NCCL_NET_GDR_LEVEL (or raise it, e.g. PHB or SYS) after checking "
                "`nvidia-smi topo -m`",
                [lvl[1]],
            )
        )
    rd = s.env.get("NCCL_NET_GDR_READ")
    if rd is not None and rd[0].strip() == "0":
        out.append(Cause("NCCL_NET_GDR_READ=0 turns GDR off for sends", "unset it", [rd[1]]))
    if out and not s.gdr_disabled:
        return out
    peer = [s.gdr_disabled] if s.gdr_disabled else []
    out.append(
        Cause(
            "the NIC cannot read/write GPU memory: the nvidia-peermem (or legacy nv_peer_mem) "
            "kernel module is not loaded, and DMA-BUF is not available",
            "ask the admins to load it (`modprobe nvidia_peermem`; check `lsmod | grep -e "
            "nvidia_peermem -e nv_peer_mem`) or use a driver/kernel with DMA-BUF support",
            peer,
        )
    )
    return out


def _dedup(xs: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# --- convenience --------------------------------------------------------------------------------


def open_log(path: str) -> IO[bytes] | gzip.GzipFile:
    """Open a log file for binary reading, transparently un-gzipping it."""
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller
    try:
        magic = f.read(2)
        f.seek(0)
    except OSError:
        f.close()
        raise
    if magic == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")  # noqa: SIM115
    return f


def wrap_stream(f: IO[bytes]) -> IO[bytes] | gzip.GzipFile:
    """Un-gzip a binary stream (stdin) if it starts with the gzip magic."""
    peek = getattr(f, "peek", None)
    if peek is not None and peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def scan_lines(lines: Iterable[str], expect_gdr: bool = True) -> NcclReport:
    """Verdict for lines (strings), e.g. from another reader."""
    s = NcclScanner(expect_gdr)
    s.feed_lines(lines)
    return s.report()


def scan_paths(paths: Iterable[str], expect_gdr: bool = True) -> NcclReport:
    """Verdict for log files (plain or gzip'd), read in chunks."""
    s = NcclScanner(expect_gdr)
    for p in paths:
        with open_log(p) as f:
            s.feed_stream(f)
    return s.report()


def iter_text_lines(text: str) -> Iterator[str]:
    return iter(text.splitlines())


def nccl_summary_for_status(lines: Iterable[str]) -> str | None:
    """One line for ``hpcserve status`` once communicators are up; None before that."""
    r = scan_lines(lines)
    if r.verdict == "unknown":
        return None
    return one_line(r)


def one_line(r: NcclReport) -> str:
    """The verdict in one short sentence."""
    c = r.cross_node
    nodes = f"{r.nodes} node{'s' if r.nodes != 1 else ''}" if r.nodes else "several nodes"
    if r.verdict == "single-node":
        return f"NCCL: single node ({', '.join(r.intra_node) or 'no connections'})"
    if c.transport == "none":
        nets = sorted({d.split("/")[1] for d in r.connections if d.startswith("NET/")})
        return (
            f"NCCL: {r.verdict}: one node whose GPUs talk over NET/{'/'.join(nets) or '?'} "
            "instead of P2P/SHM"
        )
    what = {"ib": "InfiniBand", "socket": "TCP sockets", "ofi": "libfabric/OFI"}.get(
        c.transport, c.transport
    )
    if c.transport == "ib" and c.link == "roce":
        what = "RoCE"
    gdr = "" if c.transport == "socket" else (" with GPUDirect RDMA" if c.gdr else " without GDR")
    return f"NCCL: {r.verdict}: {nodes} over {what}{gdr}"
