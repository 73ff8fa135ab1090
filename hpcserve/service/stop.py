"""Why a job ended by itself: the ``hpcserve: stopped: ...`` line its launcher wrote (pure).

The batch step ends a job on purpose in two cases and says so in its log (``slurm-JOB.out``)
before it stops ``srun``: ``--idle-stop`` (``stopped: idle for 10m (nothing running or waiting
since 12:00:01)``) and a handover to the next job of a chain (``stopped: handed over to job
102 (drained in 12 s)``). ``status`` shows that line instead of a failure: stopping ``srun``
may make it report its tasks as terminated, which is what was asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcserve.jobs.state import JobStatus

STOP_LINE = re.compile(r"^hpcserve: stopped: ((idle|handed over)\b.*)$")
CAUSES = {"idle": "idle", "handed over": "handover"}
# Failures that stopping srun itself produces; anything else found in the logs still counts.
CONSEQUENCES = ("process_died", "job_failed")


@dataclass(frozen=True)
class StopCause:
    """The launcher's own reason for ending the job."""

    cause: str  # idle | handover
    detail: str  # the line after "hpcserve: ", e.g. "stopped: idle for 1m (...)"


def stop_cause(lines: Iterable[str]) -> StopCause | None:
    """The last stop line of a batch log, or None."""
    found: StopCause | None = None
    for line in lines:
        m = STOP_LINE.match(line.strip())
        if m:
            found = StopCause(CAUSES[m.group(2)], "stopped: " + m.group(1))
    return found


def apply_stop(st: JobStatus, cause: StopCause | None) -> JobStatus:
    """``st`` with the launcher's stop cause, for a job that left the queue: ended, not failed
    (unless the logs name a failure other than the stop's own consequences)."""
    if cause is None or st.state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
        return st
    if st.failure is not None and st.failure.cause not in CONSEQUENCES:
        return st
    return replace(st, phase="ended", failure=None, detail=cause.detail)
