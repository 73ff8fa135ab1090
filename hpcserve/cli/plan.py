"""``hpcserve plan``: size a model for a site and print the arithmetic (or ``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from hpcserve.errors import UsageError


def _load_site(name: str) -> Any:
    """The site named ``name`` (imported lazily: the sites module is its own helper's)."""
    try:
        from hpcserve.sites.loader import load_site
    except ImportError:  # pragma: no cover - until hpcserve.sites.loader lands
        raise UsageError("site configs are not available in this build") from None
    return load_site(name)


def _nodes(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--nodes: expected a number or 'auto', got {value!r}") from None
    if n < 1:
        raise UsageError("--nodes must be at least 1")
    return n


@click.command("plan")
@click.option("--model", "-m", required=True, help="HF model id or local model directory.")
@click.option("--site", "-s", required=True, help="Site name (see `hpcserve sites list`).")
@click.option("--nodes", default="auto", show_default=True, help="Number of nodes, or auto.")
@click.option("--tp", type=int, default=None, help="Tensor-parallel size (default: GPUs/node).")
@click.option("--pp", type=int, default=None, help="Pipeline-parallel size (default: nodes).")
@click.option("--max-model-len", type=int, default=None, help="Context length (default: config).")
@click.option(
    "--gpu-memory-utilization",
    type=float,
    default=0.9,
    show_default=True,
    help="Fraction of each GPU's memory vLLM may use.",
)
@click.option(
    "--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default="auto", show_default=True
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default="auto",
    show_default=True,
    help="Weight/activation dtype vLLM will use (as `vllm serve --dtype`).",
)
@click.option("--config-json", default=None, help="Read this config.json instead of searching.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def plan(
    model: str,
    site: str,
    nodes: str,
    tp: int | None,
    pp: int | None,
    max_model_len: int | None,
    gpu_memory_utilization: float,
    kv_cache_dtype: str,
    dtype: str,
    config_json: str | None,
    as_json: bool,
) -> None:
    """Size MODEL for SITE: weights, usable memory, nodes, layout, KV cache, concurrency."""
    from hpcserve.plan.modelinfo import load_model_info
    from hpcserve.plan.planner import NodeShape, make_plan

    info = load_model_info(model, config_json)
    info.served_dtype = dtype
    s = _load_site(site)
    node = NodeShape(
        gpus=s.node.gpus,
        gpu_memory_gb=s.node.gpu_memory_gb,
        gpu_model=s.node.gpu_model,
        site=s.name,
    )
    result = make_plan(
        info,
        node,
        nodes=_nodes(nodes),
        tp=tp,
        pp=pp,
        max_model_len=max_model_len,
        utilization=gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.lines():
            click.echo(line)
    if not result.fit.fits:
        sys.exit(1)
