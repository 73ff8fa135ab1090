"""The job client: one handle per submitted job, under the CLI and as the Python API.

A :class:`Job` holds the job's record, its site, one executor to that site (one SSH connection
for the handle's lifetime on remote sites), the scheduler adapter and the registry. It is opened
from a job reference (``Job.open("qwen")``) or returned by :func:`submit`. Every job command is
a method here: ``status``, ``logs``, ``wait``, ``cancel``, ``forget``,
``scan_nccl`` and the API ``endpoint``.
:class:`Jobs` is the registry's side: open a handle, list, the all-jobs status table (one
``squeue`` per site), ``prune``. Both take what they reach the cluster with as parameters (a
site opener, the wait timing, the /health probe), so tests give fakes there.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcserve.cluster.executor import Executor
from hpcserve.cluster.slurm import SchedJob, Slurm
from hpcserve.errors import HpcserveError, RemoteError, Unreachable, UsageError
from hpcserve.jobs.record import JobRecord, node_log_name
from hpcserve.jobs.registry import Registry
from hpcserve.jobs.state import JobStatus
from hpcserve.jobs.watch import (
    JobWatch,
    LogFollower,
    Outage,
    WaitResult,
    WaitTiming,
    nccl_log_files,
    wait_ready,
)
from hpcserve.sites.schema import Site

if TYPE_CHECKING:
    from hpcserve.launch.request import LaunchRequest
    from hpcserve.launch.submit import Submission
    from hpcserve.nccl.scanner import NcclScanner
    from hpcserve.net.api import Client
    from hpcserve.service.remote import Service
    from hpcserve.service.view import ChainView

SiteOpener = Callable[[str], tuple[Site, Executor]]
"""Site name -> (the site, an executor that reaches its scheduler)."""

Probe = Callable[[str], bool]
"""Base URL -> whether ``/health`` answers there."""


def open_site(name: str) -> tuple[Site, Executor]:
    """The site config named ``name`` and an executor for it (SSH when not submitting here)."""
    from hpcserve.cluster.connect import executor_for
    from hpcserve.sites.loader import load_site

    site = load_site(name)
    return site, executor_for(site)


def nccl_summary(watch: JobWatch) -> str | None:
    """The NCCL transport verdict from the job's NCCL debug files, or None."""
    from hpcserve.nccl.status import nccl_summary_for_status

    try:
        lines = watch.nccl_lines()
        if not lines:
            return None
        summary = nccl_summary_for_status(lines)
        return str(summary) if summary else None
    except Exception:  # the summary is a nicety: never fail status for it
        return None


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """Where a job's OpenAI-compatible API answers from here, and its key."""

    base_url: str  # http://host:port (without /v1)
    api_key: str | None
    model: str  # the name to send as "model" (the served name, else the model)

    @property
    def openai_base_url(self) -> str:
        """The base URL OpenAI clients want (``.../v1``)."""
        return self.base_url + "/v1"


@dataclass
class LogSource:
    """One log of a job: a label for people and a follower that remembers the offset."""

    label: str
    follower: LogFollower

    @property
    def path(self) -> str:
        return self.follower.path


@dataclass(frozen=True)
class LogRead:
    """What one log held when first read (``empty``: nothing written to it yet)."""

    source: LogSource
    lines: list[str]
    empty: bool


@dataclass(frozen=True)
class LogLine:
    """A new line while following; ``final`` for the last lines read after the job ended."""

    source: LogSource
    text: str
    final: bool = False


@dataclass(frozen=True)
class LogPause:
    """Following goes on, but the cluster stopped answering (``reason``); no line is lost: the
    next read starts where the last one ended."""

    reason: str


@dataclass
class _Following:
    """What :meth:`Job.follow_logs` keeps between rounds."""

    outage: Outage
    next_sched: float = 0.0


@dataclass(frozen=True)
class LogEnd:
    """Following stopped: the job left the queue in ``state``."""

    state: str


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel`` did: ``cancelled`` False when the job was not running."""

    cancelled: bool
    state: str
    message: str


@dataclass(frozen=True)
class StatusRow:
    """One job of the all-jobs table: its status, or why its site could not be asked."""

    record: JobRecord
    status: JobStatus | None
    error: str | None = None


@dataclass
class PruneResult:
    """Old jobs forgotten, how many were old, and the sites that could not be asked."""

    removed: list[JobRecord]
    old: int
    unreachable: list[str] = field(default_factory=list)


# -- the handle --------------------------------------------------------------------------------
class Job:
    """One submitted job: record, site, executor, scheduler and registry (see the module)."""

    def __init__(
        self,
        record: JobRecord,
        site: Site,
        executor: Executor,
        *,
        registry: Registry | None = None,
        scheduler: Slurm | None = None,
        timing: WaitTiming | None = None,
        probe: Probe | None = None,
        service: Service | None = None,
    ) -> None:
        self.record = record  # a service's: its current job's (the registry keeps the service's)
        self.service = service
        self.site = site
        self.executor = executor
        self.registry = registry if registry is not None else Registry()
        self.scheduler = scheduler if scheduler is not None else Slurm(executor)
        self.timing = timing
        self._probe = probe
        self._watch: JobWatch | None = None
        self.submission: Submission | None = None  # what submit did, on a handle it returned

    @classmethod
    def open(
        cls,
        ref: str,
        registry: Registry | None = None,
        *,
        connect: SiteOpener = open_site,
        timing: WaitTiming | None = None,
    ) -> Job:
        """The job ``ref`` names (its name, id or SITE:ID in the registry)."""
        return Jobs(registry, connect=connect, timing=timing).open(ref)

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close what the handle opened: an ad-hoc tunnel, the HTTP session, the connection."""
        try:
            if self._watch is not None:
                self._watch.close()
        finally:
            self.executor.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts -------------------------------------------------------------------------------
    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def label(self) -> str:
        """``name (id)`` or the id; a service's ``name (service, job id)``."""
        rec = self.record
        if self.service is not None:
            return f"{self.service.name} (service, job {rec.job_id})"
        return f"{rec.name} ({rec.job_id})" if rec.name else rec.job_id

    @property
    def watch(self) -> JobWatch:
        """The job's watcher (log offsets, phase, failures kept between polls)."""
        if self._watch is None:
            self._watch = JobWatch(
                self.record,
                self.executor,
                slurm=self.scheduler,
                site=self.site,
                on_record_change=self._save,
                probe=self._probe,
            )
        return self._watch

    def _save(self, rec: JobRecord) -> None:
        if self.service is not None:
            return  # a job of a chain: its facts are in the service directory
        with contextlib.suppress(UsageError):  # forgotten meanwhile
            self.registry.update(rec)

    def scheduler_state(self) -> SchedJob:
        """What the scheduler says about the job now."""
        return self.scheduler.query([self.job_id])[self.job_id]

    # -- status ------------------------------------------------------------------------------
    def status(self) -> JobStatus:
        """One full look: scheduler, endpoint, logs, /health, and the NCCL verdict (a
        service's: of the job it serves with now, or the next one)."""
        self._refocus()
        st = self.watch.refresh()
        if self.watch.sched.state not in ("PENDING", "UNKNOWN"):
            st.nccl = nccl_summary(self.watch)
        return self._with_stop_cause(st)

    def _refocus(self) -> None:
        """A service's handle follows its chain: onto the job to look at now."""
        if self.service is None:
            return
        focus = self.service.focus()
        if focus != self.record.job_id:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            self.record = self.service.job_record(focus)

    def _with_stop_cause(self, st: JobStatus) -> JobStatus:
        """A job that left the queue and whose launcher ended it on purpose (``--idle-stop``,
        a handover): "stopped: ..." from its batch log (:mod:`hpcserve.service.stop`)."""
        if self.watch.sched.active:
            return st
        from hpcserve.service.stop import apply_stop, stop_cause

        try:
            lines = self.executor.read_text(self.record.batch_log()).splitlines()
        except (OSError, RemoteError):
            return st
        return apply_stop(st, stop_cause(lines))

    def chain(self) -> ChainView | None:
        """A service's chain (jobs, current and next, handovers, gaps); None for a plain job."""
        return self.service.view() if self.service is not None else None

    def statuses(
        self, interval_s: float | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> Iterator[JobStatus]:
        """:meth:`status` once, or every ``interval_s`` (at least 0.5 s) until the job ends."""
        while True:
            st = self.status()
            yield st
            if interval_s is None or st.finished:
                return
            sleep(max(interval_s, 0.5))

    # -- wait --------------------------------------------------------------------------------
    def wait(
        self,
        timeout_s: float | None = None,
        *,
        on_change: Callable[[JobStatus], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> WaitResult:
        """Until the API answers, the job fails or ends, or ``timeout_s`` passes.

        ``on_change`` gets each status whose phase (or detail) changed: progress lines. A
        service's wait follows its chain: when the job it watched ended unready and the chain
        went on to another job, it waits for that one, in what is left of ``timeout_s``.
        """
        if timeout_s is not None and timeout_s <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        deadline = None if timeout_s is None else clock() + timeout_s
        while True:
            left = None if deadline is None else max(deadline - clock(), 0.001)
            res = wait_ready(
                self.watch, left, timing=self.timing, on_change=on_change, clock=clock, sleep=sleep
            )
            if res.status.ready or res.timed_out or not self._moved_on():
                return res

    def _moved_on(self) -> bool:
        """Whether a service's chain went on to another job than the one watched."""
        watched = self.record.job_id
        self._refocus()
        return self.record.job_id != watched

    # -- logs --------------------------------------------------------------------------------
    def log_sources(self, node: int | None = None, batch: bool = False) -> list[LogSource]:
        """The logs to show: node ``node`` only, the batch step only, or every node and then
        the batch step."""
        rec = self.record
        count = max(rec.nodes, 1)
        if node is not None and not 0 <= node < count:
            raise UsageError(f"--node must be between 0 and {count - 1} for job {self.label}")
        if batch:
            return [LogSource("batch step", LogFollower(rec.batch_log()))]
        ranks = [node] if node is not None else list(range(count))
        sources = [
            LogSource(
                f"{node_log_name(k)} ({'head' if k == 0 else f'worker {k}'})",
                LogFollower(rec.node_log(k)),
            )
            for k in ranks
        ]
        if node is None:
            sources.append(LogSource("batch step", LogFollower(rec.batch_log())))
        return sources

    def read_logs(self, sources: list[LogSource], tail: int | None = None) -> list[LogRead]:
        """What each log holds now (its last ``tail`` lines when given)."""
        reads = []
        for src in sources:
            lines = src.follower.read_new(self.executor)
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            empty = not lines and src.follower.offset == 0
            reads.append(LogRead(src, lines, empty))
        return reads

    def follow_logs(
        self,
        sources: list[LogSource],
        *,
        poll_s: float = 0.5,
        sched_every_s: float = 5.0,
        outage_retry_s: float = 5.0,
        outage_max_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[LogLine | LogPause | LogEnd]:
        """New lines of ``sources`` as they are written, until the job leaves the queue.

        When the cluster stops answering (an sshd restart, a lost login node) it says so once
        (:class:`LogPause`) and tries again every ``outage_retry_s``, for up to
        ``outage_max_s``; the followers keep their offsets, so nothing is shown twice or lost.
        """
        state = _Following(Outage(outage_max_s))
        while True:
            try:
                end = yield from self._follow_round(sources, state, sched_every_s, clock)
            except Unreachable as e:
                if state.outage.since is None:
                    yield LogPause(str(e))
                state.outage.hit(e, clock())
                sleep(outage_retry_s)
                continue
            if end is not None:
                yield end
                return
            state.outage.clear()
            sleep(poll_s)

    def _follow_round(
        self,
        sources: list[LogSource],
        state: _Following,
        sched_every_s: float,
        clock: Callable[[], float],
    ) -> Generator[LogLine, None, LogEnd | None]:
        """One look at every log, and at the scheduler when due: the end, or None."""
        for src in sources:
            for text in src.follower.read_new(self.executor):
                yield LogLine(src, text)
        now = clock()
        if now < state.next_sched:
            return None
        sched = self.scheduler_state()
        if sched.active:
            state.next_sched = now + sched_every_s
            return None
        yield from self._last_lines(sources)
        return LogEnd(sched.state)

    def _last_lines(self, sources: list[LogSource]) -> Iterator[LogLine]:
        """The lines written before the end, and a last line cut without a newline."""
        for src in sources:
            fol = src.follower
            for text in fol.read_new(self.executor) + ([fol.partial] if fol.partial else []):
                yield LogLine(src, text, final=True)

    # -- NCCL --------------------------------------------------------------------------------
    def scan_nccl(self, scanner: NcclScanner) -> None:
        """Feed ``scanner`` the job's NCCL debug files and node logs where the job ran, each
        ``node-K`` file as source ``node-K``; HpcserveError when there is none yet."""
        rec = self.record
        files = nccl_log_files(self.executor, rec.job_dir, node_logs=True)
        if not files:
            raise HpcserveError(
                f"job {rec.job_id}: no NCCL or node logs yet in {rec.job_dir} "
                "(has it started? were NCCL communicators created?)"
            )
        for path in files:
            m = re.search(r"node-(\d+)", posixpath.basename(path))
            scanner.begin_source(f"node-{m.group(1)}" if m else None)
            scanner.feed_chunk(self.executor.read_text(path).encode("utf-8", "replace") + b"\n")

    # -- cancel / forget ---------------------------------------------------------------------
    def cancel(
        self,
        timeout_s: float = 60.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> CancelResult:
        """scancel the job, then confirm it left the queue and has no steps left; a service's:
        every job of its chain and nothing else."""
        if self.service is not None:
            return self._cancel_service(timeout_s, sleep, clock)
        before = self.scheduler_state()
        if not before.active:
            return CancelResult(
                False,
                before.state,
                f"job {self.label} is not running ({before.state}); nothing to cancel",
            )
        self.scheduler.cancel(self.job_id)
        state, message = self._confirm_gone(timeout_s, sleep, clock)
        return CancelResult(True, state, message)

    def _cancel_service(
        self, timeout_s: float, sleep: Callable[[float], None], clock: Callable[[], float]
    ) -> CancelResult:
        assert self.service is not None
        start = clock()
        cancelled, states = self.service.cancel(timeout_s, sleep=sleep, clock=clock)
        name = self.service.name
        if not cancelled:
            return CancelResult(
                False, "ended", f"service {name} has no job queued or running; its chain is stopped"
            )
        ends = ", ".join(f"{j} {states[j].state}" for j in cancelled)
        took = clock() - start
        return CancelResult(
            True,
            "CANCELLED",
            f"cancelled service {name} in {took:.1f} s: every job of its chain left the queue "
            f"({ends}); the chain is stopped",
        )

    def _confirm_gone(
        self, timeout_s: float, sleep: Callable[[float], None], clock: Callable[[], float]
    ) -> tuple[str, str]:
        """Wait until the job is out of the queue and has no steps; say what was confirmed."""
        start = clock()
        gap = 0.5
        sched = self.scheduler_state()
        while True:
            steps = self.scheduler.job_steps(self.job_id)
            if not sched.active and not steps:
                break
            if clock() - start > timeout_s:
                raise RemoteError(
                    f"scancel sent, but after {timeout_s:g} s job {self.job_id} is still "
                    f"{sched.state}" + (f" with steps {', '.join(steps)}" if steps else "")
                )
            sleep(gap)
            gap = min(gap * 1.5, 3.0)
            sched = self.scheduler_state()
        facts = [
            f"scheduler state {sched.state}",
            "no job steps left (the srun-started vLLM "
            "processes on every node were ended by slurmstepd)",
        ]
        mark = self._cancel_mark()
        if mark:
            facts.append(f"batch log ends with: {mark}")
        took = clock() - start
        return sched.state, f"cancelled job {self.label} in {took:.1f} s: " + "; ".join(facts)

    def _cancel_mark(self) -> str | None:
        """slurmstepd's ``CANCELLED AT`` line at the end of the batch log, if there."""
        try:
            tail = self.executor.read_text(self.record.batch_log()).splitlines()[-5:]
        except (OSError, RemoteError):
            return None
        return next((ln.strip() for ln in reversed(tail) if "CANCELLED AT" in ln), None)

    def forget(self) -> JobRecord:
        """Remove the job (a service: the service) from the registry with its local secrets
        (the job itself is left)."""
        rec = self.service.record if self.service is not None else self.record
        return self.registry.remove(f"{rec.site}:{rec.job_id}")

    # -- the API -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def endpoint(self, *, quiet: bool = True) -> Iterator[Endpoint]:
        """The job's API from here, for the block: a running ``hpcserve tunnel``, the head
        itself when it answers, else a tunnel through the login node held until the block ends.
        """
        from hpcserve.net.endpoint import api_base, api_key

        if self.record.head_addr is None or self.record.api_port is None:
            self.watch.poll_endpoint()  # endpoint.json may be there by now
        rec = self.record
        with api_base(rec, self.site, quiet=quiet) as base:
            yield Endpoint(base, api_key(rec), rec.served_model_name or rec.model)

    @contextlib.contextmanager
    def api(self, *, timeout_s: float = 600.0) -> Iterator[Client]:
        """An OpenAI-compatible client (:class:`hpcserve.net.api.Client`) for the block."""
        from hpcserve.net.api import Client

        phase = self.record.extra.get("phase")
        with self.endpoint() as ep:
            client = Client(
                ep.base_url, ep.api_key, timeout=timeout_s, phase=str(phase) if phase else None
            )
            try:
                yield client
            finally:
                client.session.close()

    def query(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 256, **params: Any
    ) -> str:
        """One chat completion of ``prompt``: the answer's text."""
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        with self.api() as client:
            answer = client.chat(messages, max_tokens=max_tokens, **params)
        choices = answer.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "")


# -- the registry's side -----------------------------------------------------------------------
class Jobs:
    """The jobs of one registry, and how their sites are reached."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        connect: SiteOpener = open_site,
        timing: WaitTiming | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.registry = registry if registry is not None else Registry()
        self.connect = connect
        self.timing = timing
        self.probe = probe

    def open(self, ref: str) -> Job:
        """A handle on the job ``ref`` names; UsageError when the registry has none."""
        rec = self.registry.get(ref)
        site, executor = self.connect(rec.site)
        try:
            service, rec = _service_of(rec, executor)
        except BaseException:
            executor.close()
            raise
        return Job(
            rec,
            site,
            executor,
            registry=self.registry,
            timing=self.timing,
            probe=self.probe,
            service=service,
        )

    def records(self) -> list[JobRecord]:
        """Every registered job, oldest first (no scheduler call)."""
        return self.registry.list()

    @contextlib.contextmanager
    def _site(self, name: str) -> Iterator[tuple[Site, Executor]]:
        site, executor = self.connect(name)
        try:
            yield site, executor
        finally:
            executor.close()

    def status_all(self) -> list[StatusRow]:
        """Every job's status, with one scheduler query per site (a row's ``error`` says why a
        site could not be asked)."""
        rows: list[StatusRow] = []
        for site_name, recs in _by_site(self.records()).items():
            rows.extend(self._site_rows(site_name, recs))
        return rows

    def _site_rows(self, site_name: str, recs: list[JobRecord]) -> list[StatusRow]:
        try:
            with self._site(site_name) as (site, executor):
                slurm = Slurm(executor)
                states = slurm.query([r.job_id for r in recs])  # one squeue for the site
                return [
                    StatusRow(r, self._table_status(r, site, executor, slurm, states[r.job_id]))
                    for r in recs
                ]
        except HpcserveError as e:
            return [StatusRow(r, None, str(e)) for r in recs]

    def _table_status(
        self, rec: JobRecord, site: Site, executor: Executor, slurm: Slurm, sched: SchedJob
    ) -> JobStatus:
        service, current = _service_of(rec, executor, slurm)
        job = Job(
            current,
            site,
            executor,
            registry=self.registry,
            scheduler=slurm,
            probe=self.probe,
            service=service,
        )
        w = job.watch
        w.sched = sched if current is rec else slurm.query([current.job_id])[current.job_id]
        if w.sched.state in ("RUNNING", "COMPLETING") or w.sched.ended:
            w.poll_endpoint()
            w.poll_logs()
        return job._with_stop_cause(w.status())

    def prune(self, older_than_days: float) -> PruneResult:
        """Forget jobs submitted more than ``older_than_days`` ago that left the queue; jobs of
        sites that cannot be asked are kept."""
        if older_than_days < 0:
            raise UsageError("--older-than must be 0 or more days")
        cutoff = time.time() - older_than_days * 86400
        old = [r for r in self.records() if r.submitted_at < cutoff]
        live: set[tuple[str, str]] = set()
        unreachable: list[str] = []
        for site_name, recs in _by_site(old).items():
            try:
                with self._site(site_name) as (_site, executor):
                    states = Slurm(executor).query([r.job_id for r in recs])
            except HpcserveError as e:
                unreachable.append(f"{site_name}: {e}")
                live.update((r.site, r.job_id) for r in recs)  # unknown: keep
                continue
            live.update((r.site, r.job_id) for r in recs if states[r.job_id].active)
        removed = self.registry.prune(
            older_than_days * 86400, keep=lambda r: (r.site, r.job_id) in live
        )
        return PruneResult(removed, len(old), unreachable)


def _service_of(
    rec: JobRecord, executor: Executor, scheduler: Slurm | None = None
) -> tuple[Service | None, JobRecord]:
    """``(service, its current job's record)`` for a service's record, else ``(None, rec)``."""
    from hpcserve.service.remote import Service, service_info

    if service_info(rec) is None:
        return None, rec
    service = Service(rec, executor, scheduler if scheduler is not None else Slurm(executor))
    return service, service.job_record(service.focus())


def _by_site(records: list[JobRecord]) -> dict[str, list[JobRecord]]:
    by_site: dict[str, list[JobRecord]] = {}
    for r in records:
        by_site.setdefault(r.site, []).append(r)
    return by_site


# -- submitting --------------------------------------------------------------------------------
def submit(
    site: Site,
    request: LaunchRequest,
    *,
    name: str | None = None,
    api_key: bool = True,
    executor: Executor | None = None,
    timing: WaitTiming | None = None,
) -> Job:
    """Submit ``request`` to ``site`` (:func:`hpcserve.launch.submit.submit`); the new job's
    handle, which keeps the executor (closed with the handle)."""
    from hpcserve.cluster.connect import executor_for
    from hpcserve.launch.submit import submit as submit_launcher

    ex = executor if executor is not None else executor_for(site)
    try:
        sub = submit_launcher(site, request, ex, api_key=api_key, name=name)
        assert sub.job_id is not None  # not a dry run
        registry = Registry()
        rec = registry.get(f"{site.name}:{sub.job_id}")
        if request.keep_alive:
            rec = _start_service(rec, request, ex, registry, sub.warnings)
        service, current = _service_of(rec, ex)
    except BaseException:
        ex.close()
        raise
    job = Job(current, site, ex, registry=registry, timing=timing, service=service)
    job.submission = sub
    return job


def _start_service(
    rec: JobRecord, request: LaunchRequest, ex: Executor, registry: Registry, warnings: list[str]
) -> JobRecord:
    """Register the new job as a service and write the first lines of its chain log."""
    from hpcserve.service.remote import mark_service, start_chain

    service_dir = rec.job_dir
    rec = mark_service(rec, service_dir)
    registry.update(rec)
    try:
        start_chain(
            ex, service_dir, name=rec.name or rec.job_id, job_id=rec.job_id, until=request.until
        )
    except RemoteError as e:  # the chain still runs; its first lead time is the first guess
        warnings.append(f"service {rec.name}: {e}")
    return rec
