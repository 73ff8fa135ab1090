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
