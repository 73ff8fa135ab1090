"""``hpcserve doctor``: the checks in order (here, the login node, a probe job), each one
line, stopping where the rest would mean nothing (:func:`hpcserve.doctor.checks.run_steps`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcserve.cluster.executor import Executor
from hpcserve.doctor import local, login, probe_checks
from hpcserve.doctor.checks import Check, DoctorReport, Step, failed, run_steps
from hpcserve.doctor.probe import ProbeJob, ProbeResult, probe_launcher
from hpcserve.errors import HpcserveError
from hpcserve.sites.schema import Site

DEFAULT_NODES = 2
DEFAULT_TIMEOUT_S = 900.0  # the probe job's queue wait and run together

ExecutorFor = Callable[[Site], Executor]
Progress = Callable[[str], None]


def _executor_for(site: Site) -> Executor:
    from hpcserve.cluster.connect import executor_for

    return executor_for(site)


@dataclass
class Session:
    """What one doctor run has found so far (each step reads what earlier steps left)."""

    site_ref: str | Site
    nodes: int = DEFAULT_NODES
    model: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect: ExecutorFor | None = None  # None: the site's own (cluster.connect.executor_for)
    progress: Progress | None = None
    probe_options: dict[str, Any] = field(default_factory=dict)
    site: Site | None = None
    executor: Executor | None = None
    probe: ProbeResult | None = None
    probe_job: ProbeJob | None = field(default=None, repr=False)

    def need_site(self) -> Site:
        assert self.site is not None
        return self.site

    def need_executor(self) -> Executor:
        if self.executor is None:
            self.executor = (self.connect or _executor_for)(self.need_site())
        return self.executor

    def need_probe(self) -> ProbeResult:
        assert self.probe is not None
        return self.probe

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()


def _guard(name: str, fn: Callable[[], Check]) -> Callable[[], Check]:
    """A step that turns an hpcserve error into its failed check (never a traceback)."""

    def run() -> Check:
        try:
            return fn()
        except HpcserveError as e:
            return failed(name, str(e), "the command could not run there: see the error")

    return run


def _site_step(s: Session) -> Check:
    s.site, check = local.site_check(s.site_ref)
    return check


def _probe_step(s: Session) -> Check:
    s.probe_job = ProbeJob(
        s.need_site(),
        s.need_executor(),
        nodes=s.nodes,
        model=s.model,
        timeout_s=s.timeout_s,
        progress=s.progress,
        **s.probe_options,
    )
    s.probe = s.probe_job.run()
    return probe_checks.probe_job_check(s.probe)


def _here_steps(s: Session) -> list[Step]:
    return [
        Step(local.SITE, lambda: _site_step(s)),
        Step(local.VALUES, lambda: local.values_check(s.need_site()), (local.SITE,)),
        Step(local.HOST_KEY, lambda: local.host_key_check(s.need_site()), (local.VALUES,)),
    ]


def _login_steps(s: Session) -> list[Step]:
    site, ex = s.need_site, s.need_executor
    on_login = (local.HOST_KEY, login.LOGIN)
    return [
        Step(login.LOGIN, lambda: login.login_check(ex()), (local.HOST_KEY,)),
        Step(login.SCHEDULER, lambda: login.scheduler_check(ex()), on_login),
        Step(
            login.TEST_ONLY,
            lambda: login.test_only_check(ex(), probe_launcher(site(), s.nodes, s.model)),
            (login.SCHEDULER,),
        ),
        Step(login.MODULES, lambda: login.modules_check(site(), ex()), on_login),
        Step(login.RUNTIME, lambda: login.runtime_check(site(), ex()), (login.MODULES,)),
        Step(login.HF_CACHE, lambda: login.hf_cache_check(site(), ex(), s.model), on_login),
    ]


def _probe_steps(s: Session) -> list[Step]:
    site, res = s.need_site, s.need_probe
    job = (probe_checks.PROBE_JOB,)
    pc = probe_checks
    return [
        Step(pc.PROBE_JOB, lambda: _probe_step(s), (login.TEST_ONLY, login.RUNTIME)),
        Step(pc.NODES, lambda: pc.nodes_check(site(), res()), job),
        Step(pc.INFINIBAND, lambda: pc.infiniband_check(res()), job),
        Step(pc.INTERFACE, lambda: pc.interface_check(site(), res()), job),
        Step(pc.TMP, lambda: pc.tmp_check(res()), job),
        Step(pc.SHARED, lambda: pc.shared_check(res()), job),
        Step(pc.TCP, lambda: pc.tcp_check(site(), res()), (pc.SHARED,)),
        Step(pc.COLLECTIVE, lambda: pc.collective_check(res()), (pc.TCP,)),
        Step(pc.NCCL, lambda: pc.nccl_check(res()), job),
        Step(pc.BANDWIDTH, lambda: pc.bandwidth_check(res()), (pc.COLLECTIVE,)),
    ]


def steps(s: Session) -> list[Step]:
    """Every step in order, each guarded so an error is its own failed check."""
    out = [*_here_steps(s), *_login_steps(s), *_probe_steps(s)]
    return [Step(st.name, _guard(st.name, st.run), st.needs) for st in out]


def doctor(
    site: str | Site,
    *,
    nodes: int = DEFAULT_NODES,
    model: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_check: Callable[[Check], None] | None = None,
    progress: Progress | None = None,
    connect: ExecutorFor | None = None,
    clock: Callable[[], float] = time.monotonic,
    probe_options: dict[str, Any] | None = None,
) -> DoctorReport:
    """Run every check for ``site``; the probe job is cancelled on any way out, Ctrl-C
    included. ``on_check`` sees each check as it is known, ``progress`` the probe's state;
    ``connect`` gives the executor for a site, ``probe_options`` :class:`ProbeJob`'s timing
    (``poll_s``, ``sleep``, ``clock``), for tests."""
    start = clock()
    s = Session(site, nodes, model, timeout_s, connect, progress, probe_options or {})
    try:
        checks = run_steps(steps(s), on_check)
    finally:
        s.close()
    name = s.site.name if s.site else str(site)
    alloc = s.probe.allocation if s.probe else None
    return DoctorReport(site=name, checks=checks, wall_s=clock() - start, allocation=alloc)
