"""The load of a vLLM server from its ``/metrics`` text: requests running and waiting (pure).

vLLM registers the gauges ``vllm:num_requests_running`` ("Number of requests in model execution
batches") and ``vllm:num_requests_waiting`` ("Number of requests waiting to be processed") in
``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``), one sample per engine, labelled
``model_name`` and ``engine``, and the counter ``vllm:request_success`` (exposed as
``vllm:request_success_total``, one sample per finish reason, aborts included). ``/metrics``
needs no API key: vLLM's ``AuthenticationMiddleware``
(``vllm/entrypoints/serve/middleware/authenticate.py``) guards only paths under
``GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")``. The launcher's ``hpcserve_load``
reads the same samples with awk; ``tests/test_service_launcher.py`` checks both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
SERVED = "vllm:request_success_total"


@dataclass(frozen=True)
class Load:
    """Requests running and waiting and requests finished so far, summed over engines."""

    running: int
    waiting: int
    served: int = 0

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0


def _sample(line: str) -> tuple[str, float] | None:
    """``name{labels} value [timestamp]`` -> (name, value); None for comments and others."""
    if not line or line.startswith("#"):
        return None
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name, rest = line[:brace], line[line.rfind("}") + 1 :]
    else:
        name, rest = line[:space], line[space:]
    try:
        return name, float(rest.split()[0])
    except (IndexError, ValueError):
        return None


def parse_load(text: str) -> Load | None:
    """The load in ``/metrics`` text, or None when neither gauge is there."""
    totals = {RUNNING: 0.0, WAITING: 0.0, SERVED: 0.0}
    seen = False
    for line in text.splitlines():
        sample = _sample(line.strip())
        if sample is None:
            continue
        name, value = sample
        if name in totals:
            totals[name] += value
            seen = seen or name != SERVED
    if not seen:
        return None
    return Load(int(totals[RUNNING]), int(totals[WAITING]), int(totals[SERVED]))


@dataclass(frozen=True)
class DrainStep:
    """What an old job does after one look at its load while draining."""

    done: bool  # exit now
    reason: str  # "drained", "grace", or "" while waiting


def drain_step(
    load: Load | None, waited_s: float, idle_looks: int, *, switch_s: float, grace_s: float
) -> tuple[DrainStep, int]:
    """One look while draining: ``waited_s`` since the handover, ``idle_looks`` idle looks in a
    row before this one. Done when two looks in a row after ``switch_s`` saw nothing running
    or waiting (clients' tunnels have moved by then), or when ``grace_s`` has passed; a server
    that does not answer counts as idle (nothing can finish there). Returns the step and the
    new count of idle looks."""
    looks = idle_looks + 1 if load is None or load.idle else 0
    if waited_s >= grace_s:
        return DrainStep(True, "grace"), looks
    if waited_s >= switch_s and looks >= 2:
        return DrainStep(True, "drained"), looks
    return DrainStep(False, ""), looks


def idle_step(
    load: Load | None, before: Load | None, idle_since: float | None, now: float, idle_s: float
) -> tuple[bool, float | None]:
    """One ``--idle-stop`` look: ``(stop now, idle since)``. A look is idle when nothing runs or
    waits and no request finished since the look ``before`` (a short request between two looks
    counts as use); a server that does not answer is loading, not idle."""
    quiet = load is not None and load.idle and (before is None or load.served == before.served)
    if not quiet:
        return False, None
    since = now if idle_since is None else idle_since
    return now - since >= idle_s, since
