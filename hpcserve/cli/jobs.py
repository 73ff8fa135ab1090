"""`hpcserve status | logs | wait | cancel | list`: the life of a submitted job.

Thin click adapters over :mod:`hpcserve.jobs.handle`: each command opens a
:class:`~hpcserve.jobs.handle.Job` (one executor for the command, so one SSH connection on
remote sites) or asks :class:`~hpcserve.jobs.handle.Jobs`, and prints what it returns. The
:class:`Jobs` in click's context object is used when there is one (tests pass fakes there).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from hpcserve.cluster.slurm import format_duration
from hpcserve.jobs.failures import Failure
from hpcserve.jobs.handle import Job, Jobs, LogEnd, LogPause, LogSource, StatusRow
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.state import JobStatus

EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def _jobs() -> Jobs:
    """The context's :class:`Jobs`, else one on the default registry and real sites."""
    found = click.get_current_context().find_object(Jobs)
    return found if found is not None else Jobs()


def _print_status(st: JobStatus, handle: Job) -> None:
    rec = handle.record
    click.echo(f"job {handle.label} on {rec.site}: {st.state} - {st.detail}")
    layout = f"DP {rec.dp} x " if rec.dp > 1 else ""
    click.echo(f"  model:     {rec.model} ({layout}TP {rec.tp} x PP {rec.pp}, {rec.nodes} node(s))")
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
    compiled = p.compile_summary() if p is not None else None
    if compiled:
        click.echo(f"  compile:   {compiled.removeprefix('compile ')}")
    if st.url:
        click.echo(f"  endpoint:  {st.url}" + (" (answering)" if st.ready else ""))
    if st.nccl:
        click.echo(f"  NCCL:      {st.nccl.removeprefix('NCCL: ')}")
    if st.failure is not None:
        f = st.failure
        where = f" [{f.source}]" if f.source else ""
        click.echo(f"  cause:     {f.title}{_where(f)}")
        click.echo(f"  line{where}: {f.line}")
        click.echo(f"  hint:      {f.suggestion}")


def _where(f: Failure) -> str:
    """`` (node K)``, or `` (HOST)`` when only the node's host name is known."""
    if f.node is not None:
        return f" (node {f.node})"
    return f" ({f.host})" if f.host else ""


def _status_json(st: JobStatus, rec: JobRecord, handle: Job | None = None) -> dict[str, Any]:
    d = st.to_dict()
    d["record"] = rec.to_dict()
    view = handle.chain() if handle is not None else None
    if view is not None:
        d["service"] = view.to_dict()
    return d


def _print_chain(handle: Job) -> None:
    """A service's chain under its current job's status."""
    view = handle.chain()
    if view is None:
        return
    for label, text in view.lines():
        click.echo(f"  {label + ':':<10} {text}")


# -- status ------------------------------------------------------------------------------------
@click.command()
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Refresh every few seconds until the job ends.")
@click.option("--interval", default=3.0, show_default=True, help="Seconds between --watch polls.")
def status(job: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """Scheduler state and server phase of JOB (id or name), or a table of all your jobs."""
    jobs = _jobs()
    if job is None:
        _status_table(jobs.status_all(), as_json)
        return
    last: tuple[str, str] | None = None
    with jobs.open(job) as handle:
        for st in handle.statuses(interval if watch else None):
            if as_json:
                d = _status_json(st, handle.record, handle)
                click.echo(json.dumps(d, indent=2, default=str))
            elif (st.state, st.detail) != last:
                if watch and last is not None:
                    click.echo(f"--- {time.strftime('%H:%M:%S')}")
                _print_status(st, handle)
                _print_chain(handle)
                last = (st.state, st.detail)
    if st.phase == "failed":
        sys.exit(EXIT_FAILED)


def _status_table(rows: list[StatusRow], as_json: bool) -> None:
    if as_json:
        out = [
            _status_json(r.status, r.record)
            if r.status is not None
            else {"record": r.record.to_dict(), "error": r.error}
            for r in rows
        ]
        click.echo(json.dumps(out, indent=2, default=str))
        return
    if not rows:
        click.echo("no jobs in the registry (`hpcserve submit` adds them)")
        return
    header = ("JOB", "NAME", "SITE", "STATE", "PHASE", "LEFT", "MODEL")
    _print_table([header, *(_table_row(r) for r in rows)])
    notes = [f"{r.record.site}: {r.error}" for r in rows if r.status is None]
    for n in dict.fromkeys(notes):
        click.echo(f"warning: {n}", err=True)


def _table_row(row: StatusRow) -> tuple[str, ...]:
    r, st = row.record, row.status
    if st is None:
        return (r.job_id, r.name or "-", r.site, "?", "?", "-", r.model)
    phase = st.phase + (f" ({st.failure.cause})" if st.failure is not None else "")
    left = format_duration(st.time_left_s)
    return (r.job_id, r.name or "-", r.site, st.state, phase, left, r.model)


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- logs --------------------------------------------------------------------------------------
@click.command()
@click.argument("job")
@click.option("--node", "node", type=int, default=None, help="Only node K (0 = head).")
@click.option("--batch", is_flag=True, help="Only the batch step's output (slurm-JOBID.out).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("-n", "--tail", "tail", type=int, default=None, help="Only the last N lines.")
def logs(job: str, node: int | None, batch: bool, follow: bool, tail: int | None) -> None:
    """Show JOB's logs: the head (node 0) and each worker separately."""
    with _jobs().open(job) as handle:
        sources = handle.log_sources(node, batch)
        many = len(sources) > 1
        for read in handle.read_logs(sources, tail):
            path = read.source.path
            if many:
                click.echo(f"==> {read.source.label}: {path} <==")
            if read.empty:
                click.echo("(no output yet)" if many else f"(no output yet in {path})")
            for ln in read.lines:
                click.echo(ln)
        if follow:
            _follow(handle, sources, many)


def _follow(handle: Job, sources: list[LogSource], many: bool) -> None:
    """Print new lines as they come, with a header whenever another log speaks."""
    current: LogSource | None = None
    for ev in handle.follow_logs(sources):
        if isinstance(ev, LogEnd):
            click.echo(f"(job {handle.job_id} is {ev.state})", err=True)
            return
        if isinstance(ev, LogPause):
            click.echo(f"({ev.reason}; still following)", err=True)
            continue
        if many and not ev.final and current is not ev.source:
            click.echo(f"==> {ev.source.label} <==")
            current = ev.source
        click.echo(ev.text)


# -- wait --------------------------------------------------------------------------------------
@click.command()
@click.argument("job")
@click.option(
    "--timeout", type=float, default=None, help="Give up after this many seconds (exit 3)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines, only the result.")
def wait(job: str, timeout: float | None, quiet: bool) -> None:
    """Wait until JOB's API answers: exit 0 then, 1 if the job fails, 3 on --timeout."""
    t0 = time.monotonic()

    def show(st: JobStatus) -> None:
        if not quiet:
            elapsed = format_duration(time.monotonic() - t0)
            click.echo(f"[{elapsed}] {st.detail}", err=True)

    with _jobs().open(job) as handle:
        res = handle.wait(timeout, on_change=show)
    st, label = res.status, handle.label
    if st.ready:
        click.echo(st.url or "ready")
        return
    if res.timed_out:
        click.echo(f"error: job {label} not ready after {timeout:g} s (now: {st.detail})", err=True)
        sys.exit(EXIT_TIMEOUT)
    if st.failure is not None:
        f = st.failure
        node = f" on node {f.node}" if f.node is not None else (f" on {f.host}" if f.host else "")
        click.echo(f"error: job {label} failed: {f.title}{node}", err=True)
        click.echo(f"  {f.line}", err=True)
        click.echo(f"  hint: {f.suggestion}", err=True)
    else:
        click.echo(f"error: job {label} {st.detail}", err=True)
    sys.exit(EXIT_FAILED)


# -- cancel ------------------------------------------------------------------------------------
@click.command()
@click.argument("job")
@click.option("--forget", is_flag=True, help="Also remove the job from the registry.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to confirm.")
def cancel(job: str, forget: bool, timeout: float) -> None:
    """Cancel JOB with scancel and confirm it left the queue and its processes are gone."""
    with _jobs().open(job) as handle:
        click.echo(handle.cancel(timeout).message)
        if forget:
            handle.forget()
            click.echo(f"forgot job {handle.label} (record and local secrets removed)")


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
    jobs = _jobs()
    if prune:
        _prune(jobs, older_than, as_json)
        return
    records = jobs.records()
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
    _print_table(rows)


def _prune(jobs: Jobs, days: float, as_json: bool) -> None:
    res = jobs.prune(days)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "removed": [r.to_dict() for r in res.removed],
                    "kept_unreachable": res.unreachable,
                },
                indent=2,
            )
        )
    else:
        for r in res.removed:
            click.echo(f"forgot {r.site}:{r.job_id}" + (f" ({r.name})" if r.name else ""))
        kept = res.old - len(res.removed)
        click.echo(
            f"pruned {len(res.removed)} job(s) older than {days:g} day(s); kept {kept} "
            "still queued or on unreachable sites"
        )
    for u in res.unreachable:
        click.echo(f"warning: kept jobs of {u}", err=True)
