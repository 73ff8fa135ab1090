"""One status for a job from the scheduler, the server's logs, endpoint.json and /health (pure).

``combine`` decides; the CLI (:mod:`hpcserve.cli.jobs`) gathers the inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from hpcserve.cluster.slurm import END_STATES, SchedJob, format_duration
from hpcserve.jobs.failures import RULES, Failure, rule
from hpcserve.jobs.phases import PHASE_LABELS, PhaseInfo
from hpcserve.jobs.record import JobRecord

# Why a job waits, in words (squeue/scontrol reason codes; the common ones).
PENDING_REASONS: dict[str, str] = {
    "Resources": "waiting for free nodes",
    "Priority": "other jobs have priority",
    "Dependency": "waiting for a job it depends on",
    "BeginTime": "its start time has not come",
    "QOSMaxJobsPerUserLimit": "you have as many jobs running as the QOS allows",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "BadConstraints": "no node satisfies its constraints: it will never start",
    "PartitionConfig": "the partition cannot run it as asked (size/time/account)",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "its --time is above the partition's limit",
    "JobHeldUser": "held by you (scontrol release JOB)",
    "JobHeldAdmin": "held by an administrator",
    "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority "
    "partitions": "the nodes it needs are down, drained or reserved",
}
HOPELESS_REASONS = ("BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig")

# Scheduler end states that are failures by themselves, and the rule that explains each.
STATE_CAUSES: dict[str, str] = {
    "TIMEOUT": "time_limit",
    "OUT_OF_MEMORY": "cpu_oom",
    "NODE_FAIL": "node_failure",
    "BOOT_FAIL": "node_failure",
    "DEADLINE": "time_limit",
}
_ORDER = {r.cause: i for i, r in enumerate(RULES)}
_WAITING_STATES = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED")


@dataclass
class JobStatus:
    """Everything `hpcserve status` shows about one job."""

    job_id: str
    site: str
    name: str | None
    model: str
    state: str  # the scheduler's (PENDING, RUNNING, ..., UNKNOWN)
    phase: str  # pending, starting, loading, compiling, kv_cache, cuda_graphs, api, ready, failed,
    # ended
    detail: str  # one line in words
    ready: bool = False
    url: str | None = None
    reason: str | None = None
    nodes: int | None = None
    nodelist: str | None = None
    time_left_s: int | None = None
    time_limit_s: int | None = None
    start_time: str | None = None
    failure: Failure | None = None
    progress: PhaseInfo | None = None
    health: bool | None = None
    nccl: str | None = None

    @property
    def finished(self) -> bool:
        """True when nothing will change any more (wait can stop)."""
        return self.phase in ("failed", "ended")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["finished"] = self.finished
        return d


def explain_reason(reason: str | None) -> str | None:
    if not reason:
        return None
    key = reason.strip("()").split(",")[0].strip()
    text = PENDING_REASONS.get(key) or PENDING_REASONS.get(reason)
    return f"{reason}: {text}" if text else reason


def parse_endpoint(text: str) -> dict[str, Any] | None:
    """endpoint.json as written by the launcher, or None if absent/partial."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not data.get("head_addr") or not data.get("api_port"):
        return None
    return data


def apply_endpoint(rec: JobRecord, endpoint: dict[str, Any]) -> bool:
    """Copy head address and ports into ``rec``; True if anything changed."""
    changed = False
    for key, conv in (
        ("head_addr", str),
        ("head_host", str),
        ("api_port", int),
        ("master_port", int),
    ):
        value = endpoint.get(key)
        if value is None:
            continue
        value = conv(value)
        if getattr(rec, key) != value:
            setattr(rec, key, value)
            changed = True
    return changed


def default_url(rec: JobRecord) -> str | None:
    if rec.head_addr and rec.api_port:
        return f"http://{rec.head_addr}:{rec.api_port}"
    return None


def _state_failure(state: str, sched: SchedJob) -> Failure | None:
    cause = STATE_CAUSES.get(state)
    if cause is None:  # FAILED etc.: the logs say why (else combine makes a generic one)
        return None
    r = rule(cause)
    line = f"SLURM state {state}" + (f" ({sched.reason})" if sched.reason else "")
    return Failure(cause, r.title, line, r.suggestion)


def _better(a: Failure | None, b: Failure | None) -> Failure | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _ORDER[a.cause] <= _ORDER[b.cause] else b


def combine(
    rec: JobRecord,
    sched: SchedJob,
    progress: PhaseInfo | None = None,
    failure: Failure | None = None,
    health: bool | None = None,
    url: str | None = None,
    nccl: str | None = None,
) -> JobStatus:
    """The job's status from what the scheduler, logs and /health say.

    ``failure`` is the log diagnosis (:func:`hpcserve.jobs.failures.diagnose`); ``health`` is True
    when /health answered 200, False when it was tried and failed, None when not tried.
    """
    state = sched.state
    st = JobStatus(
        job_id=rec.job_id,
        site=rec.site,
        name=rec.name,
        model=rec.model,
        state=state,
        phase="starting",
        detail="",
        reason=sched.reason,
        nodes=sched.nodes or rec.nodes,
        nodelist=sched.nodelist,
        time_left_s=sched.time_left_s,
        time_limit_s=sched.time_limit_s,
        start_time=sched.start_time,
        progress=progress,
        health=health,
        url=url or default_url(rec),
        nccl=nccl,
    )
    if state in _WAITING_STATES:
        _pending(st, sched)
        _requeued(st, failure)
    elif state in ("RUNNING", "COMPLETING") or (state == "UNKNOWN" and health):
        _running(st, progress, failure)
    elif state == "CANCELLED":
        _cancelled(st, sched, failure)
    elif state in END_STATES or state == "UNKNOWN":
        _ended(st, sched, failure)
    else:
        st.detail = state.lower()
    return st


def _pending(st: JobStatus, sched: SchedJob) -> None:
    """Waiting in the queue; failed when the reason says it can never start."""
    st.phase = "pending"
    why = explain_reason(sched.reason) or sched.state.lower()
    start = f"; expected start {sched.start_time}" if sched.start_time else ""
    st.detail = f"{PHASE_LABELS['pending']} ({why}{start})"
    if sched.reason and sched.reason.strip("()").split(",")[0] in HOPELESS_REASONS:
        st.phase = "failed"
        st.failure = Failure(
            "unschedulable",
            "the scheduler cannot ever start this job",
            f"PENDING, reason {sched.reason}",
            "cancel it and resubmit with options the partition allows "
            "(nodes, --time, constraint, account)",
        )


def _requeued(st: JobStatus, failure: Failure | None) -> None:
    """Back in the queue after a node failure (SLURM requeues a batch job whose node fails,
    JobRequeue=1 by default): say so and name the node; it runs again when it can."""
    if failure is None or failure.cause != "node_failure" or st.phase != "pending":
        return
    on = f" on {failure.host}" if failure.host else ""
    st.failure = failure
    st.detail = f"requeued after a node failure{on}; {st.detail}"


def _running(st: JobStatus, progress: PhaseInfo | None, failure: Failure | None) -> None:
    """Running: ready once /health answers, failed once the logs say so, else the log phase."""
    if st.health:
        st.phase, st.ready = "ready", True
        st.detail = f"ready at {st.url}" if st.url else "ready"
        compiled = progress.compile_summary() if progress is not None else None
        if compiled:
            st.detail += f"; {compiled}"
        return
    if failure is not None:
        st.phase, st.failure = "failed", failure
        st.detail = f"failed: {failure.title}"
        return
    info = progress or PhaseInfo()
    st.phase = info.phase
    st.detail = info.detail()
    if info.phase == "ready":  # the log says so, /health not (yet) reached
        st.detail = "server says ready; API not reached yet" + (f" at {st.url}" if st.url else "")
    if st.time_left_s is not None:
        st.detail += f"; {format_duration(st.time_left_s)} left"


def _cancelled(st: JobStatus, sched: SchedJob, failure: Failure | None) -> None:
    st.phase = "ended"
    st.detail = "cancelled" + (f" ({sched.reason})" if sched.reason else "")
    if failure is not None and _ORDER[failure.cause] < _ORDER["time_limit"]:
        st.failure = failure  # it had failed before someone cancelled it
        st.phase = "failed"
        st.detail = f"cancelled after failing: {failure.title}"


def _ended(st: JobStatus, sched: SchedJob, failure: Failure | None) -> None:
    """Ended (or forgotten by the scheduler): failed if the logs or the end state say so."""
    state = sched.state
    cause = _better(failure, _state_failure(state, sched))
    if cause is None and state not in ("COMPLETED", "UNKNOWN"):
        cause = Failure(
            "job_failed",
            f"the job ended {state}",
            f"SLURM state {state}" + (f", exit code {sched.exit_code}" if sched.exit_code else ""),
            "read the logs (`hpcserve logs JOB`) for the first error",
        )
    if cause is not None:
        st.phase, st.failure = "failed", cause
        st.detail = f"failed: {cause.title}"
    elif state == "UNKNOWN":
        st.phase = "ended"
        st.detail = (
            "the scheduler no longer knows this job (it ended a while ago and there is no "
            "accounting); the logs show no failure"
        )
    else:
        st.phase = "ended"
        st.detail = "the server exited (job COMPLETED)"
