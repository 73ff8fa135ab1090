"""hpcserve from Python: plan, submit, and the job handle (see docs/python-api.md).

``from hpcserve import plan, submit, Job`` reaches these lazily (``hpcserve/__init__.py``), so
importing :mod:`hpcserve` stays cheap. A :class:`~hpcserve.jobs.client.Job` does the rest:
``wait``, ``status``, ``endpoint`` (base URL and API key), ``query``, ``logs``, ``cancel``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from hpcserve.jobs.client import Job
from hpcserve.launch.render import LaunchRequest
from hpcserve.plan.planner import Plan
from hpcserve.sites.schema import Site


def load_site(site: str | Site) -> Site:
    """``site`` itself, the site of that name, or the site in that YAML file."""
    if isinstance(site, Site):
        return site
    from hpcserve.sites.loader import load_site as by_name
    from hpcserve.sites.loader import load_site_file

    is_file = site.endswith((".yaml", ".yml")) or os.sep in site
    loaded: Site = load_site_file(site) if is_file else by_name(site)
    return loaded


def plan(
    model: str,
    site: str | Site,
    *,
    nodes: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    kv_cache_dtype: str = "auto",
    dtype: str = "auto",
    config_json: str | None = None,
) -> Plan:
    """Size ``model`` for ``site`` as ``hpcserve plan`` does; ``nodes=None`` finds the fewest.

    ``Plan.fit.fits`` says whether it fits, ``Plan.lines()`` is what the command prints.
    """
    from hpcserve.plan.modelinfo import load_model_info
    from hpcserve.plan.planner import NodeShape, make_plan

    s = load_site(site)
    info = load_model_info(model, config_json)
    info.served_dtype = dtype
    node = NodeShape(
        gpus=s.node.gpus,
        gpu_memory_gb=s.node.gpu_memory_gb,
        gpu_model=s.node.gpu_model,
        site=s.name,
    )
    return make_plan(
        info,
        node,
        nodes=nodes,
        tp=tp,
        pp=pp,
        max_model_len=max_model_len,
        utilization=gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype,
    )


def submit(
    model: str,
    site: str | Site,
    *,
    nodes: int = 1,
    name: str | None = None,
    tp: int | None = None,
    pp: int | None = None,
    vllm_options: Mapping[str, Any] | None = None,
    vllm_args: Sequence[str] = (),
    sbatch: Mapping[str, Any] | None = None,
    job_dir: str | None = None,
    api_key: bool = True,
) -> Job:
    """Render the launcher, submit it as ``hpcserve submit`` does, and return the job's handle.

    ``vllm_options`` take the Python names of ``hpcserve submit``'s vLLM options (e.g.
    ``max_model_len``), ``sbatch`` the sbatch keys (e.g. ``time``, ``partition``). Close the
    handle (or use it in a ``with`` block) when done; the job keeps running until cancelled.
    """
    from hpcserve.jobs import client

    s = load_site(site)
    req = _request(
        model,
        nodes=nodes,
        name=name,
        tp=tp,
        pp=pp,
        vllm_options=dict(vllm_options or {}),
        vllm_args=list(vllm_args),
        sbatch=dict(sbatch or {}),
        job_dir=job_dir,
    )
    return client.submit(s, req, name=name, api_key=api_key)


def _request(
    model: str,
    *,
    nodes: int,
    name: str | None,
    tp: int | None,
    pp: int | None,
    vllm_options: dict[str, Any],
    vllm_args: list[str],
    sbatch: dict[str, Any],
    job_dir: str | None,
) -> LaunchRequest:
    """The :class:`LaunchRequest` for :func:`submit` (the step ``hpcserve submit`` shares)."""
    from hpcserve.launch.render import DEFAULT_JOB_NAME
    from hpcserve.plan.modelinfo import local_model_info

    return LaunchRequest(
        model=model,
        nodes=nodes,
        job_dir=job_dir or "",
        job_name=name or DEFAULT_JOB_NAME,
        tp=tp,
        pp=pp,
        vllm_options={k: v for k, v in vllm_options.items() if v is not None},
        vllm_args=vllm_args,
        sbatch=sbatch,
        model_info=local_model_info(model),
    )
