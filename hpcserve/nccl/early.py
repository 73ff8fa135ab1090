"""Verdicts on logs that stop early: at NCCL's init, before any ``Channel ... via`` line, or at a
failed socket connection.

Facts the rules rest on (NCCL source):

* NCCL picks ONE network for a communicator's NET connections, the first that initialises with
  devices: an external plugin (``libnccl-net.so``: IBext/SHARP, aws-ofi-nccl, ...), then IB, then
  Socket (``src/plugin/net.cc``; ``initNet`` in ``src/init.cc`` of 2.4-2.18), and prints
  ``Using network %s`` (``src/init.cc``, 2.5+) or ``Assigned NET plugin %s to comm`` (2.27+);
* ``NET/IB : Using [0]mlx5_0:1/RoCE ... ; OOB eth0:...`` lists the HCA ports with their link
  layer (``/IB`` InfiniBand, ``/RoCE`` Ethernet; ``src/transport/net_ib``); ``NET/IB : No device
  found.`` means IB is out and sockets follow; ``NET/Socket : Using [0]eth0:addr<0>`` lists the
  interfaces of the socket transport (``src/transport/net_socket.cc``); aws-ofi-nccl prints
  ``NET/OFI Selected Provider is efa`` (``Selected provider is efa, fabric is efa`` in newer
  releases);
* a selection is not traffic: only the connection lines show what carries it. Between nodes,
  NET is the only way, so a selected Socket network means TCP between nodes; inside one host
  NET is used only when P2P and SHM are off (``NCCL_P2P_DISABLE``/``NCCL_SHM_DISABLE``).
"""

from __future__ import annotations

import re

from hpcserve.nccl.causes import socket_causes
from hpcserve.nccl.facts import RunFacts
from hpcserve.nccl.lines import net_kind
from hpcserve.nccl.report import Cause, CrossNode, Failure, NcclReport, Selection
from hpcserve.nccl.sockets import failure_causes, layer_of, trail_failure

_IB_PORT_RE = re.compile(r"([A-Za-z][\w.-]*:\d+/(?:IB|RoCE))")
_SOCK_IF_RE = re.compile(r"\[\d+\]([^\s\[\]<]+)<\d+>")
_OFI_RE = re.compile(r"[Pp]rovider is (.+)$")
_SLOWEST_FIRST = ("socket", "other", "ofi", "ib")
_MAX_DEVICES = 8
_NOT_SEEN = "selected, not yet seen carrying traffic"


# --- what was selected ---------------------------------------------------------------------------


def selection(s: RunFacts, r: NcclReport) -> Selection | None:
    """The network NCCL selected, from ``Using network`` lines or, without them, from the setup
    lines (IB ports listed beats sockets, as NCCL tries IB first); None when nothing shows."""
    if s.selected:
        kinds = {net_kind(n): n for n in s.selected}
        if len(kinds) > 1:
            r.warnings.append(
                "the hosts selected different networks: " + ", ".join(sorted(s.selected))
            )
        kind = next(k for k in _SLOWEST_FIRST if k in kinds)
        name, inferred = kinds[kind], False
        lines = [s.selected[name]]
    else:
        found = _inferred(s)
        if found is None:
            return None
        name, kind = found
        inferred, lines = True, []
    sel = Selection(name, kind, inferred=inferred)
    _details(s, sel, lines)
    sel.seen_carrying_traffic = any(net_kind(k[0]) == kind for k in s.net)
    return sel


def _inferred(s: RunFacts) -> tuple[str, str] | None:
    if s.ofi_provider:
        return "OFI", "ofi"
    if s.ib_using:
        return "IB", "ib"
    if s.socket_using:
        return "Socket", "socket"
    return None


def _details(s: RunFacts, sel: Selection, lines: list[str]) -> None:
    """Devices, link and the setup lines that back the selection."""
    if sel.kind == "ib" and s.ib_using:
        lines.append(s.ib_using[0])
        sel.devices = _IB_PORT_RE.findall(s.ib_using[0])[:_MAX_DEVICES]
        if "IB" in s.ib_links:
            sel.link = "infiniband"
        elif "RoCE" in s.ib_links:
            sel.link = "roce"
    elif sel.kind == "socket":
        lines.extend(x for x in (s.ib_nodevice, s.no_ibverbs, s.socket_using) if x)
        if s.socket_using:
            sel.devices = _SOCK_IF_RE.findall(s.socket_using)[:_MAX_DEVICES]
    elif sel.kind == "ofi" and s.ofi_provider:
        lines.append(s.ofi_provider)
        m = _OFI_RE.search(s.ofi_provider)
        sel.devices = [m.group(1).strip()] if m else []
    sel.lines = lines[:4]


# --- no connection lines yet ---------------------------------------------------------------------


def judge_init(s: RunFacts, r: NcclReport, multi: bool, isolated: bool) -> None:
    """The verdict when no connection line was seen: from the selected network and the hosts."""
    sel = r.selected_network
    if sel is not None:
        r.evidence.extend(sel.lines)
    if not multi and r.ranks == 1:
        r.cross_node = CrossNode("none", None, None)
        r.verdict = "single-node"
        r.warnings.append("one rank: NCCL has no peer to connect to")
    elif not multi and r.nodes == 1:
        _one_host(s, r, sel, isolated)
    elif sel is None:
        _nothing_selected(s, r, multi)
    else:
        _selected(s, r, sel, multi)


def _one_host(s: RunFacts, r: NcclReport, sel: Selection | None, isolated: bool) -> None:
    r.cross_node = CrossNode("none", None, None)
    if isolated and sel is not None:
        r.verdict = "degraded"
        r.intra_node = ["net"]
        why = [s.env[n][1] for n in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE") if n in s.env]
        r.evidence.extend(why)
        r.warnings.append(
            f"one host, and NCCL_P2P_DISABLE and NCCL_SHM_DISABLE are set: its GPUs will talk "
            f"through NET/{sel.name} ({_NOT_SEEN}); this is not a cross-node path"
        )
        r.causes.append(
            Cause(
                "P2P and shared-memory transports are disabled",
                "unset NCCL_P2P_DISABLE / NCCL_SHM_DISABLE",
                why,
            )
        )
        return
    r.verdict = "single-node"
    r.warnings.append(
        "no connection lines (Channel ... via ...) yet: the log ends during NCCL's init; one host"
        + (f", so the selected network ({sel.name}) is not used between its GPUs" if sel else "")
    )


def _nothing_selected(s: RunFacts, r: NcclReport, multi: bool) -> None:
    r.cross_node = CrossNode("unknown", None, None)
    r.verdict = "unknown"
    r.evidence.extend(s.collnet[:1])
    if multi:
        r.warnings.append(
            "more than one node but no NET connection lines and no network selection were found "
            "(log cut short, or NCCL_DEBUG_SUBSYS without INIT,NET)"
        )
    else:
        r.warnings.append("no connection lines (Channel ... via ...) found: nothing to judge")


def _selected(s: RunFacts, r: NcclReport, sel: Selection, multi: bool) -> None:
    transport = sel.kind if sel.kind != "other" else "unknown"
    gdr = False if sel.kind == "socket" else None
    r.cross_node = CrossNode(transport, gdr, sel.link)
    how = " (inferred from its setup lines; this NCCL prints no 'Using network')" * sel.inferred
    r.warnings.append(
        f"{sel.name} is the network NCCL {_NOT_SEEN}{how}: no connection line "
        "(Channel ... via NET/...) yet, so a selection is not proof of what is used; the log "
        "ends while NCCL sets up its connections (a hang here is often a blocked port or a "
        "wrong interface between the nodes)"
    )
    if not multi:
        r.warnings.append(
            "node count unknown: the log does not show whether these ranks span several hosts"
        )
    if sel.kind == "socket" and multi:
        r.verdict = "degraded"
        r.causes.extend(socket_causes(s))
        return
    r.verdict = "selected"
    if sel.kind == "ib" and s.gdr_disabled:
        r.warnings.append("NCCL says GPU Direct RDMA is disabled for an HCA: IB without GDR")
        r.evidence.append(s.gdr_disabled)


# --- a failed socket connection ------------------------------------------------------------------


def judge_failure(s: RunFacts, r: NcclReport, isolated: bool) -> None:
    """A failed socket connection: what failed, the peer, likely causes. It becomes the verdict
    (``failed``) unless it is only a peer closing a connection after NET connections were set up
    outside the socket transport (a peer that died later, e.g. at teardown): then the transport
    verdict stands and the failure is reported beside it."""
    found = s.sock_failures[0] if s.sock_failures else trail_failure(s.trail)
    if found is None:
        return
    first = found[0]
    layer, trail = layer_of(s.trail)
    r.failure = Failure(first.kind, first.peer, first.error, layer)
    r.failure.lines = [ln for _, ln in s.sock_failures] + ([trail] if trail else [])
    in_transport = layer is not None and "NET/Socket" in layer
    where = f" in {layer}" if layer else ""
    peer = f"peer {first.peer}, " if first.peer else ""
    if first.kind == "closed" and s.net and not in_transport:
        r.warnings.insert(
            0,
            f"a socket connection was closed by its peer after the NET connections were set up"
            f"{where} ({peer}{first.error}): the process there failed or exited; its log has "
            "the first error",
        )
        return
    r.verdict = "failed"
    if in_transport and not isolated and r.cross_node.transport in ("unknown", "none"):
        _socket_transport_between_hosts(r)
    across = "" if r.nodes == 1 else "cross-node "
    r.warnings.insert(
        0, f"a {across}socket connection failed{where}: {peer}{first.error or first.kind}"
    )
    iface = [x for x in (s.bootstrap_using, s.socket_using) if x]
    if not s.sock_failures:
        r.failure.lines.insert(0, found[1])
    r.causes[:0] = failure_causes(first, iface, s.env.get("NCCL_SOCKET_IFNAME"))
    r.evidence[:0] = r.failure.lines


def _socket_transport_between_hosts(r: NcclReport) -> None:
    """The NET/Socket transport failed with P2P/SHM available: NET runs between hosts only, so
    the run spans more than one, even if the log names one."""
    r.cross_node = CrossNode("socket", False, None)
    r.intra_node = [k for k in r.intra_node if k != "net"]
    r.warnings = [w for w in r.warnings if not w.startswith("node count inferred")]
    if r.nodes == 1:
        r.nodes = None
        r.warnings.append(
            "the NET/Socket transport only runs between hosts here (P2P/SHM are not disabled): "
            "more than one host, though these lines name one"
        )
