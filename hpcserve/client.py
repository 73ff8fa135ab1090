"""hpcserve from Python: the functions every command and a notebook call (docs/python-api.md).

``import hpcserve`` reaches these lazily (``hpcserve/__init__.py``), so importing it stays cheap.
:func:`plan` sizes a model, :func:`render` gives the launcher, :func:`submit` submits it and
returns a :class:`~hpcserve.jobs.handle.Job` (``wait``, ``status``, ``endpoint``, ``query``,
``logs``, ``cancel``); :func:`open_job` opens a job submitted earlier; :func:`doctor` checks
a site before anything is launched there. The command line's
``plan``, ``render`` and ``submit`` are thin adapters over these, so both take one path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcserve.sites.schema import Site

if TYPE_CHECKING:
    from collections.abc import Callable

    from hpcserve.doctor.checks import Check, DoctorReport
    from hpcserve.jobs.handle import Job
    from hpcserve.launch.request import LaunchRequest
    from hpcserve.launch.submit import Submission
    from hpcserve.plan.planner import Plan
    from hpcserve.sweep.session import Sweep


def load_site(
    site: str | Site,
    *,
    account: str | None = None,
    image: str | None = None,
    venv: str | None = None,
    hf_cache: str | None = None,
) -> Site:
    """``site`` itself, or the site of that name or YAML file (:mod:`hpcserve.sites.loader`),
    with the per-user values given here laid on top (``--account``, ``--image``, ``--venv``,
    ``--hf-cache``: :func:`hpcserve.sites.loader.apply_overrides`)."""
    from hpcserve.sites import loader

    s = site if isinstance(site, Site) else loader.load_site(site)
    return loader.apply_overrides(s, account=account, image=image, venv=venv, hf_cache=hf_cache)


def _launch_site(site: str | Site, options: dict[str, Any], *, submitting: bool) -> Site:
    """The site with the launch ``options``' per-user values (``image``, ``venv``, ``hf_cache``
    taken out of ``options``; the account of ``sbatch`` or ``sbatch_args``), its must-have
    values checked before anything contacts the cluster: errors when ``submitting``, else
    warnings."""
    from hpcserve.cluster.sbatch import parse_sbatch_args
    from hpcserve.sites.loader import check_values

    sbatch = {**(options.get("sbatch") or {}), **parse_sbatch_args(options.get("sbatch_args", ()))}
    account = sbatch.get("account")  # --account or --sbatch-arg account=X, as sbatch sees it
    s = load_site(
        site,
        account=account,
        image=options.pop("image", None),
        venv=options.pop("venv", None),
        hf_cache=options.pop("hf_cache", None),
    )
    check_values(s, submitting=submitting)
    return s


def plan(
    model: str,
    site: str | Site,
    *,
    nodes: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    kv_cache_dtype: str | None = None,
    dtype: str | None = None,
    config_json: str | None = None,
    dp: int | None = None,
    ep: bool | None = None,
    revision: str | None = None,
) -> Plan:
    """Size ``model`` for ``site`` as ``hpcserve plan`` does; ``nodes=None`` finds the fewest.

    ``Plan.fit.fits`` says whether it fits, ``Plan.lines()`` is what the command prints.
    """
    from hpcserve.plan.modelinfo import load_model_info
    from hpcserve.plan.planner import plan_for_site

    s = load_site(site)
    return plan_for_site(
        s,
        load_model_info(model, config_json, revision=revision),
        nodes=nodes,
        tp=tp,
        pp=pp,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype,
        dtype=dtype,
        dp=dp,
        ep=ep,
    )


def _request(model: str, site: Site, options: dict[str, Any]) -> LaunchRequest:
    from hpcserve.launch.request import build_request

    return build_request(site, model=model, **options)


def render(model: str, site: str | Site, **options: Any) -> str:
    """The sbatch launcher ``hpcserve render`` prints (``options`` as for :func:`submit`)."""
    from hpcserve.launch.render import render as render_launcher

    s = _launch_site(site, options, submitting=False)
    return render_launcher(s, _request(model, s, options))


def submit(model: str, site: str | Site, *, api_key: bool = True, **options: Any) -> Job:
    """Render the launcher, submit it as ``hpcserve submit`` does, and return the job's handle.

    ``options`` are :func:`hpcserve.launch.request.build_request`'s, checked there: ``nodes``,
    ``name``, ``tp``, ``pp``, ``vllm_options`` (the Python names of ``hpcserve submit``'s vLLM
    options, e.g. ``max_model_len``), ``vllm_args``, ``sbatch`` (sbatch keys such as ``time``),
    ``sbatch_args`` (``KEY=VALUE`` as ``--sbatch-arg``), ``job_dir``; and the per-user site
    values ``image``, ``venv``, ``hf_cache`` (``sbatch['account']`` too). A must-have value the
    site still lacks is an error before anything contacts the cluster. The handle's
    ``submission`` holds what submit did (job directory, launcher, warnings). Close the handle
    (or use it in a ``with`` block) when done; the job keeps running until cancelled.
    """
    from hpcserve.jobs.handle import submit as submit_job

    s = _launch_site(site, options, submitting=True)
    req = _request(model, s, options)
    return submit_job(s, req, name=options.get("name"), api_key=api_key)


def dry_run(model: str, site: str | Site, *, api_key: bool = True, **options: Any) -> Submission:
    """Write the job directory as :func:`submit` would, without running sbatch."""
    from hpcserve.cluster.connect import executor_for
    from hpcserve.launch.submit import submit as submit_launcher

    s = _launch_site(site, options, submitting=True)
    req = _request(model, s, options)
    executor = executor_for(s)
    try:
        return submit_launcher(s, req, executor, dry_run=True, api_key=api_key)
    finally:
        executor.close()


def download(
    model: str, site: str | Site, *, revision: str | None = None, hf_cache: str | None = None
) -> str:
    """Fetch ``model`` into the site's shared HF cache (``hf_cache`` overrides it) from its
    login node, as ``hpcserve download`` does; the download's last line."""
    from hpcserve.cluster.connect import executor_for
    from hpcserve.launch.submit import download as download_model

    s = load_site(site, hf_cache=hf_cache)
    executor = executor_for(s)
    try:
        return download_model(s, model, revision, executor)
    finally:
        executor.close()


def doctor(
    site: str | Site,
    *,
    nodes: int = 2,
    model: str | None = None,
    timeout_s: float = 900.0,
    on_check: Callable[[Check], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DoctorReport:
    """Check ``site`` as ``hpcserve doctor`` does: here, on its login node, then in a probe job
    on ``nodes`` nodes (cancelled on any way out). ``DoctorReport.checks`` holds each check in
    order, ``exit_code`` is 1 when one failed; ``on_check`` sees each as it is known."""
    from hpcserve.doctor.run import doctor as run_doctor

    return run_doctor(
        site, nodes=nodes, model=model, timeout_s=timeout_s, on_check=on_check, progress=progress
    )


def sweep(
    model: str,
    site: str | Site,
    *,
    nodes: int,
    layouts: str = "auto",
    slo: str | None = None,
    config_json: str | None = None,
    layout_timeout: int = 1800,
    **options: Any,
) -> Sweep:
    """Submit ``hpcserve sweep``'s one job: every layout of ``layouts`` (``auto``: all that vLLM
    accepts) on ``nodes`` nodes, run in turn; iterate ``Sweep.run(spec)`` to benchmark them.

    ``slo`` is checked first (:func:`hpcserve.sweep.slo.parse_slo`); ``options`` are
    :func:`submit`'s (``name``, ``vllm_options``, ``vllm_args``, ``sbatch``, ``sbatch_args``,
    ``job_dir`` as the sweep directory, ``image``, ``venv``, ``hf_cache``).
    """
    from hpcserve.cluster.connect import executor_for
    from hpcserve.plan.modelinfo import load_model_info, local_model_info
    from hpcserve.sweep.session import start
    from hpcserve.sweep.slo import parse_slo

    bounds = parse_slo(slo)
    s = _launch_site(site, options, submitting=True)
    revision = (options.get("vllm_options") or {}).get("revision")
    info = (
        load_model_info(model, config_json)
        if config_json
        else local_model_info(model, revision=revision)
    )
    executor = executor_for(s)
    try:
        return start(
            s, model, nodes, layouts, bounds, executor, model_info=info,
            name=options.get("name"), sweep_dir=options.get("job_dir"),
            layout_timeout=layout_timeout, vllm_options=options.get("vllm_options"),
            vllm_args=options.get("vllm_args", ()), sbatch=options.get("sbatch"),
            sbatch_args=options.get("sbatch_args", ()),
        )  # fmt: skip
    except BaseException:
        executor.close()
        raise


def open_job(ref: str) -> Job:
    """The handle of a job submitted earlier (its name, id or SITE:ID in the registry)."""
    from hpcserve.jobs.handle import Job

    return Job.open(ref)
