"""The per-run model: what the NCCL lines of one run showed, kept bounded, for the verdict rules.

:class:`RunFacts` takes one line at a time (:meth:`RunFacts.take`); only the facts the rules in
:mod:`hpcserve.nccl.verdict` read are kept, each set capped, so memory is bounded by the job's
size, not the log's. ``Using network X`` is kept only as a selection: the connection lines
(``... via NET/...``) show what was used (NCCL ``src/transport/net.cc``). Failed socket
connections and the files of error trails are kept for :mod:`hpcserve.nccl.sockets`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hpcserve.nccl.lines import Conn, Line, parse_connection, split_line
from hpcserve.nccl.sockets import TRAIL_RE, SocketFailure, parse_socket_failure

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
# "Assigned NET plugin IB to comm" (2.27+, src/plugin/net.cc): the same as "Using network IB"
_ASSIGNED_RE = re.compile(r"^Assigned NET plugin (.+?) to comm")

# Caps keeping memory bounded whatever the log holds.
MAX_SET = 4096
MAX_EXAMPLES = 3


@dataclass
class NetAgg:
    """NET connection lines of one shape (plugin, GDR, same-device) and where they came from."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)


@dataclass
class HostFacts:
    """What the lines naming one host showed."""

    pids: set[int] = field(default_factory=set)
    ranks: set[int] = field(default_factory=set)
    transports: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)


def _add(s: set[Any], v: Any) -> None:
    if len(s) < MAX_SET:
        s.add(v)


class RunFacts:
    """The facts of one run, from every line handed to :meth:`take` (in any order, any logs).

    ``expect_gdr``: IB without GPUDirect RDMA counts as degraded (the default on GPU clusters).
    """

    def __init__(self, expect_gdr: bool = True) -> None:
        self.expect_gdr = expect_gdr
        self.source: str | None = None
        self.found = False
        self.versions: dict[str, str] = {}
        self.nnodes_max: int | None = None
        self.nnodes_line: str | None = None
        self.nranks_max: int | None = None
        self.max_rank = -1
        self.hosts: dict[str, HostFacts] = {}
        self.ray_ips: set[str] = set()
        self.oob_ips: set[str] = set()
        self.sources: set[str] = set()
        self.bus: dict[str, dict[str, set[int]]] = {}  # commId -> busId -> ranks
        self.bus_dup_max = 1
        self.bus_dup_line: str | None = None
        self.conn_counts: dict[str, int] = {}
        self.intra_examples: dict[str, str] = {}  # p2p/shm/nvls -> first line
        self.net: dict[tuple[str, bool, bool], NetAgg] = {}  # (name, gdr, same_device)
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
        self.bootstrap_using: str | None = None
        self.ring_gdr_line: str | None = None
        self.warn_lines: list[str] = []
        self.sock_failures: list[tuple[SocketFailure, str]] = []  # distinct, first few
        self.trail: dict[str, str] = {}  # source file of an error trail or WARN -> first line

    def begin_source(self, label: str | None) -> None:
        """Name the stream that follows (e.g. ``node-1``); distinct labels count as nodes."""
        self.source = label

    def env_on(self, name: str) -> bool:
        """The NCCL variable was set to something other than 0 or empty."""
        v = self.env.get(name)
        return v is not None and v[0].strip() not in ("0", "")

    # -- one line ------------------------------------------------------------------------------

    def take(self, raw: str) -> None:
        """Record what one line shows; lines that are not NCCL lines are ignored."""
        ln = split_line(raw)
        if ln is None:
            return
        self.found = True
        if self.source is not None:
            _add(self.sources, self.source)
        host = self._host(ln)
        if ln.ray_ip:
            _add(self.ray_ips, ln.ray_ip)
        self._message(ln, host)

    def _message(self, ln: Line, host: HostFacts | None) -> None:
        msg = ln.msg
        if ln.level == "version" or msg.startswith("NCCL version"):
            self._version(ln)
        elif ln.level == "WARN":
            if len(self.warn_lines) < 10 and ln.text not in self.warn_lines:
                self.warn_lines.append(ln.text)
            self._warn(msg, ln)
            self._net_setup(msg, ln)
        elif " via " in msg:
            self._connection(msg, ln, host)
        elif msg.startswith(("comm ", "ncclComm")):
            self._comm(msg, ln, host)
        elif msg.startswith("NCCL_"):
            self._env(ln)
        elif msg.startswith(("transport/", "bootstrap.cc:", "misc/")):
            self._trail(msg, ln)
        elif not self._selection(msg, ln, host):
            self._net_setup(msg, ln)

    def _version(self, ln: Line) -> None:
        v = _VERSION_RE.search(ln.msg)
        if v and len(self.versions) < 16:
            self.versions.setdefault(v.group(1), ln.text)

    def _env(self, ln: Line) -> None:
        e = _ENV_RE.match(ln.msg)
        if e and len(self.env) < 256:
            self.env.setdefault(e.group(1), (e.group(2), ln.text))

    def _warn(self, msg: str, ln: Line) -> None:
        """A failed socket connection, and the file the WARN names (a trail of its own)."""
        if ln.where is not None and len(self.trail) < 32:
            self.trail.setdefault(ln.where, ln.text)
        f = parse_socket_failure(msg)
        known = [g for g, _ in self.sock_failures]
        if f is not None and len(known) < MAX_EXAMPLES and f not in known:
            self.sock_failures.append((f, ln.text))

    def _trail(self, msg: str, ln: Line) -> None:
        m = TRAIL_RE.match(msg)
        if m is not None and len(self.trail) < 32:
            self.trail.setdefault(m.group(1), ln.text)

    def _selection(self, msg: str, ln: Line, host: HostFacts | None) -> bool:
        """``Using network X``, NVLS and ``Connected all rings ... GDR 1`` lines; False if none."""
        a = _ASSIGNED_RE.match(msg)
        if msg.startswith("Using network ") or a is not None:
            name = a.group(1) if a is not None else msg[len("Using network ") :].strip()
            self.selected.setdefault(name, ln.text)
            if host is not None:
                _add(host.networks, name)
            return True
        if msg.startswith(("NVLS comm ", "Connected NVLS")):
            self.nvls_used = self.nvls_used or ln.text
            if host is not None:
                _add(host.transports, "nvls")
            return True
        if msg.startswith("Connected all rings") and "GDR 1" in msg:
            self.ring_gdr_line = self.ring_gdr_line or ln.text
            return True
        return False

    def _host(self, ln: Line) -> HostFacts | None:
        if ln.host is None:
            return None
        h = self.hosts.get(ln.host)
        if h is None:
            if len(self.hosts) >= MAX_SET:
                return None
            h = self.hosts[ln.host] = HostFacts()
        if ln.pid is not None:
            _add(h.pids, ln.pid)
        return h

    def _connection(self, msg: str, ln: Line, host: HostFacts | None) -> None:
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
            self._net_connection(c, ln, host)
        elif c.transport == "collnet" and len(self.collnet) < MAX_EXAMPLES:
            self.collnet.append(ln.text)

    def _net_connection(self, c: Conn, ln: Line, host: HostFacts | None) -> None:
        key = (c.net or "?", c.gdr, c.same_device)
        agg = self.net.get(key)
        if agg is None:
            agg = self.net[key] = NetAgg()
        agg.count += 1
        if len(agg.examples) < MAX_EXAMPLES:
            agg.examples.append(ln.text)
        if ln.host is not None:
            _add(agg.hosts, ln.host)
        if host is not None:
            _add(host.transports, f"net:{c.net}")

    def _comm(self, msg: str, ln: Line, host: HostFacts | None) -> None:
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
        if comm_id is None or len(self.bus) >= MAX_SET:
            return
        ranks = self.bus.setdefault(comm_id, {}).setdefault(bus.lower(), set())
        _add(ranks, rank)
        if len(ranks) > self.bus_dup_max:
            self.bus_dup_max, self.bus_dup_line = len(ranks), ln.text

    def _net_setup(self, msg: str, ln: Line) -> None:
        self._ib_setup(msg, ln)
        if "GPU Direct RDMA Disabled" in msg and not msg.startswith("NET/Socket"):
            self.gdr_disabled = self.gdr_disabled or ln.text
        if msg.startswith(("NET/Socket : Using", "NET/Socket: Using [")):
            self.socket_using = self.socket_using or ln.text
            self._ips(msg)
        elif msg.startswith("Bootstrap"):
            if "Using" in msg:
                self.bootstrap_using = self.bootstrap_using or ln.text
            self._ips(msg)
        elif msg.lower().startswith("net/ofi selected provider is"):
            self.ofi_provider = self.ofi_provider or ln.text
        elif msg.startswith("Failed to open libibverbs"):
            self.no_ibverbs = self.no_ibverbs or ln.text
        elif "No IP interface found" in msg or "no interface found" in msg:
            self.no_ip_if = self.no_ip_if or ln.text

    def _ib_setup(self, msg: str, ln: Line) -> None:
        if msg.startswith("NET/IB : No device found"):
            self.ib_nodevice = self.ib_nodevice or ln.text
        elif _IB_USING_RE.match(msg):
            if len(self.ib_using) < MAX_EXAMPLES:
                self.ib_using.append(ln.text)
            for link in _IB_LINK_RE.findall(msg):
                _add(self.ib_links, link)
            self._ips(msg)

    def _ips(self, msg: str) -> None:
        # Only the first address: NET/Socket lists every interface of one host.
        m = _IPV4_RE.search(msg)
        if m is not None and not m.group(1).startswith("127."):
            _add(self.oob_ips, m.group(1))
