"""The status summary: a report in one sentence, and the NCCL line of ``hpcserve status``."""

from __future__ import annotations

from collections.abc import Iterable

from hpcserve.nccl.report import NcclReport
from hpcserve.nccl.scanner import scan_lines

_NOT_SEEN = "selected, not yet seen carrying traffic"


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
    if r.verdict == "failed" and r.failure is not None:
        f = r.failure
        to = f" to {f.peer}" if f.peer else ""
        return f"NCCL: failed: socket connection{to}: {f.error or f.kind}"
    sel = r.selected_network
    no_net = not any(d.startswith("NET/") for d in r.connections)
    if sel is not None and no_net and c.transport != "none":
        what = _network(sel.kind, sel.link, sel.name)
        if r.verdict == "selected":
            return f"NCCL: {what} {_NOT_SEEN} ({nodes if r.nodes else 'node count unknown'})"
        return f"NCCL: {r.verdict}: {nodes} over {what} ({_NOT_SEEN})"
    if r.verdict == "single-node":
        return f"NCCL: single node ({', '.join(r.intra_node) or 'no connections'})"
    if c.transport == "none":
        nets = sorted({d.split("/")[1] for d in r.connections if d.startswith("NET/")})
        return (
            f"NCCL: {r.verdict}: one node whose GPUs talk over NET/{'/'.join(nets) or '?'} "
            "instead of P2P/SHM"
        )
    what = _network(c.transport, c.link, c.transport)
    gdr = "" if c.transport == "socket" else (" with GPUDirect RDMA" if c.gdr else " without GDR")
    return f"NCCL: {r.verdict}: {nodes} over {what}{gdr}"


def _network(kind: str, link: str | None, name: str) -> str:
    if kind == "ib":
        return "RoCE" if link == "roce" else "InfiniBand"
    return {"socket": "TCP sockets", "ofi": "libfabric/OFI"}.get(kind, name)


def detail_lines(r: NcclReport) -> list[str]:
    """The selected network and a failed socket connection, for the human output."""
    out: list[str] = []
    sel = r.selected_network
    if sel is not None:
        seen = (
            "seen carrying traffic"
            if sel.seen_carrying_traffic
            else "not yet seen carrying traffic"
        )
        how = ", inferred from setup lines" if sel.inferred else ""
        devs = f" [{', '.join(sel.devices)}]" if sel.devices else ""
        out.append(f"  selected net : {sel.name}{devs} ({seen}{how})")
    f = r.failure
    if f is not None:
        peer = f" (peer {f.peer})" if f.peer else ""
        where = f", in {f.layer}" if f.layer else ""
        out.append(f"  failure      : {f.error or f.kind}{peer}{where}")
    return out
