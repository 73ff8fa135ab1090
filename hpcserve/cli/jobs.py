"""`hpcserve status | logs | wait | cancel | list`: the life of a submitted job.

Each command opens one executor per site (one SSH connection for the whole command on remote
sites) and talks to SLURM through :class:`hpcserve.cluster.slurm.Slurm`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import click

from hpcserve.cluster.executor import Executor, LocalExecutor
from hpcserve.cluster.slurm import SchedJob, Slurm, format_duration
from hpcserve.errors import HpcserveError, RemoteError, UsageError
from hpcserve.jobs.record import JobRecord, node_log_name
from hpcserve.jobs.registry import Registry
from hpcserve.jobs.state import JobStatus

# Tests replace this with a fake (site name -> (site or None, executor)).
SiteOpener = Callable[[JobRecord], tuple[Any, Executor]]
OPEN_SITE: SiteOpener | None = None

# Tests may set faster polling; None means the defaults of WaitTiming.
WAIT_TIMING: Any = None

EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def _optional_module(name: str) -> Any:
    """A module another part of hpcserve provides, or None while it does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None


def _open_site(rec: JobRecord) -> tuple[Any, Executor]:
    """The site config (None if the sites module is absent) and an executor for it."""
    if OPEN_SITE is not None:
        return OPEN_SITE(rec)
    sites_mod = _optional_module("hpcserve.sites.loader")
    site = sites_mod.load_site(rec.site) if sites_mod is not None else None
    cluster_mod = _optional_module("hpcserve.cluster.connect")
    if site is not None and cluster_mod is not None:
        return site, cluster_mod.executor_for(site)
    if rec.remote:
        raise HpcserveError(
            f"job {rec.job_id} was submitted over SSH to site {rec.site!r}, but hpcserve cannot "
            "open a connection to it here (site tools missing)"
        )
    return site, LocalExecutor()


@contextmanager
def _site_session(rec: JobRecord) -> Iterator[tuple[Any, Executor]]:
    site, ex = _open_site(rec)
    try:
        yield site, ex
    finally:
        ex.close()


def _registry() -> Registry:
    return Registry()


def _save(reg: Registry) -> Callable[[JobRecord], None]:
    def save(rec: JobRecord) -> None:
        with contextlib.suppress(UsageError):  # forgotten meanwhile
            reg.update(rec)

    return save


def _nccl_summary(watch: Any) -> str | None:
    try:
        from hpcserve.nccl.status import nccl_summary_for_status
    except ImportError:
        return None
    try:
        lines = watch.nccl_lines()
        if not lines:
            return None
        summary = nccl_summary_for_status(lines)
        return str(summary) if summary else None
    except Exception:  # the summary is a nicety: never fail status for it
        return None


def _label(rec: JobRecord) -> str:
    return f"{rec.name} ({rec.job_id})" if rec.name else rec.job_id


def _print_status(st: JobStatus, rec: JobRecord) -> None:
    click.echo(f"job {_label(rec)} on {rec.site}: {st.state} - {st.detail}")
    click.echo(f"  model:     {rec.model} (TP {rec.tp} x PP {rec.pp}, {rec.nodes} node(s))")
    if st.nodelist:
        click.echo(f"  nodes:     {st.nodelist}")
    if st.time_left_s is not None or st.time_limit_s is not None:
        click.echo(
            f"  time left: {format_duration(st.time_left_s)} of {format_duration(st.time_limit_s)}"
        )
    p = st.progress
    if p is not None and p.kv_cache_tokens is not None:
        conc = (
            f", max concurrency {p.max_concurrency:g}x at {p.max_model_len:,} tokens"
            if p.max_concurrency is not None and p.max_model_len is not None
            else ""
        )
        click.echo(f"  KV cache:  {p.kv_cache_tokens:,} tokens{conc}")
    if p is not None and p.vllm_version:
        click.echo(f"  vLLM:      {p.vllm_version}")
    if st.url:
        click.echo(f"  endpoint:  {st.url}" + (" (answering)" if st.ready else ""))
    if st.nccl:
        click.echo(f"  NCCL:      {st.nccl.removeprefix('NCCL: ')}")
    if st.failure is not None:
        f = st.failure
        where = f" [{f.source}]" if f.source else ""
        click.echo(f"  cause:     {f.title}" + (f" (node {f.node})" if f.node is not None else ""))
        click.echo(f"  line{where}: {f.line}")
        click.echo(f"  hint:      {f.suggestion}")


def _status_json(st: JobStatus, rec: JobRecord) -> dict[str, Any]:
    d = st.to_dict()
    d["record"] = rec.to_dict()
    return d


# -- status ------------------------------------------------------------------------------------
@click.command()
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Refresh every few seconds until the job ends.")
@click.option("--interval", default=3.0, show_default=True, help="Seconds between --watch polls.")
def status(job: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """Scheduler state and server phase of JOB (id or name), or a table of all your jobs."""
    reg = _registry()
    if job is None:
        _status_table(reg, as_json)
        return
    rec = reg.get(job)
    from hpcserve.jobs.watch import JobWatch

    with (
        _site_session(rec) as (site, ex),
        closing(JobWatch(rec, ex, site=site, on_record_change=_save(reg))) as w,
    ):
        last = None
        while True:
            st = w.refresh()
            if w.sched.state not in ("PENDING", "UNKNOWN"):
                st.nccl = _nccl_summary(w)
            if as_json:
                click.echo(json.dumps(_status_json(st, rec), indent=2, default=str))
            elif (st.state, st.detail) != last:
                if watch and last is not None:
                    click.echo(f"--- {time.strftime('%H:%M:%S')}")
                _print_status(st, rec)
                last = (st.state, st.detail)
            if not watch or st.finished:
                break
            time.sleep(max(interval, 0.5))
    if st.phase == "failed":
        sys.exit(EXIT_FAILED)


def _status_table(reg: Registry, as_json: bool) -> None:
    records = reg.list()
    if not records:
        if as_json:
            click.echo("[]")
        else:
            click.echo("no jobs in the registry (`hpcserve submit` adds them)")
        return
    from hpcserve.jobs.watch import JobWatch

    rows: list[tuple[JobRecord, JobStatus | None, str | None]] = []
    by_site: dict[str, list[JobRecord]] = {}
    for r in records:
        by_site.setdefault(r.site, []).append(r)
    for _site_name, recs in by_site.items():
        try:
            with _site_session(recs[0]) as (site, ex):
                slurm = Slurm(ex)
                states = slurm.query([r.job_id for r in recs])  # one squeue for the site
                for r in recs:
                    w = JobWatch(r, ex, slurm=slurm, site=site, on_record_change=_save(reg))
                    w.sched = states[r.job_id]
                    if w.sched.state in ("RUNNING", "COMPLETING") or w.sched.ended:
                        w.poll_endpoint()
                        w.poll_logs()
                    rows.append((r, w.status(), None))
        except HpcserveError as e:
            rows.extend((r, None, str(e)) for r in recs)
    if as_json:
        out = []
        for r, st, err in rows:
            out.append(
                _status_json(st, r) if st is not None else {"record": r.to_dict(), "error": err}
            )
        click.echo(json.dumps(out, indent=2, default=str))
        return
    header = ("JOB", "NAME", "SITE", "STATE", "PHASE", "LEFT", "MODEL")
    table = [header]
    notes: list[str] = []
    for r, st, err in rows:
        if st is None:
            table.append((r.job_id, r.name or "-", r.site, "?", "?", "-", r.model))
            notes.append(f"{r.site}: {err}")
            continue
        phase = st.phase + (f" ({st.failure.cause})" if st.failure is not None else "")
        table.append(
            (
                r.job_id,
                r.name or "-",
                r.site,
                st.state,
                phase,
                format_duration(st.time_left_s),
                r.model,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for n in dict.fromkeys(notes):
        click.echo(f"warning: {n}", err=True)


# -- logs --------------------------------------------------------------------------------------
@click.command()
@click.argument("job")
@click.option("--node", "node", type=int, default=None, help="Only node K (0 = head).")
@click.option("--batch", is_flag=True, help="Only the batch step's output (slurm-JOBID.out).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("-n", "--tail", "tail", type=int, default=None, help="Only the last N lines.")
def logs(job: str, node: int | None, batch: bool, follow: bool, tail: int | None) -> None:
    """Show JOB's logs: the head (node 0) and each worker separately."""
    reg = _registry()
    rec = reg.get(job)
    if node is not None and not 0 <= node < max(rec.nodes, 1):
        raise UsageError(f"--node must be between 0 and {max(rec.nodes, 1) - 1} for job {job}")
    from hpcserve.jobs.watch import LogFollower

    paths: list[tuple[str, str]] = []
    if batch:
        paths.append(("batch step", rec.batch_log()))
    else:
        ranks = [node] if node is not None else list(range(max(rec.nodes, 1)))
        for k in ranks:
            role = "head" if k == 0 else f"worker {k}"
            paths.append((f"{node_log_name(k)} ({role})", rec.node_log(k)))
        if node is None:
            paths.append(("batch step", rec.batch_log()))
    many = len(paths) > 1
    with _site_session(rec) as (_site, ex):
        followers = [(label, LogFollower(p)) for label, p in paths]
        for label, fol in followers:
            lines = fol.read_new(ex)
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            if many:
                click.echo(f"==> {label}: {fol.path} <==")
            if not lines and fol.offset == 0:
                click.echo("(no output yet)" if many else f"(no output yet in {fol.path})")
            for ln in lines:
                click.echo(ln)
        if not follow:
            return
        slurm = Slurm(ex)
        next_sched = 0.0
        current = None
        while True:
            for label, fol in followers:
                new = fol.read_new(ex)
                if new and many and current != label:
                    click.echo(f"==> {label} <==")
                    current = label
                for ln in new:
                    click.echo(ln)
            now = time.monotonic()
            if now >= next_sched:
                sched = slurm.query([rec.job_id])[rec.job_id]
                if not sched.active:
                    for fol in (f for _, f in followers):  # the last lines written before the end
                        for ln in fol.read_new(ex) + ([fol.partial] if fol.partial else []):
                            click.echo(ln)
                    click.echo(f"(job {rec.job_id} is {sched.state})", err=True)
                    return
                next_sched = now + 5.0
            time.sleep(0.5)


# -- wait --------------------------------------------------------------------------------------
@click.command()
@click.argument("job")
@click.option(
    "--timeout", type=float, default=None, help="Give up after this many seconds (exit 3)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines, only the result.")
def wait(job: str, timeout: float | None, quiet: bool) -> None:
    """Wait until JOB's API answers: exit 0 then, 1 if the job fails, 3 on --timeout."""
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    reg = _registry()
    rec = reg.get(job)
    from hpcserve.jobs.watch import JobWatch, wait_ready

    t0 = time.monotonic()

    def show(st: JobStatus) -> None:
        if not quiet:
            elapsed = format_duration(time.monotonic() - t0)
            click.echo(f"[{elapsed}] {st.detail}", err=True)

    with (
        _site_session(rec) as (site, ex),
        closing(JobWatch(rec, ex, site=site, on_record_change=_save(reg))) as w,
    ):
        res = wait_ready(w, timeout, timing=WAIT_TIMING, on_change=show)
    st = res.status
    if st.ready:
        click.echo(st.url or "ready")
        return
    if res.timed_out:
        click.echo(
            f"error: job {_label(rec)} not ready after {timeout:g} s (now: {st.detail})", err=True
        )
        sys.exit(EXIT_TIMEOUT)
    if st.failure is not None:
        f = st.failure
        node = f" on node {f.node}" if f.node is not None else ""
        click.echo(f"error: job {_label(rec)} failed: {f.title}{node}", err=True)
        click.echo(f"  {f.line}", err=True)
        click.echo(f"  hint: {f.suggestion}", err=True)
    else:
        click.echo(f"error: job {_label(rec)} {st.detail}", err=True)
    sys.exit(EXIT_FAILED)


# -- cancel ------------------------------------------------------------------------------------
@click.command()
@click.argument("job")
@click.option("--forget", is_flag=True, help="Also remove the job from the registry.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to confirm.")
def cancel(job: str, forget: bool, timeout: float) -> None:
    """Cancel JOB with scancel and confirm it left the queue and its processes are gone."""
    reg = _registry()
    rec = reg.get(job)
    with _site_session(rec) as (_site, ex):
        slurm = Slurm(ex)
        before = slurm.query([rec.job_id])[rec.job_id]
        if not before.active:
            click.echo(f"job {_label(rec)} is not running ({before.state}); nothing to cancel")
        else:
            slurm.cancel(rec.job_id)
            confirmed = confirm_gone(slurm, ex, rec, timeout)
            click.echo(confirmed)
    if forget:
        reg.remove(f"{rec.site}:{rec.job_id}")
        click.echo(f"forgot job {_label(rec)} (record and local secrets removed)")


def confirm_gone(
    slurm: Slurm,
    ex: Executor,
    rec: JobRecord,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Wait until the job is out of the queue and has no steps left; say what was confirmed."""
    start = clock()
    gap = 0.5
    sched: SchedJob = slurm.query([rec.job_id])[rec.job_id]
    steps: list[str] = []
    while True:
        steps = job_steps(slurm, rec.job_id)
        if not sched.active and not steps:
            break
        if clock() - start > timeout_s:
            raise RemoteError(
                f"scancel sent, but after {timeout_s:g} s job {rec.job_id} is still "
                f"{sched.state}" + (f" with steps {', '.join(steps)}" if steps else "")
            )
        sleep(gap)
        gap = min(gap * 1.5, 3.0)
        sched = slurm.query([rec.job_id])[rec.job_id]
    took = clock() - start
    facts = [
        f"scheduler state {sched.state}",
        "no job steps left (the srun-started vLLM "
        "processes on every node were ended by slurmstepd)",
    ]
    try:
        tail = ex.read_text(rec.batch_log()).splitlines()[-5:]
    except (OSError, RemoteError):
        tail = []
    mark = next((ln.strip() for ln in reversed(tail) if "CANCELLED AT" in ln), None)
    if mark:
        facts.append(f"batch log ends with: {mark}")
    return f"cancelled job {_label(rec)} in {took:.1f} s: " + "; ".join(facts)


def job_steps(slurm: Slurm, job_id: str) -> list[str]:
    """Step ids of the job still known to the controller (``squeue -s``)."""
    res = slurm.run(
        ["squeue", "-h", "-s", "-j", job_id, "-o", "%i"],
        ok_if=lambda r: "Invalid job id" in r.stderr,
    )
    if not res.ok:
        return []
    return [s.strip() for s in res.stdout.splitlines() if s.strip()]


# -- list --------------------------------------------------------------------------------------
@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--prune", is_flag=True, help="Forget old jobs that are no longer in the queue.")
@click.option(
    "--older-than",
    "older_than",
    type=float,
    default=7.0,
    show_default=True,
    help="With --prune: days since submission.",
)
def list_jobs(as_json: bool, prune: bool, older_than: float) -> None:
    """List the jobs in the registry (no scheduler call), or --prune old ones."""
    reg = _registry()
    if prune:
        if older_than < 0:
            raise UsageError("--older-than must be 0 or more days")
        _prune(reg, older_than, as_json)
        return
    records = reg.list()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        click.echo("no jobs in the registry")
        return
    rows = [("JOB", "NAME", "SITE", "NODES", "SUBMITTED", "MODEL")]
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.submitted_at))
        rows.append((r.job_id, r.name or "-", r.site, str(r.nodes), when, r.model))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _prune(reg: Registry, days: float, as_json: bool) -> None:
    cutoff = time.time() - days * 86400
    old = [r for r in reg.list() if r.submitted_at < cutoff]
    live: set[tuple[str, str]] = set()
    unreachable: list[str] = []
    by_site: dict[str, list[JobRecord]] = {}
    for r in old:
        by_site.setdefault(r.site, []).append(r)
    for site_name, recs in by_site.items():
        try:
            with _site_session(recs[0]) as (_site, ex):
                states = Slurm(ex).query([r.job_id for r in recs])
        except HpcserveError as e:
            unreachable.append(f"{site_name}: {e}")
            live.update((r.site, r.job_id) for r in recs)  # unknown: keep
            continue
        live.update((r.site, r.job_id) for r in recs if states[r.job_id].active)
    removed = reg.prune(days * 86400, keep=lambda r: (r.site, r.job_id) in live)
    if as_json:
        click.echo(
            json.dumps(
                {"removed": [r.to_dict() for r in removed], "kept_unreachable": unreachable},
                indent=2,
            )
        )
    else:
        for r in removed:
            click.echo(f"forgot {r.site}:{r.job_id}" + (f" ({r.name})" if r.name else ""))
        kept = len(old) - len(removed)
        click.echo(
            f"pruned {len(removed)} job(s) older than {days:g} day(s); kept {kept} "
            "still queued or on unreachable sites"
        )
    for u in unreachable:
        click.echo(f"warning: kept jobs of {u}", err=True)
