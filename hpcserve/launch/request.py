"""A launch request: what the user asked for, built and checked in one place.

:func:`build_request` is what ``render``, ``submit`` and the Python API call with the user's
choices; :func:`check_request` is the one validation (the request's own fields, the vLLM values
against the flag table, the job name, the sbatch time and the layout on the site), which
:func:`hpcserve.launch.render.render` applies to any request it is given.
"""

from __future__ import annotations

import posixpath
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcserve.cluster.connect import expand_home
from hpcserve.cluster.sbatch import parse_sbatch_args
from hpcserve.errors import UsageError
from hpcserve.launch import vllm_flags
from hpcserve.plan import layout as layout_mod
from hpcserve.plan.layout import Layout
from hpcserve.plan.modelinfo import ModelInfo, derived_max_len, local_model_info
from hpcserve.rules import (
    check_duration,
    check_job_name,
    check_slurm_time,
    parse_until,
    resolve_dtype,
    serving_dtype,
)
from hpcserve.sites.schema import Site

DEFAULT_JOB_NAME = "hpcserve"  # SLURM job name when the user gave no --name


@dataclass
class LaunchRequest:
    """What the user asked for (site defaults are applied by the renderer)."""

    model: str
    nodes: int
    job_dir: str  # absolute, or ~/... (expanded on the cluster); "" = :func:`default_job_dir`
    job_name: str = DEFAULT_JOB_NAME
    tp: int | None = None
    pp: int | None = None
    dp: int | None = None  # data-parallel ranks (None: 1)
    ep: bool | None = None  # expert parallelism (None: the layout's default for the model)
    vllm_options: dict[str, Any] = field(default_factory=dict)  # exposed flags, python names
    vllm_args: list[str] = field(default_factory=list)  # --vllm-arg, one argv element each
    sbatch: dict[str, Any] = field(default_factory=dict)  # overrides for sbatch_directives
    model_info: ModelInfo | None = None  # the model's config when found here (layout checks)
    keep_alive: bool = False  # a service: each job submits its successor (hpcserve.service)
    until: float | None = None  # with keep_alive: no successor for a job ending after this
    idle_stop_s: int | None = None  # end the job after this long with no request


def default_job_dir(
    site: Site,
    name: str,
    *,
    home: str | None = None,
    unique: bool = False,
    now: float | None = None,
) -> str:
    """``<storage.workdir>/<name>``, the job directory when the user names none.

    ``unique`` (what ``submit`` asks for) appends ``-<UTC time>-<random>`` so two submissions never
    share a directory; ``home`` expands a leading ``~`` (else the launcher expands it).
    """
    workdir = site.storage.workdir if home is None else expand_home(site.storage.workdir, home)
    leaf = name
    if unique:
        leaf += f"-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"
    return posixpath.join(workdir, leaf)


def choose_layout(site: Site, req: LaunchRequest) -> Layout:
    """The layout for ``req`` on ``site``: :func:`hpcserve.plan.layout.choose_layout` decides,
    with the site's ``engine.layout``, as it does for ``plan``."""
    return layout_mod.choose_layout(
        req.model_info, req.nodes, site.node.gpus, req.tp, req.pp, site.engine.layout,
        req.dp, req.ep,
    )  # fmt: skip


def _model_problems(model: str) -> list[str]:
    if not model or model.startswith("-") or "\0" in model or "\n" in model:
        return [f"--model {model!r}: expected a model id or path"]
    return []


def _job_dir_problems(job_dir: str) -> list[str]:
    if not job_dir:
        return []  # the default
    problems = []
    if not (job_dir.startswith("/") or job_dir.startswith("~/")):
        problems.append(f"job dir {job_dir!r}: must be absolute (or start with ~/)")
    if any(c in job_dir for c in "\n\r\0"):
        problems.append(f"job dir {job_dir!r}: must be one line")
    return problems


def _name_problems(name: str) -> list[str]:
    try:
        check_job_name(name, "--name")
    except UsageError as e:
        return [str(e)]
    return []


def _option_problems(req: LaunchRequest) -> list[str]:
    unknown = set(req.vllm_options) - {f.name for f in vllm_flags.OPTIONS}
    if unknown:
        return [f"not a render option: {', '.join(sorted(unknown))}"]
    values = {
        **req.vllm_options,
        "tensor_parallel_size": req.tp,
        "pipeline_parallel_size": req.pp,
        "data_parallel_size": req.dp,
    }
    return vllm_flags.check_values(values)


def _sbatch_problems(sbatch: Mapping[str, Any]) -> list[str]:
    if sbatch.get("time") is None:
        return []
    try:
        check_slurm_time(str(sbatch["time"]))
    except UsageError as e:
        return [str(e)]
    return []


def _dtype_problems(site: Site, req: LaunchRequest) -> list[str]:
    """An explicit ``--dtype`` the site's GPU cannot run, refused by the rule ``plan`` applies
    (:func:`hpcserve.rules.serving_dtype`; vLLM refuses bfloat16 below compute capability 8.0)."""
    dtype = req.vllm_options.get("dtype")
    if dtype is None:
        return []
    from hpcserve.plan.planner import node_shape

    node = node_shape(site)
    try:
        serving_dtype(str(dtype), "auto", node.supported_dtypes, node.describe())
    except UsageError as e:
        return [str(e)]
    return []


def _monitor_problems(req: LaunchRequest) -> list[str]:
    """``--until`` only with ``--keep-alive``; ``--idle-stop`` a positive number of seconds."""
    problems = []
    if req.until is not None and not req.keep_alive:
        problems.append("--until needs --keep-alive")
    if req.idle_stop_s is not None and req.idle_stop_s <= 0:
        problems.append(f"--idle-stop {req.idle_stop_s!r}: must be at least one second")
    return problems


def monitor_options(
    *,
    keep_alive: bool,
    until: str | float | None,
    idle_stop: str | int | None,
    name: str | None,
    now: float | None = None,
) -> tuple[float | None, int | None]:
    """``(until, idle_stop_s)`` from ``--until`` (:func:`hpcserve.rules.parse_until`; a
    number is a Unix time) and ``--idle-stop`` (:func:`hpcserve.rules.check_duration`; a
    number is seconds); ``--keep-alive`` needs ``--name``, the name the service is reached by."""
    if keep_alive and not name:
        raise UsageError("--keep-alive needs --name: a service is reached by its name")
    clock = time.time() if now is None else now
    when = None
    if until is not None:
        when = float(until) if isinstance(until, int | float) else parse_until(until, clock)
    idle = None
    if idle_stop is not None:
        idle = int(idle_stop) if isinstance(idle_stop, int) else check_duration(idle_stop)
    return when, idle


def check_request(site: Site, req: LaunchRequest) -> Layout:
    """Refuse a bad request with one UsageError listing every problem; else its layout."""
    problems = _model_problems(req.model)
    problems += _name_problems(req.job_name)
    problems += _job_dir_problems(req.job_dir)
    option_problems = _option_problems(req)
    problems += option_problems or _dtype_problems(site, req)  # a dtype word first, then the GPU
    set_flags = (*vllm_flags.ALWAYS_SET, *req.vllm_options)
    problems += vllm_flags.check_extra_args(req.vllm_args, set_flags)
    problems += _sbatch_problems(req.sbatch)
    problems += _monitor_problems(req)
    problems += vllm_flags.context_problems(
        req.vllm_options.get("max_model_len"),
        derived_max_len(req.model_info) if req.model_info else None,
        site.engine.env,
    )
    if problems:
        raise UsageError("; ".join(problems))
    site_problems = vllm_flags.check_extra_args(site.engine.extra_args)
    if site_problems:
        raise UsageError(f"site {site.name} engine.extra_args: " + "; ".join(site_problems))
    return choose_layout(site, req)


def build_request(
    site: Site,
    *,
    model: str,
    nodes: int = 1,
    tp: int | None = None,
    pp: int | None = None,
    dp: int | None = None,
    ep: bool | None = None,
    vllm_options: Mapping[str, Any] | None = None,
    vllm_args: Sequence[str] = (),
    sbatch: Mapping[str, Any] | None = None,
    sbatch_args: Sequence[str] = (),
    job_dir: str | None = None,
    name: str | None = None,
    model_info: ModelInfo | None = None,
    keep_alive: bool = False,
    until: str | float | None = None,
    idle_stop: str | int | None = None,
) -> LaunchRequest:
    """The checked request for ``model`` on ``site`` (UsageError naming every problem).

    ``vllm_options`` are flag-table values by python name (None = unset; ``dtype`` is resolved,
    ``half`` -> ``float16``); ``dp``/``ep`` are the data-parallel ranks and expert parallelism
    (:func:`hpcserve.plan.layout.choose_layout`); ``sbatch`` holds
    :func:`~hpcserve.cluster.sbatch.sbatch_directives` keywords and ``sbatch_args``
    ``KEY=VALUE`` strings (these win); ``job_dir`` None means :func:`default_job_dir`;
    ``model_info`` defaults to the model's config when it is here.
    ``keep_alive``, ``until`` and ``idle_stop`` are :func:`monitor_options`'.
    """
    when, idle_s = monitor_options(
        keep_alive=keep_alive, until=until, idle_stop=idle_stop, name=name
    )
    options = {k: v for k, v in (vllm_options or {}).items() if v is not None}
    extra = dict(sbatch or {})
    extra.update(parse_sbatch_args(sbatch_args))
    req = LaunchRequest(
        model=model,
        nodes=nodes,
        job_dir=job_dir or "",
        job_name=name or DEFAULT_JOB_NAME,
        tp=tp,
        pp=pp,
        dp=dp,
        ep=ep,
        vllm_options=options,
        vllm_args=list(vllm_args),
        sbatch={k: v for k, v in extra.items() if v is not None},
        model_info=(
            model_info
            if model_info is not None
            else local_model_info(model, revision=options.get("revision"))
        ),
        keep_alive=keep_alive,
        until=when,
        idle_stop_s=idle_s,
    )
    check_request(site, req)
    if "dtype" in options:
        req.vllm_options["dtype"] = resolve_dtype(str(options["dtype"]))
    return req
