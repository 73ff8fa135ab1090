"""``hpcserve nccl JOB | FILE... | -``: how NCCL traffic flows, from NCCL_DEBUG=INFO logs.

Exit codes: 0 optimal or single node, 1 degraded or failed, 3 nothing conclusive, 2 usage error.
Heavy modules (registry, SSH) are imported only for a job reference.
"""

from __future__ import annotations

import json
import os
import sys

import click

from hpcserve.errors import ConfigError, UsageError
from hpcserve.nccl import NcclReport, NcclScanner, one_line
from hpcserve.nccl.scanner import scan_sources
from hpcserve.nccl.status import detail_lines


def _scan_job(scanner: NcclScanner, ref: str) -> None:
    """Read a registered job's NCCL and node logs where the job ran."""
    from hpcserve.cli.jobs import _jobs

    try:
        handle = _jobs().open(ref)
    except ConfigError:
        raise
    except UsageError as e:
        raise UsageError(f"no such file or job: {ref} ({e})") from e
    with handle:
        handle.scan_nccl(scanner)


def _human(r: NcclReport) -> str:
    out = [one_line(r) if r.verdict != "unknown" else "NCCL: verdict unknown"]
    c = r.cross_node
    out.append(f"  NCCL version : {r.nccl_version or 'not in the log'}")
    out.append(f"  nodes / ranks: {r.nodes if r.nodes is not None else '?'} / {r.ranks or '?'}")
    gdr = {True: "yes", False: "no", None: "-"}[c.gdr]
    out.append(f"  cross-node   : {c.transport} (GPUDirect RDMA: {gdr}, link: {c.link or '-'})")
    out.append(f"  intra-node   : {', '.join(r.intra_node) or 'none seen'}")
    out.extend(detail_lines(r))
    if r.per_node:
        out.append("  per host (as NCCL names them):")
        for n in r.per_node[:64]:
            ranks = ",".join(map(str, n.ranks[:16])) + ("..." if len(n.ranks) > 16 else "")
            out.append(
                f"    {n.host}: {n.processes} process(es), ranks [{ranks}], "
                f"transports {', '.join(n.transports) or '-'}"
                + (f", selected network {', '.join(n.networks)}" if n.networks else "")
            )
        if len(r.per_node) > 64:
            out.append(f"    ... {len(r.per_node) - 64} more")
    for w in r.warnings:
        out.append(f"  warning: {w}")
    if r.causes:
        out.append("  likely causes and fixes:")
        for cause in r.causes:
            out.append(f"    - {cause.cause}")
            out.append(f"      fix: {cause.fix}")
            for line in cause.lines[:3]:
                out.append(f"      | {line}")
    if r.evidence:
        out.append("  evidence:")
        for line in r.evidence:
            out.append(f"    | {line}")
    return "\n".join(out)


@click.command("nccl")
@click.argument("sources", nargs=-1, metavar="JOB|FILE...|-")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.option(
    "--gdr-optional",
    is_flag=True,
    help="Do not count InfiniBand without GPUDirect RDMA as degraded.",
)
def nccl(sources: tuple[str, ...], as_json: bool, gdr_optional: bool) -> None:
    """Tell how NCCL traffic flows (IB/GDR, sockets) from NCCL_DEBUG=INFO logs.

    A SOURCE is a log file (plain or gzip'd), a directory of logs, '-' for stdin, or a job
    id/name from the registry (its JOBDIR/nccl/*.log and node-*.log). Exit status: 0 optimal
    or single node, 1 degraded or failed, 3 nothing conclusive (no NCCL lines, or a network
    selected but not yet seen carrying traffic), 2 usage error.
    """
    if not sources:
        raise UsageError("give a job, one or more log files, or '-' for stdin")
    scanner = NcclScanner(expect_gdr=not gdr_optional)
    jobs = [s for s in sources if s != "-" and not os.path.exists(s)]
    if any(os.sep in j for j in jobs):  # a job reference has no slash: a path that is not there
        raise UsageError(f"no such file or directory: {next(j for j in jobs if os.sep in j)}")
    if jobs and len(sources) > 1:
        raise UsageError(f"no such file: {jobs[0]} (a job reference must be the only argument)")
    if sources.count("-") > 1:
        raise UsageError("'-' (stdin) can be given once")
    if jobs:
        _scan_job(scanner, jobs[0])
    else:
        scan_sources(scanner, sources)
    report = scanner.report()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(_human(report))
    sys.exit(report.exit_code)
