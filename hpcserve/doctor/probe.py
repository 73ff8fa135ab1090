"""Step 3: the probe job. The real launcher, rendered with every node running
:mod:`hpcserve.doctor.node_probe` in vLLM's place (:class:`hpcserve.launch.render.NodeProgram`),
so the probe gets the launcher's modules, environment, head address, claimed ports and
container command line; submitted, watched and cancelled through :class:`Slurm`.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcserve.cluster.executor import Executor
from hpcserve.cluster.slurm import SchedJob, Slurm
from hpcserve.doctor.checks import Allocation
from hpcserve.errors import HpcserveError
from hpcserve.jobs import record as jobrecord
from hpcserve.launch.render import NodeProgram, Var, render
from hpcserve.launch.request import LaunchRequest, build_request, default_job_dir
from hpcserve.nccl.report import NcclReport
from hpcserve.rules import format_slurm_time, parse_slurm_time
from hpcserve.sites.schema import Site

JOB_NAME = "hpcserve-doctor"
PROBE_DIR = "doctor"  # in the job directory: the probe script and every node's answer
PROBE_SCRIPT = "node_probe.py"
PROBE_MODEL = "hpcserve-doctor-probe"  # the launcher's model when doctor is given none
PROBE_TIME_S = 300  # the probe job's limit, unless the site's default is shorter
PHASE_WAIT_S = 60  # how long one node waits for another at each phase of the probe
UNKNOWN_GRACE_S = 30  # a job the scheduler does not list yet, just after sbatch, is not gone


def probe_time(site: Site) -> str:
    """The probe's time limit: 5 minutes, or the site's default limit when that is shorter."""
    site_s = parse_slurm_time(site.scheduler.time)
    return format_slurm_time(min(PROBE_TIME_S, site_s) if site_s else PROBE_TIME_S)


def probe_request(site: Site, nodes: int, model: str | None, job_dir: str = "") -> LaunchRequest:
    """The launch request of the probe: ``nodes`` nodes, the probe's time and job name, the
    model's layout when ``model`` is given (so the GPUs asked for are the launch's)."""
    return build_request(
        site,
        model=model or PROBE_MODEL,
        nodes=nodes,
        name=JOB_NAME,
        sbatch={"time": probe_time(site)},
        job_dir=job_dir or None,
    )


def probe_program(site: Site, nodes: int) -> NodeProgram:
    """``python3 JOBDIR/doctor/node_probe.py ...`` in vLLM's runtime on every node."""
    out = (Var("JOBDIR"), "/" + PROBE_DIR)
    return NodeProgram(
        "python3",
        (
            (Var("JOBDIR"), f"/{PROBE_DIR}/{PROBE_SCRIPT}"),
            "--nodes", str(nodes),
            "--out", out,
            "--interface", site.network.head_interface or "",
            "--wait", str(PHASE_WAIT_S),
        ),
    )  # fmt: skip


def probe_launcher(site: Site, nodes: int, model: str | None, job_dir: str = "") -> str:
    """The rendered probe launcher (what ``sbatch --test-only`` checks and the probe runs)."""
    req = probe_request(site, nodes, model, job_dir)
    return render(site, req, probe_program(site, nodes))


def probe_source() -> str:
    """The text of the node script shipped in this package."""
    return (Path(__file__).parent / PROBE_SCRIPT).read_text()


# -- what the nodes answered -------------------------------------------------------------------
@dataclass
class NodeResult:
    """One node's answer (``OUT/node-K.json``): what it saw, and how each phase went."""

    rank: int
    hostname: str = "?"
    cpus: int | None = None
    gpus: dict[str, Any] = field(default_factory=dict)
    infiniband: list[dict[str, str]] = field(default_factory=list)
    interface: dict[str, Any] = field(default_factory=dict)
    interfaces: list[list[str]] = field(default_factory=list)
    vllm_host_ip: str | None = None
    tmp: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    tcp: dict[str, Any] = field(default_factory=dict)
    collective: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def parse_node(text: str, rank: int) -> NodeResult:
    """A node's JSON answer; ValueError when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"node {rank}: expected a JSON object")
    kinds: dict[str, type] = {
        "hostname": str, "cpus": int, "gpus": dict, "infiniband": list, "interface": dict,
        "interfaces": list, "vllm_host_ip": str, "tmp": dict, "shared": dict, "tcp": dict,
        "collective": dict, "error": str,
    }  # fmt: skip
    values: dict[str, Any] = {}
    for key, kind in kinds.items():
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise ValueError(f"node {rank}: {key} is not a {kind.__name__}")
        values[key] = value
    return NodeResult(rank=rank, **values)


def bus_bandwidth(nbytes: int, seconds: float, ranks: int) -> tuple[float, float]:
    """(algorithm bandwidth, bus bandwidth) in bytes/s of one all_reduce of ``nbytes``.

    As nccl-tests defines them (doc/PERFORMANCE.md): algbw = size / time, and for AllReduce
    busbw = algbw * 2(n-1)/n, the traffic each rank's link carries in a ring.
    """
    if seconds <= 0 or ranks < 1:
        raise ValueError("seconds must be > 0 and ranks >= 1")
    alg = nbytes / seconds
    return alg, alg * 2 * (ranks - 1) / ranks


@dataclass
class ProbeResult:
    """What the probe job left: each node's answer (None: none written), log tails, the NCCL
    report (None without NCCL files), the allocation, and why it did not run when it did not."""

    job_dir: str
    nodes: int
    answers: dict[int, NodeResult | None] = field(default_factory=dict)
    log_tails: dict[str, str] = field(default_factory=dict)
    nccl: NcclReport | None = None
    allocation: Allocation | None = None
    problem: str | None = None  # the job never ran, or did not end in time
    problem_fix: str | None = None

    @property
    def head(self) -> NodeResult | None:
        return self.answers.get(0)

    def present(self) -> list[NodeResult]:
        return [a for a in self.answers.values() if a is not None]


# -- the job -----------------------------------------------------------------------------------
Progress = Callable[[str], None]


class ProbeJob:
    """Submit the probe, wait for it, cancel it whatever happens, read what it left."""

    def __init__(
        self,
        site: Site,
        executor: Executor,
        *,
        nodes: int,
        model: str | None = None,
        timeout_s: float = 900,
        poll_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        progress: Progress | None = None,
    ) -> None:
        self.site = site
        self.executor = executor
        self.slurm = Slurm(executor, timeout_s=120)
        self.nodes = nodes
        self.model = model
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.sleep = sleep
        self.clock = clock
        self.progress = progress or (lambda _msg: None)
        self.job_id: str | None = None
        self.job_dir = ""

    def prepare(self) -> str:
        """Write the job directory (launcher, node script) and return the launcher's path."""
        home = self.executor.home()
        self.job_dir = default_job_dir(self.site, PROBE_DIR, home=home, unique=True)
        script = probe_launcher(self.site, self.nodes, self.model, self.job_dir)
        out = posixpath.join(self.job_dir, PROBE_DIR)
        for d in (self.job_dir, posixpath.join(self.job_dir, jobrecord.NCCL_DIR), out):
            self.executor.makedirs(d, 0o700)
        self.executor.write_text(posixpath.join(out, PROBE_SCRIPT), probe_source(), 0o600)
        launcher = posixpath.join(self.job_dir, jobrecord.LAUNCHER)
        self.executor.write_text(launcher, script, 0o700)
        return launcher

    def run(self) -> ProbeResult:
        """The probe from submission to its answers; the job is cancelled on any way out
        (Ctrl-C included) while the scheduler still has it."""
        ended: SchedJob | None = None
        try:
            launcher = self.prepare()
            self.job_id, _ = self.slurm.submit(launcher)
            self.progress(f"probe job {self.job_id} submitted ({self.job_dir})")
            ended = self._wait()
        finally:
            if self.job_id is not None and (ended is None or ended.active):
                self.cancel()
        return self.collect(ended)

    def cancel(self) -> None:
        """scancel the probe job (errors reported, not raised: this runs on the way out)."""
        assert self.job_id is not None
        try:
            self.slurm.cancel(self.job_id)
            self.progress(f"probe job {self.job_id} cancelled")
        except HpcserveError as e:
            self.progress(f"could not cancel probe job {self.job_id}: {e}")

    def _wait(self) -> SchedJob:
        """Poll until the job left the queue; returns it still active at the timeout."""
        assert self.job_id is not None
        start = self.clock()
        said = ""
        while True:
            job = self.slurm.query([self.job_id])[self.job_id]
            young = self.clock() - start < UNKNOWN_GRACE_S
            if not job.active and not (job.state == "UNKNOWN" and young):
                return job
            news = f"probe job {self.job_id} {job.state}" + (
                f" ({job.reason})" if job.state == "PENDING" and job.reason else ""
            )
            if news != said:
                self.progress(news)
                said = news
            if self.clock() - start > self.timeout_s:
                return job
            self.sleep(self.poll_s)

    def collect(self, job: SchedJob | None) -> ProbeResult:
        """Read every node's answer, the logs of those that gave none, and the NCCL files."""
        res = ProbeResult(job_dir=self.job_dir, nodes=self.nodes)
        if job is not None and self.job_id is not None:
            res.allocation = allocation_of(job, probe_time(self.site))
            if job.active:
                res.problem = (
                    f"probe job {self.job_id} was still {job.state} after {self.timeout_s:g} s"
                )
                res.problem_fix = (
                    "the queue is busy or the job hangs: run doctor again later, or with a "
                    "longer --timeout"
                )
        for k in range(self.nodes):
            res.answers[k] = self._answer(k)
        if any(a is None for a in res.answers.values()):
            res.log_tails = self._tails()
        res.nccl = self._nccl()
        return res

    def _answer(self, rank: int) -> NodeResult | None:
        path = posixpath.join(self.job_dir, PROBE_DIR, f"node-{rank}.json")
        try:
            return parse_node(self.executor.read_text(path), rank)
        except (OSError, ValueError, HpcserveError):
            return None

    def _tails(self) -> dict[str, str]:
        """The last lines of the batch log and each node log (why a node gave no answer)."""
        names = [jobrecord.BATCH_LOG.replace("%j", self.job_id or "")]
        names += [jobrecord.node_log_name(k) for k in range(self.nodes)]
        out = {}
        for name in names:
            try:
                text = self.executor.read_text(posixpath.join(self.job_dir, name))
            except (OSError, HpcserveError):
                continue
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines:
                out[name] = "\n".join(lines[-5:])
        return out

    def _nccl(self) -> NcclReport | None:
        """The NCCL files through ``hpcserve nccl``'s scanner, or None when there are none."""
        from hpcserve.jobs.watch import nccl_log_files
        from hpcserve.nccl import NcclScanner

        files = nccl_log_files(self.executor, self.job_dir)
        if not files:
            return None
        scanner = NcclScanner()
        for path in files:
            scanner.begin_source(posixpath.basename(path))
            scanner.feed_chunk(self.executor.read_text(path).encode("utf-8", "replace") + b"\n")
        return scanner.report()


def allocation_of(job: SchedJob, limit: str) -> Allocation:
    """The allocation the scheduler reported for the probe job."""
    shown = format_slurm_time(job.time_limit_s) if job.time_limit_s else limit
    return Allocation(
        job_id=job.job_id,
        nodes=job.nodes,
        nodelist=job.nodelist,
        elapsed_s=job.elapsed_s,
        time_limit=shown,
        state=job.state,
    )
