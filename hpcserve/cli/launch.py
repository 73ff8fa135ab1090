"""``hpcserve render``, ``submit`` and ``download``: thin click adapters over the launch package.

The vLLM options come from the table in :mod:`hpcserve.launch.vllm_flags`, the sbatch keys from
the signature of :func:`hpcserve.cluster.sbatch.sbatch_directives`; each command calls its
function in :mod:`hpcserve.client`, which builds and checks the request once
(:func:`hpcserve.launch.request.build_request`). Nothing heavy is imported for ``render``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

import click

from hpcserve import client
from hpcserve.launch import vllm_flags


def _site_value_options() -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """--image, --venv, --hf-cache: the per-user site values (the site file's otherwise)."""
    return [
        click.option("--image", metavar="PATH", help="container.image: the .sif on the cluster."),
        click.option("--venv", metavar="DIR", help="container.venv (container.runtime none)."),
        click.option("--hf-cache", metavar="DIR", help="storage.hf_cache: the shared HF_HOME."),
    ]


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
            help="Nodes; one vLLM process per node (PP = nodes unless --pp or --dp).",
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
        *_site_value_options(),
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
            "--keep-alive",
            is_flag=True,
            help="A service: each job submits its successor before its time limit and hands "
            "over to it, behind one name and tunnel (needs --name; docs/service.md).",
        ),
        click.option(
            "--until",
            metavar="DATE",
            help="With --keep-alive: no successor for a job that ends after DATE "
            "(2026-12-24, 2026-12-24T18:00, or a duration from now such as 3d).",
        ),
        click.option(
            "--idle-stop",
            metavar="DURATION",
            help="End the job (a service: its chain) after DURATION with no request running "
            "or waiting, e.g. 30m, 1h30m.",
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


def _options(opts: dict[str, Any]) -> dict[str, Any]:
    """render/submit's options as :func:`hpcserve.client.launch_request` keywords."""
    vllm_options = {f.name: opts.pop(f.name) for f in vllm_flags.OPTIONS}
    return {
        "nodes": opts["nodes"],
        "tp": vllm_options.pop("tensor_parallel_size"),
        "pp": vllm_options.pop("pipeline_parallel_size"),
        "dp": vllm_options.pop("data_parallel_size"),
        "ep": vllm_options.pop("enable_expert_parallel"),
        "vllm_options": vllm_options,
        "vllm_args": opts["vllm_args"],
        "sbatch": {k: opts[k] for k in ("time", "partition", "account", "qos")},
        "sbatch_args": opts["sbatch_args"],
        "job_dir": opts["job_dir"],
        "name": opts["job_name"],
        "image": opts["image"],
        "venv": opts["venv"],
        "hf_cache": opts["hf_cache"],
        "keep_alive": opts["keep_alive"],
        "until": opts["until"],
        "idle_stop": opts["idle_stop"],
    }


@click.command()
@_launch_options
def render(**opts: Any) -> None:
    """Print the sbatch launcher for a model on a site."""
    script = client.render(opts["model"], opts["site_name"], **_options(opts))
    click.echo(script, nl=False)


@click.command()
@_launch_options
@click.option("--dry-run", is_flag=True, help="Write the job directory but do not run sbatch.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def submit(**opts: Any) -> None:
    """Render the launcher, write it into a new job directory and submit it with sbatch."""
    model, site, api_key = opts["model"], opts["site_name"], not opts["no_api_key"]
    if opts["dry_run"]:
        sub = client.dry_run(model, site, api_key=api_key, **_options(opts))
    else:
        with client.submit(model, site, api_key=api_key, **_options(opts)) as job:
            assert job.submission is not None
            sub = job.submission
    for warning in sub.warnings:
        click.echo(f"warning: {warning}", err=True)
    if opts["as_json"]:
        click.echo(json.dumps(sub.to_dict(), indent=2))
    elif sub.job_id is None:
        where = "here" if sub.submit_to == "local" else f"on {sub.submit_to}"
        click.echo(
            f"dry run: wrote {sub.launcher} (not submitted; would run "
            f"{shlex.join(sub.command)} {where})"
        )
    else:
        click.echo(sub.job_id)


@click.command()
@click.argument("model")
@click.option("--site", "-s", "site_name", required=True, help="Site name or YAML file.")
@click.option("--revision", help="Branch, tag or commit of the model.")
@click.option("--hf-cache", metavar="DIR", help="storage.hf_cache: the shared HF_HOME.")
def download(model: str, site_name: str, revision: str | None, hf_cache: str | None) -> None:
    """Fetch MODEL into the site's shared HF cache, from the login node (token via stdin)."""
    site = client.load_site(site_name, hf_cache=hf_cache)
    last = client.download(model, site, revision=revision)
    click.echo(
        f"{model} is in {site.storage.hf_cache} on {site.name}" + (f": {last}" if last else "")
    )
