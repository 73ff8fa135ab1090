"""The verdict rules: from a run's :class:`~hpcserve.nccl.facts.RunFacts` to an
:class:`~hpcserve.nccl.report.NcclReport`.

Facts the rules rest on (NCCL source, ``src/transport/*.cc``, ``src/init.cc``):

* only connection lines (``... via P2P|SHM|NET|COLLNET/...``) show what was used: ``Using
  network X`` is a selection, ``GDR 1`` in ``Connected all rings`` and the ``collnet channels``
  count are not evidence;
* NCCL uses NET between two ranks of one host only when P2P and SHM are unavailable or disabled;
* ``nNodes`` is NCCL's count of GPU groups that reach each other without the network: the number
  of hosts, except when P2P and SHM are both off, where every GPU is its own group (seen in real
  2.28 logs: one host, ``nNodes 4 localRanks 1``). The other signals are lower bounds; hostnames
  alone can be identical on every node; every rank of the communicator (``nranks``) seen on one
  host, with one address, is one host.

Logs without connection lines and failed socket connections: :mod:`hpcserve.nccl.early`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpcserve.nccl.causes import gdr_causes, socket_causes
from hpcserve.nccl.early import judge_failure, judge_init, selection
from hpcserve.nccl.facts import NetAgg, RunFacts
from hpcserve.nccl.lines import net_kind
from hpcserve.nccl.report import Cause, CrossNode, NcclReport, NodeSummary

_DISABLES = ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE")


@dataclass(frozen=True)
class _Signals:
    """What the node-count rules look at, worked out once."""

    named: frozenset[str]  # the non-empty hostnames
    net_lines: int  # NET connection lines
    p2p_off: bool
    shm_off: bool
    other: int  # a lower bound on the hosts: names, addresses, shared bus ids, sources
    same_dev: bool  # a NET connection joins two ranks on the same device id

    @property
    def isolated(self) -> bool:
        """P2P and SHM both off: every GPU is its own 'node' to NCCL."""
        return self.p2p_off and self.shm_off


def _signals(s: RunFacts) -> _Signals:
    named = frozenset(h for h in s.hosts if h)
    other = max(len(named), len(s.ray_ips), len(s.oob_ips), s.bus_dup_max, len(s.sources), 1)
    return _Signals(
        named=named,
        net_lines=sum(a.count for a in s.net.values()),
        p2p_off=s.env_on("NCCL_P2P_DISABLE"),
        shm_off=s.env_on("NCCL_SHM_DISABLE"),
        other=other,
        same_dev=any(k[2] for k in s.net),
    )


def judge(s: RunFacts) -> NcclReport:
    """The verdict on the facts of one run."""
    r = _summary(s)
    if not s.found:
        r.warnings.append("no NCCL lines found (was NCCL_DEBUG=INFO set?)")
        return r
    r.selected_network = selection(s, r)
    g = _signals(s)
    multi = _count_nodes(s, r, g)
    _warn_one_hostname(r, g, multi)
    r.intra_node = _intra_node(s, multi, g.net_lines)
    if multi:
        _judge_cross(s, r, g)
        if g.isolated:
            r.warnings.append(
                "NCCL_P2P_DISABLE and NCCL_SHM_DISABLE are set: GPUs inside each node also go "
                "through the network"
            )
            r.evidence.extend(s.env[n][1] for n in _DISABLES)
    else:
        _judge_single(s, r, g)
    judge_failure(s, r, g.isolated)
    if s.ring_gdr_line and r.cross_node.gdr is False:
        r.warnings.append(
            "'Connected all rings ... GDR 1' was ignored: the NET connection lines, which decide, "
            "carry no /GDRDMA"
        )
    r.evidence = _dedup(r.evidence)[:12]
    return r


def _summary(s: RunFacts) -> NcclReport:
    """The report's plain facts: version, ranks, connection counts, hosts."""
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
    return r


# --- how many hosts: the first rule that applies sets r.nodes and says if there are several ------


def _nodes_from_nnodes(s: RunFacts, r: NcclReport, g: _Signals) -> bool | None:
    if s.nnodes_max is None or g.isolated:
        return None
    r.nodes = max(s.nnodes_max, g.other)
    if s.nnodes_line:
        r.evidence.append(s.nnodes_line)
    return r.nodes > 1 or g.same_dev


def _nodes_from_lower_bounds(s: RunFacts, r: NcclReport, g: _Signals) -> bool | None:
    if not (g.other > 1 or g.same_dev):
        return None
    r.nodes = g.other if g.other > 1 else None
    if r.nodes is None:
        r.warnings.append(
            "more than one host (a NET connection joins two ranks on the same device id) "
            "but the log does not say how many"
        )
    if s.bus_dup_line and s.bus_dup_max > 1:
        r.evidence.append(s.bus_dup_line)
    return True


def _one_isolated_host(s: RunFacts, r: NcclReport, g: _Signals) -> bool | None:
    if not (g.isolated and (g.named or s.oob_ips)):
        return None
    r.nodes = 1
    if s.nnodes_max is not None and s.nnodes_max > 1 and s.nnodes_line:
        r.evidence.append(s.nnodes_line)
        r.warnings.append(
            f"NCCL reports nNodes {s.nnodes_max}, but with NCCL_P2P_DISABLE and "
            "NCCL_SHM_DISABLE every GPU counts as its own 'node' in NCCL; the hostnames, "
            "addresses and bus ids show one host"
        )
    return False


def _all_ranks_on_one_host(s: RunFacts, r: NcclReport, g: _Signals) -> bool | None:
    if len(g.named) != 1 or g.other > 1 or not s.nranks_max:
        return None
    ranks = s.hosts[next(iter(g.named))].ranks
    if not set(range(s.nranks_max)) <= ranks:
        return None
    r.nodes = 1
    return False


def _net_means_several_hosts(s: RunFacts, r: NcclReport, g: _Signals) -> bool | None:
    # NCCL only goes through NET inside one host when P2P/SHM are off.
    if not g.net_lines or g.p2p_off or g.shm_off:
        return None
    r.warnings.append(
        "node count unknown (no nNodes line, hostnames not conclusive); NET connections "
        "without NCCL_P2P_DISABLE/NCCL_SHM_DISABLE mean more than one host"
    )
    return True


def _one_host_inferred(s: RunFacts, r: NcclReport, g: _Signals) -> bool | None:
    if not (g.net_lines or s.conn_counts):
        return None
    r.nodes = 1
    r.warnings.append("node count inferred (no nNodes line): one host")
    return False


_NODE_RULES: tuple[Callable[[RunFacts, NcclReport, _Signals], bool | None], ...] = (
    _nodes_from_nnodes,
    _nodes_from_lower_bounds,
    _one_isolated_host,
    _all_ranks_on_one_host,
    _net_means_several_hosts,
    _one_host_inferred,
)


def _count_nodes(s: RunFacts, r: NcclReport, g: _Signals) -> bool:
    """Set ``r.nodes`` (None when unknown); True when the run spans more than one host."""
    for rule in _NODE_RULES:
        multi = rule(s, r, g)
        if multi is not None:
            return multi
    return False


def _warn_one_hostname(r: NcclReport, g: _Signals, multi: bool) -> None:
    if len(g.named) == 1 and multi and r.nodes and r.nodes > 1:
        r.warnings.append(
            f"every line names host '{next(iter(g.named))}' but there are {r.nodes} hosts: the "
            "other hosts' logs are missing, or every host has the same name (containers); "
            "hostnames were not used to count nodes"
        )


def _intra_node(s: RunFacts, multi: bool, net_lines: int) -> list[str]:
    intra: list[str] = [kind for kind in ("p2p", "shm") if kind in s.intra_examples]
    if s.nvls_used:
        intra.append("nvls")
    if not multi and net_lines:
        intra.append("net")
    return intra


# --- one host ------------------------------------------------------------------------------------


def _judge_single(s: RunFacts, r: NcclReport, g: _Signals) -> None:
    r.cross_node = CrossNode("none", None, None)
    for kind in ("p2p", "shm"):
        if kind in s.intra_examples:
            r.evidence.append(s.intra_examples[kind])
    if s.nvls_used:
        r.evidence.append(s.nvls_used)
    if g.net_lines:
        _single_over_net(s, r, g)
    elif s.conn_counts or s.nvls_used:
        r.verdict = "single-node"
        if g.p2p_off and "p2p" not in r.intra_node:
            r.warnings.append("NCCL_P2P_DISABLE is set: GPUs use shared memory, not direct P2P")
            r.evidence.append(s.env["NCCL_P2P_DISABLE"][1])
    else:
        judge_init(s, r, False, g.isolated)


def _single_over_net(s: RunFacts, r: NcclReport, g: _Signals) -> None:
    names = sorted({k[0] for k in s.net})
    for agg in s.net.values():
        r.evidence.extend(agg.examples[:1])
    r.verdict = "degraded"
    why = [s.env[n][1] for n in _DISABLES if n in s.env]
    r.evidence.extend(why)
    r.warnings.append(
        "GPUs of one host talk over NET/" + "/".join(names) + " (through the network stack) "
        "instead of P2P or shared memory: this is one node, not a cross-node path, and it is "
        "much slower than NVLink/PCIe"
        + (" (NCCL_P2P_DISABLE and NCCL_SHM_DISABLE are set)" if g.isolated else "")
    )
    r.causes.append(
        Cause(
            "P2P and shared-memory transports are disabled or unavailable between these GPUs",
            "unset NCCL_P2P_DISABLE / NCCL_SHM_DISABLE (and NCCL_P2P_LEVEL); in a container, "
            "give it the host's IPC namespace and a large enough /dev/shm",
            why,
        )
    )


# --- across hosts --------------------------------------------------------------------------------


def _judge_cross(s: RunFacts, r: NcclReport, g: _Signals) -> None:
    if not s.net:
        judge_init(s, r, True, g.isolated)
        return
    transport = _cross_transport(s, r)
    used = {k: a for k, a in s.net.items() if net_kind(k[0]) == transport}
    for agg in used.values():
        r.evidence.extend(agg.examples[:1])
    gdr = _cross_gdr(r, transport, used)
    link = _ib_link(s, r) if transport == "ib" else None
    r.cross_node = CrossNode(transport, gdr, link)
    _VERDICTS.get(transport, _unknown_verdict)(s, r, gdr)
    if s.collnet:
        r.evidence.append(s.collnet[0])


def _cross_transport(s: RunFacts, r: NcclReport) -> str:
    """The cross-node transport: the slowest kind seen (socket, then ib, then ofi)."""
    kinds = {net_kind(k[0]) for k in s.net}
    transport = next((t for t in ("socket", "ib", "ofi") if t in kinds), "unknown")
    if len(kinds) > 1:
        r.warnings.append("mixed cross-node transports: " + ", ".join(sorted(kinds)))
    return transport


def _cross_gdr(r: NcclReport, transport: str, used: dict[tuple[str, bool, bool], NetAgg]) -> bool:
    """GPUDirect RDMA on every connection of ``transport`` (never over sockets)."""
    if transport == "socket":
        return False
    with_gdr = [k for k in used if k[1]]
    gdr = len(with_gdr) == len(used)
    if with_gdr and not gdr:
        r.warnings.append("some NET connections use GPUDirect RDMA and some do not")
    return gdr


def _ib_link(s: RunFacts, r: NcclReport) -> str | None:
    """``infiniband`` or ``roce`` from the ``NET/IB : Using [0]mlx5_0:1/IB`` lines."""
    link: str | None = None
    if "IB" in s.ib_links:
        link = "infiniband"
        if "RoCE" in s.ib_links:
            r.warnings.append("NCCL lists both InfiniBand and RoCE ports")
    elif "RoCE" in s.ib_links:
        link = "roce"
    r.evidence.extend(s.ib_using[:1])
    return link


def _socket_verdict(s: RunFacts, r: NcclReport, gdr: bool) -> None:
    r.verdict = "degraded"
    r.causes.extend(socket_causes(s))


def _ib_verdict(s: RunFacts, r: NcclReport, gdr: bool) -> None:
    if gdr:
        r.verdict = "optimal"
    elif s.expect_gdr:
        r.verdict = "degraded"
        r.causes.extend(gdr_causes(s))
    else:
        r.verdict = "optimal"
        r.warnings.append("InfiniBand without GPUDirect RDMA (accepted: GDR not expected)")


def _ofi_verdict(s: RunFacts, r: NcclReport, gdr: bool) -> None:
    r.verdict = "optimal"
    if s.ofi_provider:
        r.evidence.append(s.ofi_provider)
    if not gdr:
        r.warnings.append("libfabric/OFI network without GPUDirect RDMA")


def _unknown_verdict(s: RunFacts, r: NcclReport, gdr: bool) -> None:
    r.verdict = "unknown"
    names = ", ".join(sorted({k[0] for k in s.net}))
    r.warnings.append(f"cross-node traffic over an unrecognised NET plugin: {names}")


_VERDICTS: dict[str, Callable[[RunFacts, NcclReport, bool], None]] = {
    "socket": _socket_verdict,
    "ib": _ib_verdict,
    "ofi": _ofi_verdict,
}


def _dedup(xs: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
