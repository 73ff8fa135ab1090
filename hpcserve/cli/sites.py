"""``hpcserve sites``: list, show, validate and document cluster site configs."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from hpcserve.errors import ConfigError, UsageError
from hpcserve.plan.gpus import memory_mib
from hpcserve.sites import loader as sitelib
from hpcserve.sites.schema import Site


@click.group("sites")
def sites() -> None:
    """List, show and validate cluster site configs."""


def _summary(site: Site, origin: str) -> dict[str, Any]:
    return {
        "name": site.name,
        "description": site.description,
        "gpus_per_node": site.node.gpus,
        "gpu_model": site.node.gpu_model,
        "gpu_memory_mib": memory_mib(
            site.node.gpu_model, site.node.gpu_memory_mib, site.node.gpu_memory_gb
        ),
        "login": site.login[0].host if site.login else None,
        "origin": origin,
        "path": site.path,
    }


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def list_sites(as_json: bool) -> None:
    """List the known sites.

    Sites come from the shipped site_configs/, then ~/.config/hpcserve/sites/, then each
    directory or file in $HPCSERVE_SITES; a later file replaces an earlier one by name.
    """
    scan = sitelib.scan_sites()
    rows = [_summary(scan.sites[name], scan.origins[name]) for name in sorted(scan.sites)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        width = max([len(r["name"]) for r in rows] + [4])
        click.echo(f"{'NAME':<{width}}  {'GPUS/NODE':<22}  {'ORIGIN':<14}  DESCRIPTION")
        for r in rows:
            gpus = f"{r['gpus_per_node']}x {r['gpu_model']}"
            click.echo(f"{r['name']:<{width}}  {gpus:<22}  {r['origin']:<14}  {r['description']}")
    if scan.problems:
        raise ConfigError(scan.problems)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A site's fields as ``(dotted name, value)`` pairs, walking sections and login hosts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: list[tuple[str, Any]] = []
        for f in dataclasses.fields(value):
            out += _flatten(getattr(value, f.name), f"{prefix}.{f.name}" if prefix else f.name)
        return out
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        out = []
        for i, item in enumerate(value):
            out += _flatten(item, f"{prefix}[{i}]")
        return out
    return [(prefix, value)]


def _is_unconfirmed(dotted: str, unconfirmed: set[str]) -> bool:
    plain = re.sub(r"\[\d+\]", "", dotted)
    parts = plain.split(".")
    candidates = {".".join(parts[: i + 1]) for i in range(len(parts))}
    return bool(candidates & unconfirmed) or dotted in unconfirmed


@sites.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config as JSON.")
@click.option("--account", "-A", help="As render/submit's --account.")
@click.option("--image", metavar="PATH", help="As render/submit's --image.")
@click.option("--venv", metavar="DIR", help="As render/submit's --venv.")
@click.option("--hf-cache", metavar="DIR", help="As render/submit's --hf-cache.")
def show(name: str, as_json: bool, **values: str | None) -> None:
    """Show a site's resolved config and where each value came from.

    Each line ends with its origin (shipped file, user file, $HPCSERVE_SITES file, option, or
    default); values the site files list as unconfirmed are marked, and each must-have value
    still missing is named with how to set it.
    """
    from hpcserve import client

    site = client.load_site(name, **values)
    if as_json:
        data = dataclasses.asdict(site)
        data["missing"] = [m.message() for m in sitelib.missing_values(site)]
        click.echo(json.dumps(data, indent=2))
        return
    unconfirmed = {re.sub(r"\[\d+\]", "", u) for u in site.unconfirmed}
    skip = {"sources", "unconfirmed", "path", "provenance", "must_set"}
    leaves = [(k, v) for k, v in _flatten(site) if k.split(".")[0] not in skip]
    shown = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in leaves]
    width = max(len(k) for k, _ in shown)
    vwidth = min(max(len(v) for _, v in shown), 40)
    click.echo(f"# {site.name}: {site.path}")
    for key, value in shown:
        mark = "   # unconfirmed" if _is_unconfirmed(key, unconfirmed) else ""
        origin = sitelib.origin_of(site, key)
        click.echo(f"{key:<{width}}  {value:<{vwidth}}  # {origin}{mark}")
    for src in site.sources:
        click.echo(f"# source: {src}")
    for missing in sitelib.missing_values(site):
        click.echo(f"# missing: {missing.message()}")


@sites.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check site files (or directories of them).

    Prints `OK PATH` for each good file and one line per problem of the others; exits 2 if
    any file has a problem.
    """
    problems: list[str] = []
    for path in paths:
        files = (
            sorted(p for p in path.iterdir() if p.suffix in sitelib.SUFFIXES)
            if (path.is_dir())
            else [path]
        )
        for f in files:
            try:
                sitelib.load_site_file(f)
            except ConfigError as e:
                problems.extend(e.problems)
                continue
            except UsageError as e:
                problems.append(str(e))
                continue
            click.echo(f"OK {f}")
    if problems:
        for p in problems:
            click.echo(f"error: {p}", err=True)
        sys.exit(2)


@sites.command("schema")
@click.option("--markdown", is_flag=True, help="Print the Markdown page (docs/site-config.md).")
def schema(markdown: bool) -> None:
    """Print the site-config field reference.

    Generated from the schema's dataclass metadata; --markdown gives docs/site-config.md.
    """
    from hpcserve.sites import docs as sitedocs

    click.echo(sitedocs.markdown() if markdown else sitedocs.text(), nl=False)
