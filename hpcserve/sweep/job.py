"""The sweep job: ONE allocation of N nodes whose batch step runs each layout's launcher in turn.

Every layout is an ordinary request (:func:`hpcserve.launch.request.build_request`, so the same
checks as ``render``/``submit``), rendered by :func:`hpcserve.launch.render.render` into its own
directory ``<sweep dir>/<label>/`` with its own ``secrets.env``. ``templates/sweep.sbatch.j2``
holds the nodes and runs ``bash <label>/launcher.sbatch`` (the launcher's batch step: head
address, ports, ``endpoint.json``, one ``srun`` task per node) one after the other; it stops a
layout when this machine writes :data:`STOP` into its directory (benchmark done), when the
launcher exits (it failed to start or died), or after ``layout_timeout`` seconds, and writes the
exit status to :data:`EXIT`. The ``#SBATCH`` lines are the launcher's own
(:func:`hpcserve.launch.render.launcher_context`) for the widest layout, written to
``<sweep dir>/slurm-%j.out``.
"""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hpcserve.cluster.connect import expand_home
from hpcserve.cluster.executor import Executor
from hpcserve.jobs import record as jobrecord
from hpcserve.launch.render import launcher_context, render, render_template
from hpcserve.launch.request import LaunchRequest, build_request, default_job_dir
from hpcserve.launch.submit import read_hf_token, secrets_env
from hpcserve.plan.layout import Layout
from hpcserve.plan.modelinfo import ModelInfo
from hpcserve.sites.schema import Site
from hpcserve.sweep.layouts import label

TEMPLATE = "sweep.sbatch.j2"
SCRIPT = "sweep.sbatch"
STOP = "STOP"  # written by this machine into a layout's directory: stop it, start the next
EXIT = "EXIT"  # written by the sweep job: the layout launcher's exit status
POLL_S = 2  # how often the sweep job looks for STOP
DEFAULT_NAME = "sweep"


@dataclass
class LayoutJob:
    """One layout of a sweep: its layout, its request and its directory on the cluster."""

    layout: Layout
    label: str
    request: LaunchRequest

    @property
    def job_dir(self) -> str:
        return self.request.job_dir

    def path(self, name: str) -> str:
        return posixpath.join(self.job_dir, name)


@dataclass
class SweepJob:
    """A sweep ready to be written and submitted."""

    site: Site
    model: str
    nodes: int
    sweep_dir: str
    name: str
    layouts: list[LayoutJob]
    api_key: str | None
    layout_timeout: int

    @property
    def script_path(self) -> str:
        return posixpath.join(self.sweep_dir, SCRIPT)


def plan_sweep(
    site: Site,
    model: str,
    nodes: int,
    layouts: Sequence[Layout],
    *,
    home: str,
    name: str | None = None,
    sweep_dir: str | None = None,
    layout_timeout: int = 3600,
    api_key: bool = True,
    vllm_options: Mapping[str, Any] | None = None,
    vllm_args: Sequence[str] = (),
    sbatch: Mapping[str, Any] | None = None,
    sbatch_args: Sequence[str] = (),
    model_info: ModelInfo | None = None,
) -> SweepJob:
    """Build (and check, as ``submit`` does) one request per layout under one sweep directory
    (default ``<storage.workdir>/<name>-<UTC time>-<random>``, :func:`default_job_dir`)."""
    job_name = name or DEFAULT_NAME
    root = (
        expand_home(sweep_dir, home)
        if sweep_dir
        else default_job_dir(site, job_name, home=home, unique=True)
    )
    jobs = []
    for lay in layouts:
        req = build_request(
            site, model=model, nodes=nodes, tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep,
            vllm_options=vllm_options, vllm_args=vllm_args, sbatch=sbatch,
            sbatch_args=sbatch_args, job_dir=posixpath.join(root, label(lay)), name=job_name,
            model_info=model_info,
        )  # fmt: skip
        jobs.append(LayoutJob(lay, label(lay), req))
    key = secrets.token_urlsafe(32) if api_key else None
    return SweepJob(site, model, nodes, root, job_name, jobs, key, layout_timeout)


def sweep_script(job: SweepJob) -> str:
    """The sweep job's batch script (``templates/sweep.sbatch.j2``)."""
    widest = max(job.layouts, key=lambda j: j.layout.ranks_per_node)
    ctx = launcher_context(job.site, replace(widest.request, job_dir=job.sweep_dir))
    before, _, after = jobrecord.BATCH_LOG.partition("%j")
    return render_template(
        TEMPLATE,
        {
            "directives": ctx["directives"],
            "model": job.model,
            "site_name": job.site.name,
            "nodes": job.nodes,
            "layout_dirs": [j.job_dir for j in job.layouts],
            "launcher_name": jobrecord.LAUNCHER,
            "batch_log_before": before,
            "batch_log_after": after,
            "stop_name": STOP,
            "exit_name": EXIT,
            "layout_timeout": int(job.layout_timeout),
            "poll_s": POLL_S,
        },
    )


def write_sweep(job: SweepJob, executor: Executor, environ: Mapping[str, str] | None = None) -> str:
    """Write every layout's directory (launcher, 0600 ``secrets.env``, ``nccl/``) and the sweep
    script; the script's path."""
    secret_text = secrets_env({"HF_TOKEN": read_hf_token(environ), "VLLM_API_KEY": job.api_key})
    executor.makedirs(job.sweep_dir, 0o700)
    for lj in job.layouts:
        executor.makedirs(lj.job_dir, 0o700)
        executor.makedirs(lj.path(jobrecord.NCCL_DIR), 0o700)
        executor.write_text(lj.path(jobrecord.LAUNCHER), render(job.site, lj.request), 0o700)
        executor.write_text(lj.path(jobrecord.SECRETS), secret_text, 0o600)
    executor.write_text(job.script_path, sweep_script(job), 0o700)
    return job.script_path
