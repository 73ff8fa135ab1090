"""The status summary: a report in one sentence, and the NCCL line of ``hpcserve status``."""

from __future__ import annotations

from collections.abc import Iterable

from hpcserve.nccl.report import NcclReport
from hpcserve.nccl.scanner import scan_lines


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
