"""Wait for the GPU test's server exactly as `hpcserve wait` does, without SLURM.

Runs hpcserve's own loop (:func:`hpcserve.jobs.watch.wait_ready` over a
:class:`hpcserve.jobs.watch.JobWatch`): it follows ``JOBDIR/node-K.log`` with hpcserve's log
follower, folds new lines into :mod:`hpcserve.jobs.phases` (``read_phase`` per node, ``merge`` for
the job), probes ``/health`` every ``WaitTiming.health_every`` (0.25 s) and stops when the API
answers or the job fails. The only stand-in is the scheduler: there is no SLURM on the GPU
machine, so "the job" is RUNNING while both node processes live and FAILED when one has exited.

Prints one line per phase change (``[+SS.SS s] PHASE: detail``) and writes a JSON record:
``ready_s`` (from --since, when both nodes were started, to /health 200), the phase timeline,
the merged phase info (KV cache tokens, vLLM version, ...) and each node's own phase.

    python3 wait_ready.py --job-dir /tmp/hpcserve-jobs/gpu-test --url http://127.0.0.1:8000 \
        --since 1700000000.0 --pids 123,124 --out wait.json
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import closing
from dataclasses import asdict
from typing import Any

from hpcserve.cluster.executor import LocalExecutor
from hpcserve.cluster.slurm import SchedJob
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.state import JobStatus
from hpcserve.jobs.watch import HealthProbe, JobWatch, WaitTiming, wait_ready


def _alive(pid: int) -> bool:
    """The process runs (an unreaped zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class ProcessScheduler:
    """Stands in for :class:`hpcserve.cluster.slurm.Slurm`: the job runs while its node processes
    do."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.calls = 0

    def query(self, job_ids: list[str]) -> dict[str, SchedJob]:
        self.calls += 1
        dead = [p for p in self.pids if not _alive(p)]
        state = "FAILED" if dead else "RUNNING"
        reason = f"node process(es) {dead} exited" if dead else None
        return {
            j: SchedJob(j, state, reason=reason, nodes=len(self.pids), source="processes")
            for j in job_ids
        }

    def scontrol(self, job_id: str) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job-dir", required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--since", type=float, required=True, help="unix time the nodes started")
    ap.add_argument("--pids", required=True, help="comma-separated node process ids")
    ap.add_argument("--model", default="/tmp/tiny-llama")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    pids = [int(p) for p in args.pids.split(",") if p]
    host, port = args.url.rsplit("//", 1)[1].rsplit(":", 1)
    rec = JobRecord(
        job_id="4242",
        site="gpu-h200",
        model=args.model,
        nodes=len(pids),
        tp=args.tp,
        pp=len(pids),
        job_dir=args.job_dir,
        submitted_at=args.since,
        remote=False,
        name="gpu-test",
        head_addr=host,
        api_port=int(port),
    )
    timeline: list[dict[str, Any]] = []

    def show(st: JobStatus) -> None:
        t = time.time() - args.since
        timeline.append({"t_s": round(t, 2), "phase": st.phase, "detail": st.detail})
        print(f"[+{t:6.2f} s] {st.phase}: {st.detail}", flush=True)

    sched = ProcessScheduler(pids)
    timing = WaitTiming()
    with closing(JobWatch(rec, LocalExecutor(), slurm=sched, probe=HealthProbe())) as watch:  # type: ignore[arg-type]
        # Both "nodes" are this host: ask /health here, as `wait` does once it has a route.
        watch.probe_url = watch.url = args.url
        res = wait_ready(watch, args.timeout, timing=timing, on_change=show)
        elapsed = time.time() - args.since
        st = res.status
        out: dict[str, Any] = {
            "ready": st.ready,
            "ready_s": round(elapsed, 2) if st.ready else None,
            "timed_out": res.timed_out,
            "health_every_s": timing.health_every,
            "health_calls": res.health_calls,
            "final": {"phase": st.phase, "detail": st.detail},
            "failure": None if st.failure is None else asdict(st.failure),
            "timeline": timeline,
            "merged": watch.progress().to_dict(),
            "nodes": [n.progress.to_dict() for n in watch.nodes],
        }
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2, default=str)
    print(f"wait: ready={st.ready} after {elapsed:.2f} s ({st.detail})", flush=True)
    raise SystemExit(0 if st.ready else 1)


if __name__ == "__main__":
    main()
