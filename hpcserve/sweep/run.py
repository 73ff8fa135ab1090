"""This machine's side of a sweep: for each layout in turn, wait until its API answers (or it
fails), benchmark it with :mod:`hpcserve.net.bench` through the tunnel code, and stop it.

Each layout is watched as a job of its own (:class:`hpcserve.jobs.watch.JobWatch` on a
:class:`~hpcserve.jobs.record.JobRecord` whose directory is the layout's): the sweep job's
scheduler state, the layout's ``endpoint.json``, its node logs (phases, and failure causes from
:mod:`hpcserve.jobs.failures`) and ``/health`` through :func:`hpcserve.jobs.watch.reach_url`;
the benchmark reaches the head through :func:`hpcserve.net.endpoint.api_base` (a tunnel when
the head does not answer from here). A layout that never answers is a row with its cause.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from hpcserve.cluster.executor import Executor
from hpcserve.cluster.slurm import Slurm
from hpcserve.errors import HpcserveError, RemoteError
from hpcserve.jobs.failures import Failure
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.watch import JobWatch
from hpcserve.net.bench import BenchSpec, Metrics, prepare, runs
from hpcserve.sweep.job import EXIT, STOP, LayoutJob, SweepJob
from hpcserve.sweep.slo import PERCENTILES

SCHED_EVERY_S = 5.0
POLL_S = 1.0


@dataclass
class LayoutResult:
    """What one layout did: ``ok`` (benchmarked) or not, why not, and one run per
    concurrency."""

    label: str
    layout: str  # Layout.describe()
    dp: int
    tp: int
    pp: int
    ep: bool
    ok: bool
    reason: str = ""
    failure: Failure | None = None
    runs: list[Metrics] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # first error of each run that had any

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "layout": self.layout,
            "dp": self.dp,
            "tp": self.tp,
            "pp": self.pp,
            "enable_expert_parallel": self.ep,
            "ok": self.ok,
            "reason": self.reason,
            "failure": self.failure.to_dict() if self.failure else None,
            "runs": [m.to_dict() for m in self.runs],
            "errors": self.errors,
        }


class Bench(Protocol):
    """Benchmark the API at ``base_url``: one :class:`Metrics` per concurrency of ``spec``."""

    def __call__(
        self, base_url: str, api_key: str | None, spec: BenchSpec
    ) -> tuple[list[Metrics], list[str]]: ...


def bench_api(
    base_url: str, api_key: str | None, spec: BenchSpec
) -> tuple[list[Metrics], list[str]]:
    """``hpcserve bench``'s runs (:func:`hpcserve.net.bench.runs`) at each concurrency, with
    the percentiles the SLO can name; (metrics per concurrency, first error of each run)."""
    from hpcserve.net.api import Client

    client = Client(base_url, api_key)
    results, errors = [], []
    for run in runs(client, prepare(client, spec), spec, PERCENTILES):
        results.append(run.metrics)
        if run.errors:
            conc = run.metrics.max_concurrency
            errors.append(f"concurrency {conc}: {len(run.errors)} failed; first: {run.errors[0]}")
    return results, errors


def layout_record(job: SweepJob, lj: LayoutJob, job_id: str, remote: bool) -> JobRecord:
    """The record a layout is watched through: the sweep job's id, the layout's directory."""
    return JobRecord(
        job_id=job_id,
        site=job.site.name,
        model=job.model,
        nodes=job.nodes,
        tp=lj.layout.tp,
        pp=lj.layout.pp,
        job_dir=lj.job_dir,
        submitted_at=time.time(),
        remote=remote,
        name=job.name,
        extra={"sweep_layout": lj.label, "dp": lj.layout.dp},
    )


def _exit_status(executor: Executor, path: str) -> str | None:
    """The layout's exit status once the sweep job has written it."""
    try:
        if not executor.exists(path):
            return None
        return executor.read_text(path).strip() or "?"
    except (OSError, RemoteError):
        return None


def _why(watch: JobWatch, what: str) -> str:
    """``what``, with the first failure cause the logs show."""
    watch.poll_logs()
    f = watch.failure()
    return f"{f.title}: {f.line}" if f is not None else what


class _LayoutWait:
    """One layout's wait: the scheduler every :data:`SCHED_EVERY_S`, files and /health often."""

    def __init__(self, watch: JobWatch, exit_path: str, clock: Callable[[], float]) -> None:
        self.watch = watch
        self.exit_path = exit_path
        self.clock = clock
        self.next_sched = clock()

    def step(self) -> str | None:
        """None while waiting; ``""`` when the API answers; else why it never will."""
        w = self.watch
        if self.clock() >= self.next_sched:
            w.poll_scheduler()
            self.next_sched = self.clock() + SCHED_EVERY_S
            if w.sched.ended:
                return _why(w, f"the sweep job ended ({w.sched.state}) before this layout answered")
        if w.sched.state == "RUNNING":
            w.poll_logs()
            if w.poll_endpoint() and w.poll_health():
                return ""
        rc = _exit_status(w.executor, self.exit_path)
        if rc is not None:
            return _why(w, f"its launcher exited with status {rc} before the API answered")
        return None


def wait_layout(
    watch: JobWatch,
    exit_path: str,
    timeout_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Wait until the layout's API answers (``""``) or why it does not (a failure cause, its
    launcher's exit, the job's end, or ``timeout_s``)."""
    deadline = clock() + timeout_s
    waiter = _LayoutWait(watch, exit_path, clock)
    while True:
        why = waiter.step()
        if why is not None:
            return why
        if clock() >= deadline:
            return _why(watch, f"the API did not answer within {timeout_s:g} s")
        sleep(POLL_S)


def _failed_under_load(watch: JobWatch, result: LayoutResult) -> None:
    """A layout whose requests failed and whose logs now show a failure (vLLM's CPU build
    answers /health with PP=2, then its engine dies on the first request) is a failed row with
    that cause; its runs are kept."""
    if result.ok and result.runs and all(m.failed == 0 for m in result.runs):
        return
    watch.poll_logs()
    f = watch.failure()
    if f is not None:
        result.ok, result.failure = False, f
        result.reason = f"{f.title}: {f.line}"


@dataclass
class SweepRun:
    """The seams of a sweep run (tests replace them): how a layout is watched and benched."""

    job: SweepJob
    job_id: str
    executor: Executor
    spec: BenchSpec
    bench: Bench = bench_api
    probe: Callable[[str], bool] | None = None
    slurm: Slurm | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    on_layout: Callable[[LayoutJob, str], None] | None = None  # progress: (layout, what)

    def _note(self, lj: LayoutJob, what: str) -> None:
        if self.on_layout is not None:
            self.on_layout(lj, what)

    def _bench(self, rec: JobRecord, result: LayoutResult) -> None:
        from hpcserve.net.endpoint import api_base

        try:
            with api_base(rec, self.job.site, quiet=True) as url:
                result.runs, result.errors = self.bench(url, self.job.api_key, self.spec)
        except HpcserveError as e:
            result.ok, result.reason = False, f"the benchmark failed: {e}"

    def measure(self, lj: LayoutJob) -> LayoutResult:
        """Wait for one layout, benchmark it, write its STOP file."""
        lay = lj.layout
        result = LayoutResult(lj.label, lay.describe(), lay.dp, lay.tp, lay.pp, lay.ep, ok=False)
        rec = layout_record(self.job, lj, self.job_id, self.executor.remote)
        watch = JobWatch(rec, self.executor, slurm=self.slurm, site=self.job.site, probe=self.probe)
        try:
            self._note(lj, "waiting for its API")
            why = wait_layout(
                watch, lj.path(EXIT), self.job.layout_timeout, clock=self.clock, sleep=self.sleep
            )
            if why:
                result.reason, result.failure = why, watch.failure()
            else:
                self._note(lj, "benchmarking")
                result.ok = True
                self._bench(rec, result)
                _failed_under_load(watch, result)
        finally:
            watch.close()
            self.stop(lj)
        return result

    def stop(self, lj: LayoutJob) -> None:
        """Tell the sweep job this layout is done (it stops it and starts the next)."""
        with contextlib.suppress(OSError, RemoteError):  # else the sweep job's timeout does
            self.executor.write_text(lj.path(STOP), "stop\n", 0o600)

    def results(self) -> Iterator[LayoutResult]:
        """Every layout in turn."""
        for lj in self.job.layouts:
            yield self.measure(lj)
