"""The result of reading NCCL logs: :class:`NcclReport`, the JSON of ``hpcserve nccl --json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CrossNode:
    """How ranks on different hosts talk: the NET plugin kind, GPUDirect RDMA, the link."""

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
class Selection:
    """The network NCCL selected for its NET connections (``Using network X``, or inferred from
    the setup lines of versions that do not print it), and whether it was seen carrying traffic
    (NET connection lines of that kind)."""

    name: str  # as NCCL names it: IB, Socket, IBext_v8, AWS Libfabric, Libfabric, ...
    kind: str  # ib | socket | ofi | other
    link: str | None = None  # infiniband | roce (IB only)
    devices: list[str] = field(default_factory=list)  # mlx5_0:1/RoCE, eth0:10.0.0.1, efa ...
    inferred: bool = False  # no "Using network" line: read from the setup lines
    seen_carrying_traffic: bool = False
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "link": self.link,
            "devices": list(self.devices),
            "inferred": self.inferred,
            "seen_carrying_traffic": self.seen_carrying_traffic,
            "lines": list(self.lines),
        }


@dataclass
class Failure:
    """A failed socket connection: what failed, to which peer, with what error, in which part of
    NCCL (from the error trail), and the lines that show it."""

    kind: str  # connect | closed | retries
    peer: str | None
    error: str | None
    layer: str | None  # e.g. "the NET/Socket transport (...)"; None when the trail does not say
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "peer": self.peer,
            "error": self.error,
            "layer": self.layer,
            "lines": list(self.lines),
        }


@dataclass
class NcclReport:
    """The verdict; :meth:`to_dict` gives the JSON of ``hpcserve nccl --json``."""

    nccl_version: str | None = None
    nodes: int | None = None
    ranks: int | None = None
    cross_node: CrossNode = field(default_factory=CrossNode)
    intra_node: list[str] = field(default_factory=list)
    verdict: str = "unknown"  # optimal | degraded | single-node | selected | failed | unknown
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # beyond the fixed fields
    found: bool = False  # any NCCL line at all
    causes: list[Cause] = field(default_factory=list)
    per_node: list[NodeSummary] = field(default_factory=list)
    connections: dict[str, int] = field(default_factory=dict)  # detail -> distinct lines
    selected_network: Selection | None = None
    failure: Failure | None = None

    @property
    def exit_code(self) -> int:
        """0 optimal or single node, 1 degraded or failed, 3 nothing conclusive found (no NCCL
        lines, or a network selected but not yet seen carrying traffic)."""
        return {"optimal": 0, "single-node": 0, "degraded": 1, "failed": 1}.get(self.verdict, 3)

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
            "selected_network": self.selected_network.to_dict() if self.selected_network else None,
            "failure": self.failure.to_dict() if self.failure else None,
        }
