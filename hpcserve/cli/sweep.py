"""``hpcserve sweep``: one allocation, every candidate layout in turn, benchmarked; a table, a
recommendation inside the SLO, the raw JSON, a plot on request.

Parses options, calls :func:`hpcserve.client.sweep` and the :class:`hpcserve.sweep.session.Sweep`
it returns, prints.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from hpcserve.launch import vllm_flags


@click.command()
@click.option("--site", "-s", "site_name", required=True, help="Site name or YAML file.")
@click.option("--model", "-m", required=True, help="HF model id or a path on the cluster.")
@click.option("--nodes", "-N", type=click.IntRange(min=1), required=True, help="Nodes to hold.")
@click.option(
    "--layouts",
    default="auto",
    show_default=True,
    help="auto (every layout vLLM accepts on the nodes) or a list such as tp2,pp2,dp2 or "
    "dp2xtp4,tp4xpp2 (parts dp/tp/pp N, ep, noep joined by x).",
)
@click.option(
    "--slo",
    help="Bounds a run must meet, e.g. 'ttft_p95<=400ms,tpot_p95<=55ms' "
    "(ttft/tpot/itl/e2el, p50/p90/p95/p99/mean/median, ms or s).",
)
@click.option(
    "--concurrency", default="1,8,32", show_default=True, help="Concurrencies, comma-separated."
)
@click.option("--input-len", type=click.IntRange(1), default=128, show_default=True)
@click.option("--output-len", type=click.IntRange(1), default=128, show_default=True)
@click.option("--num-prompts", type=click.IntRange(1), default=50, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG (needs matplotlib).")
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False),
    help="Where the raw results go (default ./hpcserve-sweep-JOBID.json).",
)
@click.option(
    "--layout-timeout",
    type=click.IntRange(min=60),
    default=1800,
    show_default=True,
    help="Seconds a layout may take to answer (the sweep job stops it after that too).",
)
@click.option("--config-json", help="Read this config.json (the model's checks and EP default).")
@click.option("--name", help="A name for the sweep job (status/cancel accept it).")
@click.option("--job-dir", help="The sweep directory on the cluster (default: a new one).")
@click.option("--time", "-t", help="sbatch --time for the whole sweep (default: the site's).")
@click.option("--partition", "-p", help="sbatch --partition.")
@click.option("--account", "-A", help="sbatch --account.")
@click.option("--qos", help="sbatch --qos.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="KEY=VALUE")
@click.option("--vllm-arg", "vllm_args", multiple=True, metavar="ARG")
@vllm_flags.click_options(
    [vllm_flags.BY_NAME[n] for n in ("max_model_len", "dtype", "enforce_eager", "max_num_seqs")]
)
def sweep(**opts: Any) -> None:
    """Run every candidate layout of --nodes nodes in ONE allocation, benchmark each, recommend
    the highest throughput inside the SLO."""
    from hpcserve import client
    from hpcserve.net.bench import BenchSpec
    from hpcserve.sweep import report
    from hpcserve.sweep.layouts import parse_concurrency

    spec = BenchSpec(
        concurrencies=parse_concurrency(opts["concurrency"]),
        num_prompts=opts["num_prompts"],
        input_len=opts["input_len"],
        output_len=opts["output_len"],
    )
    names = ("max_model_len", "dtype", "enforce_eager", "max_num_seqs")
    sw = client.sweep(
        opts["model"],
        opts["site_name"],
        nodes=opts["nodes"],
        layouts=opts["layouts"],
        slo=opts["slo"],
        config_json=opts["config_json"],
        layout_timeout=opts["layout_timeout"],
        name=opts["name"],
        job_dir=opts["job_dir"],
        vllm_options={n: opts[n] for n in names},
        vllm_args=opts["vllm_args"],
        sbatch={k: opts[k] for k in ("time", "partition", "account", "qos")},
        sbatch_args=opts["sbatch_args"],
    )
    with contextlib.closing(sw):
        click.echo(
            f"sweep job {sw.job_id}: {len(sw.job.layouts)} layout(s) in {sw.job.sweep_dir}",
            err=True,
        )
        for lj in sw.job.layouts:
            click.echo(f"  {lj.label}: {lj.layout.describe()}", err=True)
        for r in sw.run(spec, lambda lj, what: click.echo(f"{lj.label}: {what}", err=True)):
            click.echo(f"{r.label}: {'benchmarked' if r.ok else 'failed: ' + r.reason}", err=True)
        lines = report.table_lines(sw.results, sw.bounds)
        pick = report.recommend(sw.results, sw.bounds)
        out = Path(opts["json_out"] or f"hpcserve-sweep-{sw.job_id}.json")
        out.write_text(report.to_json(sw.results, sw.bounds, sw.meta()) + "\n")
    for line in lines:
        click.echo(line)
    click.echo(report.verdict(pick, sw.bounds))
    click.echo(f"raw results: {out}", err=True)
    if opts["plot"]:
        if report.plot(sw.results, opts["plot"]) is None:
            click.echo("note: --plot needs matplotlib, which is not installed", err=True)
        else:
            click.echo(f"plot written to {opts['plot']}", err=True)
    if pick is None:
        sys.exit(1)
