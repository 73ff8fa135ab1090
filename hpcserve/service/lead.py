"""When a job of a chain submits its successor: the lead time, from the chain's own history.

The lead time is how long before its predecessor's end a successor must be submitted to be
serving in time. It is measured: each job's submit-to-ready time (queue wait plus model load)
is in the chain log (:func:`hpcserve.service.chain.fold`). With no measurement yet the first
guess is :data:`FIRST_GUESS_S`, at most half the time limit, so a short job still serves a while
before it hands over. The launcher's ``hpcserve_lead_time`` computes the same rule in awk from
the same log; ``tests/test_service_launcher.py`` runs both on the same logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FIRST_GUESS_S = 600  # no measurement yet: 10 minutes (a cold model load on a busy filesystem)
LEAD_FACTOR = 1.25  # the slowest recent submit-to-ready time, plus a quarter ...
LEAD_MARGIN_S = 30  # ... plus this
RECENT = 5  # the measurements that count: the last RECENT jobs that became ready
DRAIN_GRACE_S = 60  # how long an old job waits for its requests in flight after a handover
SWITCH_S = 10  # after a handover, the old job takes no drain decision before this (clients move)
POLL_S = 5  # the batch step's monitor looks this often (successor, handover, idle)
RETRY_S = 60  # a successor submission that failed is retried after this


def lead_time_s(samples: Sequence[float], time_limit_s: int | None) -> int:
    """Seconds before the end at which the successor is due: the slowest of the last
    :data:`RECENT` submit-to-ready ``samples`` times :data:`LEAD_FACTOR`, rounded up, plus
    :data:`LEAD_MARGIN_S`; with none :data:`FIRST_GUESS_S`, at most half of ``time_limit_s``."""
    recent = [int(s) for s in samples[-RECENT:]]
    if not recent:
        if time_limit_s:
            return min(FIRST_GUESS_S, time_limit_s // 2)
        return FIRST_GUESS_S
    return math.ceil(max(recent) * LEAD_FACTOR) + LEAD_MARGIN_S


def submit_due(time_left_s: int, lead_s: int, grace_s: int = DRAIN_GRACE_S) -> bool:
    """Whether a job with ``time_left_s`` left submits its successor now: the successor has
    ``lead_s`` to get ready and the old job ``grace_s`` to drain before the limit."""
    return time_left_s <= lead_s + grace_s
