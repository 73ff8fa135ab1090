"""``hpcserve doctor``: a thin click adapter over :func:`hpcserve.client.doctor`."""

from __future__ import annotations

import sys

import click

from hpcserve import client


@click.command("doctor")
@click.option("--site", "-s", "site_name", required=True, help="Site name or YAML file.")
@click.option(
    "--nodes",
    "-N",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Nodes of the probe job.",
)
@click.option("--model", "-m", help="Also check the HF cache holds this model (offline nodes).")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=900,
    show_default=True,
    help="Seconds the probe job may wait in the queue and run before doctor cancels it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(site_name: str, nodes: int, model: str | None, timeout_s: float, as_json: bool) -> None:
    """Prove a site works before a model is loaded: here, on the login node, in a probe job.

    Each check prints one line: pass, FAIL with the fix, or skip with why. Exit status 0
    when nothing failed, 1 otherwise.
    """
    from hpcserve.doctor import report as rep
    from hpcserve.doctor.checks import Check

    def show(check: Check) -> None:
        for line in rep.check_lines(check):
            click.echo(line)

    def progress(message: str) -> None:
        click.echo(f"      {message}", err=True)

    result = client.doctor(
        site_name,
        nodes=nodes,
        model=model,
        timeout_s=timeout_s,
        on_check=None if as_json else show,
        progress=progress,
    )
    if as_json:
        click.echo(rep.to_json(result))
    else:
        for line in rep.summary_lines(result):
            click.echo(line)
    sys.exit(result.exit_code)
