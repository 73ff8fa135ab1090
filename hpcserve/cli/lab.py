"""`hpcserve lab up|down|status`: the local SLURM cluster of real parts, like `kind`."""

from __future__ import annotations

import json

import click

from hpcserve.errors import UsageError


@click.group("lab")
def lab() -> None:
    """Run a local SLURM cluster with real vLLM (CPU) for trying hpcserve. Needs root."""


@lab.command("up")
@click.option("--nodes", default=2, show_default=True, type=int, help="Compute nodes (>= 1).")
@click.option("--no-vllm", is_flag=True, help="Skip the vLLM venv and the tiny model.")
def up(nodes: int, no_vllm: bool) -> None:
    """Install what is missing and start the lab (idempotent)."""
    from hpcserve.lab.cluster import up as lab_up
    from hpcserve.lab.config import LabLayout

    if not 1 <= nodes <= 50:
        raise UsageError(f"--nodes must be between 1 and 50, got {nodes}")
    lab_up(LabLayout(nodes=nodes), vllm=not no_vllm, echo=click.echo)


@lab.command("down")
@click.option("--purge", is_flag=True, help="Also remove the cache (vLLM venv, tiny model).")
def down(purge: bool) -> None:
    """Stop every lab process and remove its namespaces, bridge and state (idempotent)."""
    from hpcserve.lab.cluster import down as lab_down
    from hpcserve.lab.cluster import running_nodes
    from hpcserve.lab.config import STATE_DIR, LabLayout

    lab_down(LabLayout(nodes=running_nodes(STATE_DIR) or 2), purge=purge, echo=click.echo)


@lab.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Show whether the lab is up, its nodes, login node and paths."""
    from hpcserve.lab.cluster import status as lab_status
    from hpcserve.lab.config import LabLayout

    st = lab_status(LabLayout())
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"lab: {'up' if st['up'] else 'down'}")
    for n in st["nodes"]:
        click.echo(f"  {n['name']:8} {n['addr']:12} {n['state']}")
    lg = st["login"]
    click.echo(f"login: {lg['user']}@{lg['host']}:{lg['port']} -i {lg['identity_file']}")
    click.echo(f"       known_hosts {lg['known_hosts']}")
    click.echo(f"model: {st['model'] or '(not made yet: hpcserve lab up)'}")
    click.echo(f"venv:  {st['venv'] or '(not installed yet: hpcserve lab up)'}")
    if st["slurm_conf"]:
        click.echo(f"export SLURM_CONF={st['slurm_conf']}")
