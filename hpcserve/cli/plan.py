"""``hpcserve plan``: size a model for a site and print the arithmetic (or ``--json``).

The vLLM options (``--tp``, ``--pp``, ``--dp``, ``--enable-expert-parallel``,
``--max-model-len``, ``--gpu-memory-utilization``, ``--kv-cache-dtype``, ``--dtype``) are the
rows of :mod:`hpcserve.launch.vllm_flags` that ``render``/``submit`` use;
:func:`hpcserve.plan.planner.plan_for_site` checks and sizes them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from hpcserve.errors import UsageError
from hpcserve.launch import vllm_flags

_HELP = {
    "tensor_parallel_size": "Tensor-parallel size (default: the site's engine.layout).",
    "pipeline_parallel_size": "Pipeline-parallel size (default: the site's engine.layout).",
    "data_parallel_size": "Data-parallel ranks, TP x PP GPUs each (default 1).",
    "enable_expert_parallel": "Expert parallelism (default: on for a MoE model with --dp > 1).",
    "max_model_len": "Context length (default: the config's max_position_embeddings).",
    "gpu_memory_utilization": "Fraction of each GPU's memory vLLM may use (default: 0.9).",
    "kv_cache_dtype": "KV-cache dtype (default: auto, the model dtype).",
    "dtype": "Weight/activation dtype vLLM will use (as `vllm serve --dtype`; default: auto).",
    "revision": "Model revision (branch, tag or commit) whose config is read (default: main).",
}


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


def _engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    decorate: Callable[[Any], Any] = vllm_flags.click_options(vllm_flags.PLAN_OPTIONS, _HELP)
    wrapped: Callable[..., Any] = decorate(fn)
    return wrapped


@click.command("plan")
@click.option("--model", "-m", required=True, help="HF model id or local model directory.")
@click.option("--site", "-s", required=True, help="Site name or YAML file.")
@click.option("--nodes", default="auto", show_default=True, help="Number of nodes, or auto.")
@_engine_options
@click.option("--config-json", default=None, help="Read this config.json instead of searching.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def plan(
    model: str,
    site: str,
    nodes: str,
    config_json: str | None,
    as_json: bool,
    **engine: Any,
) -> None:
    """Size MODEL for SITE: weights, usable memory, nodes, layout, KV cache, concurrency."""
    from hpcserve import client

    result = client.plan(
        model,
        site,
        nodes=_nodes(nodes),
        tp=engine["tensor_parallel_size"],
        pp=engine["pipeline_parallel_size"],
        dp=engine["data_parallel_size"],
        ep=engine["enable_expert_parallel"],
        max_model_len=engine["max_model_len"],
        gpu_memory_utilization=engine["gpu_memory_utilization"],
        kv_cache_dtype=engine["kv_cache_dtype"],
        dtype=engine["dtype"],
        config_json=config_json,
        revision=engine["revision"],
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.lines():
            click.echo(line)
    if not result.fit.fits:
        sys.exit(1)
