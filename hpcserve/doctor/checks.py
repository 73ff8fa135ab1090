"""The doctor's check record and the rule that orders its checks and stops where the rest
would mean nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's answer: pass, fail (with the fix) or skip (with why)."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    blocked: bool = False  # skipped because a check it needs did not pass
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
            "blocked": self.blocked,
            "data": dict(self.data),
        }


def passed(name: str, detail: str, **data: Any) -> Check:
    return Check(name, "pass", detail, data=data)


def failed(name: str, detail: str, fix: str, **data: Any) -> Check:
    return Check(name, "fail", detail, fix=fix, data=data)


def skipped(name: str, why: str, **data: Any) -> Check:
    return Check(name, "skip", why, data=data)


@dataclass(frozen=True)
class Step:
    """A check to run, and the earlier checks whose failure makes it meaningless."""

    name: str
    run: Callable[[], Check]
    needs: tuple[str, ...] = ()


def _blocker(step: Step, done: dict[str, Check]) -> Check | None:
    """The first needed check that failed or was itself blocked (one that was never run
    counts as blocked)."""
    for name in step.needs:
        got = done.get(name)
        if got is None or got.failed or got.blocked:
            return got or Check(name, "skip", "not run", blocked=True)
    return None


def run_steps(
    steps: Sequence[Step], on_check: Callable[[Check], None] | None = None
) -> list[Check]:
    """Run ``steps`` in order; a step whose needs did not pass is skipped, naming the check
    that stopped it. ``on_check`` sees each check as soon as it is known."""
    done: dict[str, Check] = {}
    out: list[Check] = []
    for step in steps:
        blocker = _blocker(step, done)
        if blocker is None:
            check = step.run()
        else:
            why = "failed" if blocker.failed else "was skipped"
            check = Check(step.name, "skip", f"{blocker.name} {why}", blocked=True)
        done[step.name] = check
        out.append(check)
        if on_check is not None:
            on_check(check)
    return out


@dataclass
class Allocation:
    """The probe job's allocation, as the scheduler reported it."""

    job_id: str
    nodes: int | None = None
    nodelist: str | None = None
    elapsed_s: int | None = None
    time_limit: str | None = None
    state: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "nodes": self.nodes,
            "nodelist": self.nodelist,
            "elapsed_s": self.elapsed_s,
            "time_limit": self.time_limit,
            "state": self.state,
        }


@dataclass
class DoctorReport:
    """Every check in order, doctor's own wall time, and the probe job's allocation."""

    site: str
    checks: list[Check]
    wall_s: float
    allocation: Allocation | None = None

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
            "wall_s": round(self.wall_s, 1),
            "allocation": self.allocation.to_dict() if self.allocation else None,
        }
