"""A sweep's results: the table, the recommendation, the raw JSON and the plot.

The recommendation is the highest output throughput (tokens/s) of any layout at any
concurrency whose run meets every bound of the SLO (:mod:`hpcserve.sweep.slo`) with no failed
request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcserve.net.bench import Metrics
from hpcserve.sweep.run import LayoutResult
from hpcserve.sweep.slo import Bound, misses


@dataclass(frozen=True)
class Pick:
    """The recommended layout and the run (concurrency) that earned it."""

    result: LayoutResult
    run: Metrics


def inside(bounds: tuple[Bound, ...], m: Metrics) -> bool:
    """Whether run ``m`` meets the SLO: every bound, and no request failed."""
    return m.failed == 0 and m.completed > 0 and not misses(bounds, m.stats_ms)


def recommend(results: Sequence[LayoutResult], bounds: tuple[Bound, ...]) -> Pick | None:
    """The highest output throughput inside the SLO (None: no run is)."""
    best: Pick | None = None
    for r in results:
        for m in r.runs:
            if inside(bounds, m) and (
                best is None or m.output_throughput > best.run.output_throughput
            ):
                best = Pick(r, m)
    return best


def _ms(m: Metrics, key: str) -> str:
    value = m.stats_ms.get(key)
    return "-" if value is None else f"{value:.1f}"


def table_lines(results: Sequence[LayoutResult], bounds: tuple[Bound, ...]) -> list[str]:
    """One row per layout and concurrency; a layout that did not start is one row with why."""
    head = (
        f"{'layout':<24} {'status':<7} {'conc':>4} {'TTFT p50':>9} {'TTFT p95':>9} "
        f"{'TPOT p50':>9} {'TPOT p95':>9} {'out tok/s':>10}  SLO"
    )
    out = [head, "-" * len(head)]
    for r in results:
        if not r.ok or not r.runs:
            out.append(f"{r.layout:<24} {'failed':<7} {'-':>4}  {r.reason}")
            continue
        for m in r.runs:
            slo = (
                "met"
                if inside(bounds, m)
                else "missed: "
                + "; ".join(misses(bounds, m.stats_ms) or [f"{m.failed} request(s) failed"])
            )
            out.append(
                f"{r.layout:<24} {'fits':<7} {m.max_concurrency or 0:>4} "
                f"{_ms(m, 'p50_ttft_ms'):>9} {_ms(m, 'p95_ttft_ms'):>9} "
                f"{_ms(m, 'p50_tpot_ms'):>9} {_ms(m, 'p95_tpot_ms'):>9} "
                f"{m.output_throughput:>10.1f}  {slo}"
            )
    return out


def verdict(pick: Pick | None, bounds: tuple[Bound, ...]) -> str:
    slo = ", ".join(b.text() for b in bounds) or "no SLO"
    if pick is None:
        return f"recommendation: none: no layout met {slo} at any concurrency"
    m = pick.run
    return (
        f"recommendation: {pick.result.layout} ({pick.result.label}): "
        f"{m.output_throughput:.1f} output tok/s at concurrency {m.max_concurrency} within {slo}"
    )


def to_dict(
    results: Sequence[LayoutResult],
    bounds: tuple[Bound, ...],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The raw results: every layout's runs under ``vllm bench serve``'s keys."""
    pick = recommend(results, bounds)
    return {
        **meta,
        "slo": [b.text() for b in bounds],
        "layouts": [r.to_dict() for r in results],
        "recommended": None
        if pick is None
        else {"label": pick.result.label, "max_concurrency": pick.run.max_concurrency},
    }


def to_json(
    results: Sequence[LayoutResult], bounds: tuple[Bound, ...], meta: dict[str, Any]
) -> str:
    return json.dumps(to_dict(results, bounds, meta), indent=2)


def plot(results: Sequence[LayoutResult], path: str) -> str | None:
    """Output tok/s and TTFT p95 against concurrency, one line per layout; None when
    matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        if not r.runs:
            continue
        xs = [m.max_concurrency or 0 for m in r.runs]
        a.plot(xs, [m.output_throughput for m in r.runs], marker="o", label=r.layout)
        b.plot(xs, [m.stats_ms.get("p95_ttft_ms", 0.0) for m in r.runs], marker="o", label=r.layout)
    a.set_xlabel("concurrency")
    a.set_ylabel("output tok/s")
    b.set_xlabel("concurrency")
    b.set_ylabel("TTFT p95 (ms)")
    a.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
