"""Watching one job: scheduler polls, growing logs, endpoint.json and /health (thin adapter).

A :class:`JobWatch` gathers the inputs of :func:`hpcserve.jobs.state.combine` through one
executor (so over SSH it is one connection for the command's lifetime) and keeps what it read
(log offsets, phase, failures) between polls. :func:`wait_ready` is the loop behind
``hpcserve wait``: /health every ``health_every`` seconds once the job runs, squeue every few
seconds, backing off while the job is pending.
"""

from __future__ import annotations

import contextlib
import fnmatch
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from hpcserve.cluster.connect import expand_home
from hpcserve.cluster.executor import Executor
from hpcserve.cluster.slurm import SchedJob, Slurm
from hpcserve.errors import RemoteError, Unreachable
from hpcserve.jobs.failures import Failure, rank, scan
from hpcserve.jobs.phases import PhaseInfo, merge, read_phase
from hpcserve.jobs.record import ENDPOINT, NCCL_DIR, JobRecord, node_log_name
from hpcserve.jobs.state import JobStatus, apply_endpoint, combine, default_url, parse_endpoint
from hpcserve.sites.schema import Site

if TYPE_CHECKING:
    import requests


@dataclass
class LogFollower:
    """Reads only what was appended to one log since the last call (offset in bytes)."""

    path: str
    offset: int = 0
    partial: str = ""

    def read_new(self, executor: Executor) -> list[str]:
        """Complete new lines (a line cut by the read is kept for the next call)."""
        chunk = executor.read_from(self.path, self.offset)
        if chunk.start < self.offset:  # truncated or replaced: start again
            self.offset, self.partial = chunk.start, ""
        if not chunk.text:
            return []
        self.offset = chunk.start + len(chunk.text.encode("utf-8", errors="surrogateescape"))
        text = self.partial + chunk.text
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.partial = lines.pop()  # "" when the chunk ended with a newline
        return [ln for ln in lines if ln.strip()]


@dataclass
class NodeLog:
    rank: int
    follower: LogFollower
    progress: PhaseInfo = field(default_factory=PhaseInfo)
    failures: dict[str, Failure] = field(default_factory=dict)


def reach_url(rec: JobRecord, site: Site | None, stack: contextlib.ExitStack) -> str | None:
    """A base URL at which this machine reaches the job's API, kept open in ``stack``.

    :func:`hpcserve.net.endpoint.api_base` gives the job's background tunnel, the head directly
    when it answers, or a tunnel through the login node held until ``stack`` closes. None when
    none can be opened yet (then the API counts as not ready from here).
    """
    from hpcserve.errors import HpcserveError
    from hpcserve.net.endpoint import api_base

    try:
        return str(stack.enter_context(api_base(rec, site, quiet=True)))
    except (HpcserveError, OSError):
        return None


class HealthProbe:
    """GET BASE/health with a short timeout, one keep-alive HTTP session."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self._session: requests.Session | None = None

    def __call__(self, base_url: str) -> bool:
        import requests  # lazy: only wait/status pay for it

        if self._session is None:
            self._session = requests.Session()
        try:
            r = self._session.get(base_url.rstrip("/") + "/health", timeout=self.timeout_s)
        except requests.RequestException:
            return False
        return bool(r.status_code == 200)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class JobWatch:
    """Everything known about one job, refreshed piece by piece."""

    def __init__(
        self,
        rec: JobRecord,
        executor: Executor,
        *,
        slurm: Slurm | None = None,
        site: Site | None = None,
        on_record_change: Callable[[JobRecord], None] | None = None,
        probe: Callable[[str], bool] | None = None,
    ) -> None:
        self.rec = rec
        self.executor = executor
        self.slurm = slurm or Slurm(executor)
        self.site = site
        self.on_record_change = on_record_change
        self.probe = probe or HealthProbe()
        self.sched = SchedJob(rec.job_id, "UNKNOWN", source="none")
        self.nodes = [
            NodeLog(k, LogFollower(rec.node_log(k))) for k in range(max(int(rec.nodes), 1))
        ]
        self.batch = LogFollower(rec.batch_log())
        self.batch_failures: dict[str, Failure] = {}
        self.health: bool | None = None
        self.url: str | None = None  # shown to the user: the head's own address
        self._reach = contextlib.ExitStack()  # what keeps probe_url reachable (a tunnel)
        self.probe_url: str | None = None  # where /health is asked from here
        self._endpoint_done = rec.head_addr is not None and rec.api_port is not None

    # -- pieces --------------------------------------------------------------------------------
    def poll_scheduler(self) -> SchedJob:
        prev = self.sched
        self.sched = self.slurm.query([self.rec.job_id])[self.rec.job_id]
        if self.sched.ended and self.sched.exit_code is None:
            if prev.ended and prev.exit_code is not None:
                self.sched.exit_code = prev.exit_code
            else:  # squeue has no exit code: ask scontrol once
                detail = self.slurm.scontrol(self.rec.job_id)
                if detail is not None:
                    self.sched.exit_code = detail.exit_code
        return self.sched

    def poll_logs(self) -> None:
        for node in self.nodes:
            new = node.follower.read_new(self.executor)
            if new:
                read_phase(new, node.progress)
                _keep_first(node.failures, scan(new, node_log_name(node.rank)))
        new = self.batch.read_new(self.executor)
        if new:
            _keep_first(self.batch_failures, scan(new, posixpath.basename(self.batch.path)))

    def poll_endpoint(self) -> bool:
        """Read endpoint.json once it exists; update the record (and registry) with it."""
        if self._endpoint_done:
            return True
        try:
            text = self.executor.read_text(self.rec.path(ENDPOINT))
        except (OSError, RemoteError):
            return False
        ep = parse_endpoint(text)
        if ep is None:
            return False
        if apply_endpoint(self.rec, ep) and self.on_record_change is not None:
            self.on_record_change(self.rec)
        self._endpoint_done = True
        return True

    def poll_health(self) -> bool:
        if self.url is None:
            self.url = default_url(self.rec)
        if self.probe_url is None:
            self.probe_url = reach_url(self.rec, self.site, self._reach)
        if self.probe_url is None:
            self.health = False
            return False
        self.health = self.probe(self.probe_url)
        return self.health

    def close(self) -> None:
        """Close what reaching the API opened (an ad-hoc tunnel, the HTTP session)."""
        self._reach.close()
        close = getattr(self.probe, "close", None)
        if close is not None:
            close()

    # -- views ---------------------------------------------------------------------------------
    def progress(self) -> PhaseInfo:
        return merge(n.progress for n in self.nodes)

    def failure(self) -> Failure | None:
        best: Failure | None = None
        for found in [*(n.failures for n in self.nodes), self.batch_failures]:
            for f in found.values():
                if best is None or rank(f) < rank(best):
                    best = f
        return best

    def status(self, nccl: str | None = None) -> JobStatus:
        return combine(
            self.rec,
            self.sched,
            progress=self.progress(),
            failure=self.failure(),
            health=self.health,
            url=self.url,
            nccl=nccl,
        )

    def refresh(self, *, health: bool = True) -> JobStatus:
        """One full poll: scheduler, endpoint, logs, and /health when the job runs."""
        self.poll_scheduler()
        if self.sched.state in ("RUNNING", "COMPLETING"):
            self.poll_endpoint()
        self.poll_logs()
        if health and self.sched.state == "RUNNING" and self._endpoint_done:
            self.poll_health()
        return self.status()

    def nccl_lines(self, max_files: int = 8) -> list[str]:
        """Lines of the first ``max_files`` NCCL debug files of this job (for the NCCL
        helper's summary)."""
        lines: list[str] = []
        for path in nccl_log_files(self.executor, self.rec.job_dir)[:max_files]:
            with contextlib.suppress(OSError, RemoteError):
                lines.extend(self.executor.read_text(path).splitlines())
        return lines


def nccl_log_files(executor: Executor, job_dir: str, *, node_logs: bool = False) -> list[str]:
    """A job's NCCL debug files (``JOBDIR/nccl/*.log``, one per process), then with
    ``node_logs`` its vLLM logs (``JOBDIR/node-*.log``); each group sorted, a missing
    directory listing nothing. A ``~`` job directory is taken against the executor's home."""
    if job_dir == "~" or job_dir.startswith("~/"):
        job_dir = expand_home(job_dir, executor.home())
    wanted = [(posixpath.join(job_dir, NCCL_DIR), "*.log")]
    if node_logs:
        wanted.append((job_dir, "node-*.log"))
    return [path for folder, pattern in wanted for path in _files_in(executor, folder, pattern)]


def _files_in(executor: Executor, folder: str, pattern: str) -> list[str]:
    """The files directly in ``folder`` whose names match ``pattern``, sorted."""
    res = executor.run(
        ["find", folder, "-maxdepth", "1", "-type", "f", "-name", pattern], timeout=30
    )
    if not res.ok:
        return []
    folder = folder.rstrip("/")
    return sorted(
        p
        for p in res.stdout.splitlines()
        if posixpath.dirname(p) == folder and fnmatch.fnmatchcase(posixpath.basename(p), pattern)
    )


def _keep_first(into: dict[str, Failure], found: list[Failure]) -> None:
    for f in found:
        into.setdefault(f.cause, f)


@dataclass
class WaitTiming:
    """How often `wait` looks: /health fast, the scheduler slowly (backing off while pending)."""

    health_every: float = 0.25
    logs_every: float = 1.0
    sched_running_every: float = 5.0
    sched_pending_first: float = 2.0
    sched_pending_max: float = 30.0
    outage_retry_every: float = 5.0  # while the cluster does not answer (Unreachable)
    outage_max: float = 600.0  # then give up, with the last reason


class Outage:
    """The cluster not answering (:class:`hpcserve.errors.Unreachable`): since when, and why.

    ``wait`` and ``logs --follow`` keep polling through an outage: an sshd or slurmctld
    restart, a login node gone for a while. One that lasts longer than ``max_s`` is reported.
    """

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.since: float | None = None
        self.reason = ""

    def hit(self, e: Unreachable, now: float) -> None:
        """Note a failed look at ``now``; Unreachable once the outage is longer than max_s."""
        if self.since is None:
            self.since = now
        self.reason = str(e)
        if now - self.since > self.max_s:
            raise Unreachable(
                f"the cluster did not answer for {now - self.since:.0f} s: {e}"
            ) from e

    def clear(self) -> None:
        self.since = None

    def note(self) -> str:
        """One line for the user while it lasts."""
        return f"the cluster is not answering ({self.reason}); still trying"


@dataclass
class WaitResult:
    status: JobStatus
    timed_out: bool = False
    sched_calls: int = 0
    health_calls: int = 0


_PENDING_LIKE = ("PENDING", "CONFIGURING", "REQUEUED", "UNKNOWN")


class _Waiter:
    """The state of one :func:`wait_ready` loop: when to ask the scheduler and the logs next."""

    def __init__(self, watch: JobWatch, timing: WaitTiming, start: float) -> None:
        self.watch = watch
        self.t = timing
        self.next_sched = start
        self.next_logs = start
        self.pending_gap = timing.sched_pending_first
        self.sched_calls = 0
        self.health_calls = 0
        self.outage = Outage(timing.outage_max)

    def look(self, now: float) -> tuple[JobStatus, bool, bool]:
        """One round: (status, running, answered). Through an outage the status keeps what
        was known and says the cluster is not answering (``answered`` False)."""
        try:
            self.poll_scheduler(now)
            running = self.poll_job(now)
        except Unreachable as e:
            self.outage.hit(e, now)
            return replace(self.watch.status(), detail=self.outage.note()), False, False
        self.outage.clear()
        return self.watch.status(), running, True

    def poll_scheduler(self, now: float) -> None:
        """squeue when due: backing off while pending, every ``sched_running_every`` after."""
        if now < self.next_sched:
            return
        self.watch.poll_scheduler()
        self.sched_calls += 1
        if self.watch.sched.state in _PENDING_LIKE:
            self.next_sched = now + self.pending_gap
            self.pending_gap = min(self.pending_gap * 2, self.t.sched_pending_max)
        else:
            self.pending_gap = self.t.sched_pending_first
            self.next_sched = now + self.t.sched_running_every

    def poll_job(self, now: float) -> bool:
        """Logs, endpoint.json and /health as the scheduler state calls for; True if running."""
        w = self.watch
        running = w.sched.state == "RUNNING"
        if not w.sched.active:
            w.poll_logs()  # ended (or unknown): the logs say why
        if running and now >= self.next_logs:
            w.poll_endpoint()
            w.poll_logs()
            self.next_logs = now + self.t.logs_every
        if running and w.poll_endpoint():
            w.poll_health()
            self.health_calls += 1
        return running

    def nap(self, now: float, running: bool, deadline: float | None, answered: bool) -> float:
        """How long to sleep before the next look."""
        nap = self.t.health_every if running else min(self.next_sched - now, 1.0)
        if not answered:
            nap = self.t.outage_retry_every
        if deadline is not None:
            nap = min(nap, deadline - now)
        return max(nap, 0.0)

    def result(self, status: JobStatus, timed_out: bool) -> WaitResult:
        return WaitResult(status, timed_out, self.sched_calls, self.health_calls)


def wait_ready(
    watch: JobWatch,
    timeout_s: float | None,
    *,
    timing: WaitTiming | None = None,
    on_change: Callable[[JobStatus], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitResult:
    """Poll until the API answers, the job fails/ends, or ``timeout_s`` passes.

    ``on_change`` gets the status each time its phase or the first part of its detail changes.
    While the cluster does not answer (:class:`Outage`) it keeps trying, every
    ``timing.outage_retry_every`` seconds, for up to ``timing.outage_max``.
    """
    start = clock()
    deadline = None if timeout_s is None else start + timeout_s
    waiter = _Waiter(watch, timing or WaitTiming(), start)
    last_shown: tuple[str, str] | None = None
    while True:
        status, running, answered = waiter.look(clock())
        shown = (status.phase, status.detail.split(";")[0])
        if on_change is not None and shown != last_shown:
            on_change(status)
        last_shown = shown
        if answered and (status.ready or status.finished):
            return waiter.result(status, False)
        now = clock()
        if deadline is not None and now >= deadline:
            return waiter.result(status, True)
        sleep(waiter.nap(now, running, deadline, answered))
