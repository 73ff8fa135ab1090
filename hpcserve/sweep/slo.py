"""The service-level objective of ``hpcserve sweep --slo``: ``ttft_p95<=400ms,tpot_p95<=55ms``.

One bound per comma: a metric (``ttft``, ``tpot``, ``itl`` or ``e2el``, as ``vllm bench serve``
names them), ``_`` and a statistic (``p50``, ``p90``, ``p95``, ``p99``, ``mean``, ``median``),
``<=`` or ``<``, and a duration in ``ms`` or ``s``. Anything else is one UsageError line (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hpcserve.errors import UsageError

METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = ("p50", "p90", "p95", "p99", "mean", "median")
#: The percentiles the sweep asks the benchmark for (every ``pNN`` above).
PERCENTILES = (50.0, 90.0, 95.0, 99.0)

_BOUND = re.compile(r"^(?P<metric>[a-z0-9]+)_(?P<stat>[a-z0-9]+)\s*(?P<op><=|<)\s*"
                    r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s)$")  # fmt: skip
EXAMPLE = "ttft_p95<=400ms,tpot_p95<=55ms"


@dataclass(frozen=True)
class Bound:
    """One bound: ``metric``'s ``stat`` below ``limit_ms`` (``inclusive``: or equal)."""

    metric: str
    stat: str
    limit_ms: float
    inclusive: bool = True

    @property
    def key(self) -> str:
        """The key of the benchmark's metrics (``p95_ttft_ms``), as ``vllm bench serve``'s."""
        return f"{self.stat}_{self.metric}_ms"

    def met(self, stats_ms: Mapping[str, float]) -> bool:
        value = stats_ms.get(self.key)
        if value is None:
            return False
        return value <= self.limit_ms if self.inclusive else value < self.limit_ms

    def text(self) -> str:
        return f"{self.metric}_{self.stat}{'<=' if self.inclusive else '<'}{self.limit_ms:g}ms"


def _bound(part: str) -> Bound:
    m = _BOUND.match(part.strip())
    if m is None:
        raise UsageError(
            f"--slo {part.strip()!r}: expected METRIC_STAT<=VALUE(ms|s), e.g. {EXAMPLE}"
        )
    metric, stat = m["metric"], m["stat"]
    if metric not in METRICS:
        raise UsageError(f"--slo {part.strip()!r}: metric must be one of {', '.join(METRICS)}")
    if stat not in STATS:
        raise UsageError(f"--slo {part.strip()!r}: statistic must be one of {', '.join(STATS)}")
    value = float(m["value"]) * (1000.0 if m["unit"] == "s" else 1.0)
    return Bound(metric, stat, value, m["op"] == "<=")


def parse_slo(text: str | None) -> tuple[Bound, ...]:
    """The bounds of ``text`` (None or empty: no SLO, every run is inside it)."""
    if text is None or not text.strip():
        return ()
    return tuple(_bound(part) for part in text.split(","))


def misses(bounds: tuple[Bound, ...], stats_ms: Mapping[str, float]) -> list[str]:
    """The bounds ``stats_ms`` misses, as text with the measured value."""
    out = []
    for b in bounds:
        if not b.met(stats_ms):
            got = stats_ms.get(b.key)
            shown = "not measured" if got is None else f"{got:.1f}ms"
            out.append(f"{b.metric}_{b.stat} {shown} (SLO {b.text()})")
    return out
