"""bench/service_handover.py's summary: what a client saw of a service or a plain job."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "service_handover_t", REPO / "bench/service_handover.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


def test_silence_after_the_last_answer_counts() -> None:
    """A plain job that ended: every request after its last answer failed, and the longest time
    without an answer runs to the end of the client's window, not between answers only."""
    ok = [bench.Probe(t, t + 0.1, True) for t in (0.0, 0.5, 1.0)]
    failed = [bench.Probe(t, t + 0.25, False, "ConnectionError") for t in (1.5, 2.0, 9.85)]
    s = bench.summary(ok + failed)
    assert s["requests"] == 6 and s["failed"] == 3
    assert s["longest_without_answer_s"] == 9.0  # the last answer at 1.1, the window ends at 10.1
    assert s["first_errors"] == ["ConnectionError"]


def test_an_always_answering_service_is_silent_only_between_answers() -> None:
    probes = [bench.Probe(t / 2, t / 2 + 0.1, True) for t in range(10)]
    assert bench.summary(probes)["longest_without_answer_s"] == 0.5
