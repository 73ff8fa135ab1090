"""Doctor's answer as text (one line per check, the fix under a failure) and as JSON."""

from __future__ import annotations

import json

from hpcserve.cluster.slurm import format_duration
from hpcserve.doctor.checks import Check, DoctorReport

_MARK = {"pass": "pass", "fail": "FAIL", "skip": "skip"}
_WIDTH = 22  # the longest check name, "shared job directory", and a margin


def check_lines(check: Check) -> list[str]:
    """``pass  NAME  detail``; a failure's fix on the next line, a skip's reason in the detail."""
    out = [f"{_MARK[check.status]}  {check.name:<{_WIDTH}} {check.detail}"]
    if check.fix:
        out.append(f"      {'':<{_WIDTH}} fix: {check.fix}")
    return out


def summary_lines(report: DoctorReport) -> list[str]:
    """Doctor's wall time, the probe job's allocation and the verdict."""
    fails = [c.name for c in report.checks if c.failed]
    verdict = f"{len(fails)} check(s) failed: {', '.join(fails)}" if fails else "all checks passed"
    out = [f"doctor for {report.site}: {verdict}; took {report.wall_s:.1f} s"]
    a = report.allocation
    if a is not None:
        out.append(
            f"probe job {a.job_id}: {a.nodes if a.nodes is not None else '?'} node(s) "
            f"{a.nodelist or '?'}, ran {format_duration(a.elapsed_s)} of {a.time_limit or '?'}"
            f" ({a.state or '?'})"
        )
    return out


def to_json(report: DoctorReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
