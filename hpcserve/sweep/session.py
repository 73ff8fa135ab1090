"""Start a sweep and hold it: :func:`start` checks everything, writes the sweep directory,
submits the ONE sweep job and records it in the registry (so ``hpcserve status``/``cancel``
know it by name); :class:`Sweep` then measures each layout in turn and cancels the job when
the caller stops early."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcserve.cluster.executor import Executor
from hpcserve.cluster.slurm import Slurm
from hpcserve.jobs.record import JobRecord
from hpcserve.net.bench import BenchSpec
from hpcserve.plan.modelinfo import ModelInfo
from hpcserve.sites.schema import Site
from hpcserve.sweep.job import LayoutJob, SweepJob, plan_sweep, write_sweep
from hpcserve.sweep.layouts import sweep_layouts
from hpcserve.sweep.run import LayoutResult, SweepRun
from hpcserve.sweep.slo import Bound


@dataclass
class Sweep:
    """A submitted sweep: its job, the SLO it is judged by, and where it runs."""

    job: SweepJob
    job_id: str
    executor: Executor
    bounds: tuple[Bound, ...]
    slurm: Slurm
    results: list[LayoutResult] = field(default_factory=list)

    def run(
        self, spec: BenchSpec, on_layout: Callable[[LayoutJob, str], None] | None = None
    ) -> Iterator[LayoutResult]:
        """Measure every layout in turn (the job is cancelled if this stops early)."""
        runner = SweepRun(
            self.job, self.job_id, self.executor, spec, slurm=self.slurm, on_layout=on_layout
        )
        done = False
        try:
            for result in runner.results():
                self.results.append(result)
                yield result
            done = True
        finally:
            if not done:
                self.cancel()

    def cancel(self) -> None:
        self.slurm.cancel(self.job_id)

    def close(self) -> None:
        self.executor.close()

    def meta(self) -> dict[str, Any]:
        """What the raw JSON says of the sweep itself."""
        return {
            "job_id": self.job_id,
            "site": self.job.site.name,
            "model": self.job.model,
            "nodes": self.job.nodes,
            "sweep_dir": self.job.sweep_dir,
        }


def start(
    site: Site,
    model: str,
    nodes: int,
    layouts: str,
    bounds: tuple[Bound, ...],
    executor: Executor,
    *,
    model_info: ModelInfo | None = None,
    name: str | None = None,
    sweep_dir: str | None = None,
    layout_timeout: int = 1800,
    vllm_options: Mapping[str, Any] | None = None,
    vllm_args: Sequence[str] = (),
    sbatch: Mapping[str, Any] | None = None,
    sbatch_args: Sequence[str] = (),
) -> Sweep:
    """Resolve the layouts (:func:`hpcserve.sweep.layouts.sweep_layouts`), build and check one
    request each, write the sweep directory and submit the sweep job."""
    from hpcserve.jobs.registry import Registry

    if name is not None:
        Registry().check_free_name(name)
    chosen = sweep_layouts(site, model_info, nodes, layouts)
    job = plan_sweep(
        site, model, nodes, chosen, home=executor.home(), name=name, sweep_dir=sweep_dir,
        layout_timeout=layout_timeout, vllm_options=vllm_options, vllm_args=vllm_args,
        sbatch=sbatch, sbatch_args=sbatch_args, model_info=model_info,
    )  # fmt: skip
    script = write_sweep(job, executor)
    slurm = Slurm(executor, timeout_s=120)
    job_id, _ = slurm.submit(script)
    first = chosen[0]
    Registry().add_submitted(
        JobRecord(
            job_id=job_id,
            site=site.name,
            model=model,
            nodes=nodes,
            tp=first.tp,
            pp=first.pp,
            job_dir=job.sweep_dir,
            submitted_at=time.time(),
            remote=executor.remote,
            name=name,
            extra={"sweep": [lj.label for lj in job.layouts]},
        )  # fmt: skip
    )
    return Sweep(job, job_id, executor, bounds, slurm)
