"""``hpcserve render``, ``submit`` and ``download``: thin click adapters over the launch package.

The vLLM options come from the table in :mod:`hpcserve.launch.vllm_flags`; the sbatch keys from the
signature of :func:`hpcserve.cluster.sbatch.sbatch_directives`; the request is built and checked
by :func:`hpcserve.launch.request.build_request`. Nothing heavy is imported for ``render``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from hpcserve.errors import RemoteError, UsageError
from hpcserve.launch import vllm_flags
from hpcserve.launch.render import render as render_script
from hpcserve.launch.request import LaunchRequest, build_request
from hpcserve.sites.loader import load_site
from hpcserve.sites.schema import Site


def _launch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by render and submit (vLLM options generated from the flag table)."""
    decorators = [
        click.option("--site", "-s", "site_name", required=True, help="Site name or YAML file."),
        click.option(
            "--nodes",
            "-N",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Nodes; one vLLM process per node (PP = nodes unless --pp).",
        ),
        click.option("--model", "-m", required=True, help="HF model id or a path on the cluster."),
        vllm_flags.click_options(),
        click.option(
            "--vllm-arg",
            "vllm_args",
            multiple=True,
            metavar="ARG",
            help="Extra `vllm serve` argument, one argv element each (repeatable), "
            "e.g. --vllm-arg=--max-num-seqs=64.",
        ),
        click.option("--time", "-t", help="sbatch --time (default: the site's)."),
        click.option("--partition", "-p", help="sbatch --partition."),
        click.option("--account", "-A", help="sbatch --account."),
        click.option("--qos", help="sbatch --qos."),
        click.option(
            "--sbatch-arg",
            "sbatch_args",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any other sbatch option, e.g. --sbatch-arg mem=0 (repeatable).",
        ),
        click.option("--job-dir", help="Job directory on the cluster (default: a new one)."),
        click.option(
            "--name",
            "job_name",
            help="A short name for the job (SLURM job name, and what other commands accept "
            "instead of the id).",
        ),
        click.option(
            "--no-api-key",
            is_flag=True,
            help="Serve without an API key (default: a random per-job VLLM_API_KEY).",
        ),
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def _request(site: Site, opts: dict[str, Any]) -> LaunchRequest:
    """The options of render/submit handed to :func:`hpcserve.launch.request.build_request`."""
    vllm_options = {f.name: opts.pop(f.name) for f in vllm_flags.OPTIONS}
    return build_request(
        site,
        model=opts["model"],
        nodes=opts["nodes"],
        tp=vllm_options.pop("tensor_parallel_size"),
        pp=vllm_options.pop("pipeline_parallel_size"),
        vllm_options=vllm_options,
        vllm_args=opts["vllm_args"],
        sbatch={k: opts[k] for k in ("time", "partition", "account", "qos")},
        sbatch_args=opts["sbatch_args"],
        job_dir=opts["job_dir"],
        name=opts["job_name"],
    )


@click.command()
@_launch_options
def render(**opts: Any) -> None:
    """Print the sbatch launcher for a model on a site."""
    site = load_site(opts["site_name"])
    click.echo(render_script(site, _request(site, opts)), nl=False)


@click.command()
@_launch_options
@click.option("--dry-run", is_flag=True, help="Write the job directory but do not run sbatch.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def submit(**opts: Any) -> None:
    """Render the launcher, write it into a new job directory and submit it with sbatch."""
    from hpcserve.cluster.connect import executor_for, submits_locally
    from hpcserve.launch import submit as submitting

    site = load_site(opts["site_name"])
    req = _request(site, opts)
    executor = executor_for(site)
    try:
        sub = submitting.submit(
            site,
            req,
            executor,
            remote=not submits_locally(site),
            dry_run=opts["dry_run"],
            api_key=not opts["no_api_key"],
            name=opts["job_name"],
        )
    finally:
        executor.close()
    for warning in sub.warnings:
        click.echo(f"warning: {warning}", err=True)
    if opts["as_json"]:
        import json

        click.echo(json.dumps(sub.to_dict(), indent=2))
    elif sub.job_id is None:
        click.echo(f"dry run: wrote {sub.launcher} (not submitted)")
    else:
        click.echo(sub.job_id)


@click.command()
@click.argument("model")
@click.option("--site", "-s", "site_name", required=True, help="Site name or YAML file.")
@click.option("--revision", help="Branch, tag or commit of the model.")
def download(model: str, site_name: str, revision: str | None) -> None:
    """Fetch MODEL into the site's shared HF cache, from the login node (token via stdin)."""
    from hpcserve.cluster.connect import executor_for
    from hpcserve.launch.submit import download_argv, read_hf_token

    site = load_site(site_name)
    if not site.storage.hf_cache:
        raise UsageError(f"site {site.name} has no storage.hf_cache to download into")
    if model.startswith("-") or "\n" in model:
        raise UsageError(f"{model!r} is not a model id")
    executor = executor_for(site)
    try:
        token = read_hf_token()
        result = executor.run(
            download_argv(site, model, revision), input=(token or "") + "\n", timeout=None
        )
    finally:
        executor.close()
    if not result.ok:
        raise RemoteError(f"download of {model} failed: {result.describe()}")
    tail = result.stdout.strip().splitlines()
    click.echo(
        f"{model} is in {site.storage.hf_cache} on {site.name}" + (f": {tail[-1]}" if tail else "")
    )
