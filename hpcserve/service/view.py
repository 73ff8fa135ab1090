"""What ``status NAME`` shows about a service's chain (pure): :class:`ChainView` and its lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcserve.cluster.slurm import SchedJob
from hpcserve.rules import format_duration_text
from hpcserve.service import chain, lead


def clock_time(epoch: float) -> str:
    """``HH:MM:SS`` local time."""
    return time.strftime("%H:%M:%S", time.localtime(epoch))


@dataclass
class ChainView:
    """The chain and what the scheduler says about its jobs (``status NAME``)."""

    name: str
    state: chain.ChainState
    sched: dict[str, SchedJob] = field(default_factory=dict)
    time_limit_s: int | None = None

    @property
    def lead_s(self) -> int:
        return lead.lead_time_s(self.state.samples(), self.time_limit_s)

    def active_jobs(self) -> list[str]:
        return [j for j in self.state.job_ids() if j in self.sched and self.sched[j].active]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "chain": self.state.to_dict(),
            "scheduler": {k: v.to_dict() for k, v in self.sched.items()},
            "lead_time_s": self.lead_s,
        }

    def lines(self, when: Callable[[float], str] = clock_time) -> list[tuple[str, str]]:
        """``(label, text)`` rows: the chain, handovers, gaps, lead time, stop and notes."""
        st = self.state
        rows = [("service", self._summary(when))]
        shown = ", ".join(f"{h.from_job} -> {h.to_job} at {when(h.at)}" for h in st.handovers)
        rows.append(("handovers", f"{len(st.handovers)}" + (f" ({shown})" if shown else "")))
        rows.append(("gaps", self._gaps(when)))
        samples = st.samples()[-lead.RECENT :]
        how = (
            f"the slowest of {len(samples)} measured submit-to-ready times: "
            f"{format_duration_text(max(samples))}"
            if samples
            else "first guess: nothing measured yet"
        )
        rows.append(("lead time", f"{format_duration_text(self.lead_s)} ({how})"))
        if st.until:
            rows.append(
                (
                    "until",
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(st.until))
                    + (" (reached: the current job is the last)" if st.until_reached else ""),
                )
            )
        if st.stopped is not None:
            cause = st.stopped.fields.get("cause", "?")
            who = st.stopped.job if st.stopped.job == "user" else f"job {st.stopped.job}"
            rows.append(("stopped", f"{cause} (by {who} at {when(st.stopped.at)})"))
        rows += [("note", n) for n in st.notes[-3:]]
        return rows

    def _job_text(self, job: str) -> str:
        s = self.sched.get(job)
        if s is None:
            return job
        reason = f": {s.reason}" if s.reason and s.state == "PENDING" else ""
        return f"{job} ({s.state}{reason})"

    def _summary(self, when: Callable[[float], str]) -> str:
        st = self.state
        parts = [f"{len(st.jobs)} job(s)"]
        if st.current is not None:
            ready = st.jobs[st.current].last_ready_at
            since = f", serving since {when(ready)}" if ready else ""
            parts.append(f"current {self._job_text(st.current)}{since}")
        else:
            parts.append("no job serving now")
        if st.next_job is not None:
            parts.append(f"next {self._job_text(st.next_job)}")
        return "; ".join(parts)

    def _gaps(self, when: Callable[[float], str]) -> str:
        gaps = self.state.gaps
        if not gaps:
            return "none"
        texts = []
        for g in gaps[-3:]:
            end = when(g.end) if g.end is not None else "now"
            length = f" ({format_duration_text(g.end - g.start)})" if g.end is not None else ""
            texts.append(f"{when(g.start)}-{end}{length}: {g.cause}")
        return f"{len(gaps)}: " + "; ".join(texts)
