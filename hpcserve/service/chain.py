"""The chain log of a service and what it says: jobs, the current one, handovers, gaps (pure).

A service directory on the cluster holds ``chain.log``, one line per event, appended by the
launcher of each job (and by ``submit`` for the first job)::

    EPOCH EVENT JOB [KEY=VALUE ...]

    1764583200 service hpcserve name=qwen until=1765000000
    1764583201 submitted 101 by=user
    1764583230 started 101 restart=0 host=node1
    1764583290 ready 101 restart=0 addr=10.0.0.11 port=8012
    1764586000 submitted 102 by=101
    1764586070 ready 102 restart=0 addr=10.0.0.12 port=8034
    1764586071 draining 101 for=102
    1764586090 ended 101 cause=handover rc=0

Events: ``service`` (the chain was made), ``submitted``, ``started`` (``restart`` is
SLURM_RESTART_COUNT: above 0 after a requeue), ``ready`` (its API answers: it is the current
job from then on), ``draining`` (a successor took over), ``drained`` (none running or waiting,
or ``grace`` ran out), ``ended`` (``cause``: handover, idle, signal, exit), ``stopped`` (the
chain ends: ``cause`` idle or cancel), ``until`` (the chain reached ``--until``: no successor),
``submit-failed``. :func:`fold` turns the lines into a :class:`ChainState`; a line it cannot
read is skipped (a shared filesystem may interleave two appends).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

LOG = "chain.log"  # in the service directory
CURRENT = "current"  # "JOB ADDR PORT RESTART" of the job that serves, rewritten on each ready
STOP = "stop"  # exists once the chain is stopped (cancel, idle stop): no job submits another
JOBS_DIR = "jobs"  # SERVICE_DIR/jobs/JOB_ID: each job's own directory


@dataclass(frozen=True)
class Event:
    """One line of the chain log."""

    at: float
    kind: str
    job: str
    fields: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """The line as the launcher writes it."""
        extra = "".join(f" {k}={v}" for k, v in self.fields.items())
        return f"{int(self.at)} {self.kind} {self.job}{extra}"


def parse_line(line: str) -> Event | None:
    """One chain-log line, or None when it is not one."""
    words = line.split()
    if len(words) < 3 or not words[0].isdigit():
        return None
    fields = dict(w.split("=", 1) for w in words[3:] if "=" in w)
    return Event(float(words[0]), words[1], words[2], fields)


def parse_log(text: str) -> list[Event]:
    """The events of a chain log, in the order written."""
    return [e for e in map(parse_line, text.splitlines()) if e is not None]


def parse_current(text: str) -> tuple[str, str, int, int] | None:
    """The ``current`` file: ``(job, addr, port, restart)``, or None when absent or partial."""
    words = text.split()
    if len(words) != 4 or not (words[0] and words[2].isdigit() and words[3].isdigit()):
        return None
    return words[0], words[1], int(words[2]), int(words[3])


@dataclass
class ChainJob:
    """One job of the chain as the log tells it."""

    job_id: str
    submitted_at: float | None = None
    by: str | None = None  # the job that submitted it, or "user"
    started_at: float | None = None  # its last start
    restarts: int = 0  # SLURM_RESTART_COUNT at its last start
    ready_at: float | None = None  # its first ready after it was submitted
    last_ready_at: float | None = None
    addr: str | None = None
    port: int | None = None
    ended_at: float | None = None
    end_cause: str | None = None

    @property
    def ready_after_s(self) -> float | None:
        """Submit-to-ready seconds, the lead-time measurement (:mod:`hpcserve.service.lead`)."""
        if self.submitted_at is None or self.ready_at is None:
            return None
        return self.ready_at - self.submitted_at


@dataclass(frozen=True)
class Handover:
    """``to_job`` became ready at ``at`` and took over from ``from_job``."""

    from_job: str
    to_job: str
    at: float


@dataclass
class Gap:
    """A time without a serving job after the chain first served, and why."""

    start: float
    end: float | None
    cause: str
    job: str  # the job whose end (or requeue) opened it

    @property
    def open(self) -> bool:
        return self.end is None


@dataclass
class ChainState:
    """Everything the chain log says (see the module)."""

    name: str | None = None
    until: float | None = None
    jobs: dict[str, ChainJob] = field(default_factory=dict)  # in the order submitted
    current: str | None = None  # the job serving now (None: none yet, or in a gap)
    last_current: str | None = None  # the job that served last
    handovers: list[Handover] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    stopped: Event | None = None
    until_reached: bool = False
    notes: list[str] = field(default_factory=list)  # submit failures, in words
    submit_order: list[str] = field(default_factory=list)

    def samples(self) -> list[float]:
        """Submit-to-ready seconds of the jobs that became ready, in the order submitted."""
        jobs = [self.jobs[j] for j in self.submit_order]
        return [j.ready_after_s for j in jobs if j.ready_after_s is not None]

    @property
    def next_job(self) -> str | None:
        """The last job submitted that has not been ready yet and has not ended."""
        waiting = [
            j.job_id
            for j in self.jobs.values()
            if j.ready_at is None and j.ended_at is None and j.job_id != self.current
        ]
        return waiting[-1] if waiting else None

    @property
    def open_gap(self) -> Gap | None:
        return self.gaps[-1] if self.gaps and self.gaps[-1].open else None

    def job_ids(self) -> list[str]:
        """Every job of the chain, first submitted first."""
        return list(self.jobs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["next_job"] = self.next_job
        d["samples"] = self.samples()
        d["stopped"] = asdict(self.stopped) if self.stopped is not None else None
        return d


def _job(state: ChainState, job_id: str) -> ChainJob:
    if job_id not in state.jobs:
        state.jobs[job_id] = ChainJob(job_id)
    return state.jobs[job_id]


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _open_gap(state: ChainState, at: float, cause: str, job: str) -> None:
    if state.open_gap is None:
        state.gaps.append(Gap(at, None, cause, job))


def _on_service(state: ChainState, e: Event) -> None:
    state.name = e.fields.get("name")
    until = _int(e.fields.get("until"))
    state.until = float(until) if until else None


def _on_submitted(state: ChainState, e: Event) -> None:
    job = _job(state, e.job)
    if job.submitted_at is None:  # the first line counts, as in the launcher's awk
        job.submitted_at, job.by = e.at, e.fields.get("by")
        state.submit_order.append(e.job)


def _on_started(state: ChainState, e: Event) -> None:
    job = _job(state, e.job)
    job.started_at = e.at
    job.restarts = _int(e.fields.get("restart")) or 0
    if job.restarts and e.job in (state.current, state.last_current):
        gap = state.open_gap
        cause = f"job {e.job} was requeued (restart {job.restarts})"
        if gap is None and state.current == e.job:
            _open_gap(state, e.at, cause, e.job)
        elif gap is not None and gap.job == e.job:
            gap.cause = cause
        state.current = None
        job.ended_at = job.end_cause = None  # it runs again


def _on_ready(state: ChainState, e: Event) -> None:
    job = _job(state, e.job)
    if job.ready_at is None and job.submitted_at is not None:
        job.ready_at = e.at
    job.last_ready_at = e.at
    job.addr, job.port = e.fields.get("addr"), _int(e.fields.get("port"))
    before = state.current
    if before is not None and before != e.job:
        state.handovers.append(Handover(before, e.job, e.at))
    gap = state.open_gap
    if gap is not None:
        gap.end = e.at
    state.current = state.last_current = e.job


def _on_ended(state: ChainState, e: Event) -> None:
    job = _job(state, e.job)
    job.ended_at, job.end_cause = e.at, e.fields.get("cause")
    if state.current != e.job:
        return
    state.current = None
    if job.end_cause in ("idle", "cancel") or state.stopped is not None:
        return  # the chain was ended on purpose: not a gap
    following = state.next_job
    why = f"job {e.job} ended ({job.end_cause or 'unknown'})"
    why += f" before job {following} was ready" if following else " with no successor submitted"
    _open_gap(state, e.at, why, e.job)


def _on_stopped(state: ChainState, e: Event) -> None:
    if state.stopped is None:
        state.stopped = e


def _on_until(state: ChainState, e: Event) -> None:
    state.until_reached = True


def _on_submit_failed(state: ChainState, e: Event) -> None:
    error = e.fields.get("error", "").replace("_", " ")
    state.notes.append(f"job {e.job} could not submit its successor: {error}")


_HANDLERS = {
    "service": _on_service,
    "submitted": _on_submitted,
    "started": _on_started,
    "ready": _on_ready,
    "ended": _on_ended,
    "stopped": _on_stopped,
    "until": _on_until,
    "submit-failed": _on_submit_failed,
}


def fold(events: Iterable[Event]) -> ChainState:
    """The chain's state after ``events`` (unknown kinds, e.g. ``draining``, change nothing)."""
    state = ChainState()
    for e in events:
        handler = _HANDLERS.get(e.kind)
        if handler is not None:
            handler(state, e)
    return state
