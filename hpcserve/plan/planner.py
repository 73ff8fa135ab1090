"""Put sizing and layout together: how many nodes, which layout, how much KV cache.

:func:`plan_for_site` is what ``hpcserve plan`` (and the Python API) calls: it checks the options
against the vLLM flag table, as ``render`` and ``submit`` do, and takes the node shape, layout mode
included, from the site. ``make_plan`` is pure: a :class:`ModelInfo`, the node shape and the
options in, a :class:`Plan` out, whose ``lines()`` print the arithmetic and whose ``to_dict()`` is
the ``--json`` output.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from hpcserve.errors import HpcserveError, UsageError
from hpcserve.launch import vllm_flags
from hpcserve.plan.layout import (
    PP_ACROSS_NODES,
    TP_ACROSS_NODES,
    Layout,
    choose_layout,
    default_layout,
    max_ranks,
    refusals,
    requested_layout,
)
from hpcserve.plan.modelinfo import ModelInfo
from hpcserve.plan.sizing import (
    ACTIVATION_OVERHEAD_GB,
    GB,
    KvPrediction,
    ParamCount,
    WeightBytes,
    count_parameters,
    kv_dtype_bytes,
    kv_heads_per_rank,
    naive_kv_bytes_per_token,
    pp_partition,
    predict_kv_cache_tokens,
    ssm_state_dtype_bytes,
    stage_weight_bytes,
    weight_bytes,
)
from hpcserve.rules import resolve_dtype
from hpcserve.sites.schema import Site

MAX_AUTO_NODES = 64
DEFAULT_UTILIZATION = 0.9  # vLLM's CacheConfig.gpu_memory_utilization default


@dataclass
class NodeShape:
    """What the planner needs of a site's node."""

    gpus: int
    gpu_memory_gb: float
    gpu_model: str = "GPU"
    site: str = "site"
    layout: str = PP_ACROSS_NODES  # the site's engine.layout: how TP and PP default over nodes

    @property
    def device(self) -> str:
        """``cpu`` for CPU-only sites (vLLM's CPU backend pages KV in blocks of 128)."""
        return "cpu" if self.gpu_model.lower().startswith("cpu") else "cuda"


def node_shape(site: Site) -> NodeShape:
    """The planner's view of ``site``'s nodes, its ``engine.layout`` included."""
    return NodeShape(
        gpus=site.node.gpus,
        gpu_memory_gb=site.node.gpu_memory_gb,
        gpu_model=site.node.gpu_model,
        site=site.name,
        layout=site.engine.layout,
    )


@dataclass
class Fit:
    """The memory picture of one layout."""

    layout: Layout
    stage_weights: list[float]  # bytes per PP stage
    weights_per_gpu: list[float]  # bytes per GPU, per stage
    kv_budget_per_gpu: list[float]  # bytes per GPU, per stage
    kv: KvPrediction | None

    @property
    def fits(self) -> bool:
        return (
            self.kv is not None
            and min(self.kv_budget_per_gpu) > 0
            and self.kv.num_blocks >= self.kv.blocks_per_request
        )


@dataclass
class Plan:
    """Everything ``hpcserve plan`` prints."""

    info: ModelInfo
    node: NodeShape
    max_model_len: int
    utilization: float
    kv_cache_dtype: str
    overhead_gb: float
    params: ParamCount
    weights: WeightBytes
    fit: Fit
    auto_nodes: bool
    tried: list[str] = field(default_factory=list)

    @property
    def usable_per_gpu(self) -> float:
        return self.node.gpu_memory_gb * GB * self.utilization

    @property
    def usable_per_node(self) -> float:
        return self.usable_per_gpu * self.node.gpus

    def lines(self) -> list[str]:
        return plan_lines(self)

    def to_dict(self) -> dict[str, Any]:
        return plan_dict(self)


def evaluate(
    info: ModelInfo,
    node: NodeShape,
    layout: Layout,
    max_model_len: int,
    utilization: float,
    kv_cache_dtype: str,
    overhead_gb: float,
    count: ParamCount,
) -> Fit:
    """Weights per GPU, the KV budget left, and vLLM's KV numbers for one layout."""
    stages = stage_weight_bytes(info, layout.pp, count)
    per_gpu = [s / layout.tp for s in stages]
    usable = node.gpu_memory_gb * GB * utilization
    budget = [usable - w - overhead_gb * GB for w in per_gpu]
    kv = None
    if min(budget) > 0:
        kv = predict_kv_cache_tokens(
            info,
            budget,
            tp=layout.tp,
            pp=layout.pp,
            max_model_len=max_model_len,
            kv_cache_dtype=kv_cache_dtype,
            device=node.device,
        )
    return Fit(layout, stages, per_gpu, budget, kv)


def make_plan(
    info: ModelInfo,
    node: NodeShape,
    nodes: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    max_model_len: int | None = None,
    utilization: float = DEFAULT_UTILIZATION,
    kv_cache_dtype: str = "auto",
    overhead_gb: float = ACTIVATION_OVERHEAD_GB,
) -> Plan:
    """Size ``info`` on ``node``-shaped nodes; ``nodes=None`` finds the smallest that fits."""
    problems = vllm_flags.check_values(
        {"gpu_memory_utilization": utilization, "max_model_len": max_model_len}
    )
    if problems:
        raise UsageError("; ".join(problems))
    length = max_model_len or info.max_position_embeddings
    if not length:
        raise UsageError("the config has no max_position_embeddings: pass --max-model-len")
    count = count_parameters(info)
    weights = weight_bytes(info, count)
    args = (length, utilization, kv_cache_dtype, overhead_gb, count)
    # A Plan of these inputs for a given fit (both branches below build one).
    plan = partial(
        Plan, info, node, length, utilization, kv_cache_dtype, overhead_gb, count, weights
    )
    if nodes is not None:
        layout = choose_layout(info, nodes, node.gpus, tp, pp, node.layout)
        fit = evaluate(info, node, layout, *args)
        return plan(fit, auto_nodes=False)
    tried: list[str] = []
    last = min(MAX_AUTO_NODES, max_ranks(info))
    if all(isinstance(_auto_layout(info, node, n, tp, pp), str) for n in range(1, last + 1)):
        _no_layout(info, node, last, tp, pp)  # a layout refusal, not a memory verdict
    for n in range(1, last + 1):
        layout_or_why = _auto_layout(info, node, n, tp, pp)
        if isinstance(layout_or_why, str):
            tried.append(f"{n} node(s): {layout_or_why}")
            continue
        fit = evaluate(info, node, layout_or_why, *args)
        if fit.fits:
            return plan(fit, auto_nodes=True, tried=tried)
        world = layout_or_why.world_size
        usable = world * node.gpu_memory_gb * GB * utilization
        tried.append(
            f"{n} node(s): {_gb(usable)} usable < {_gb(weights.total)} weights + "
            f"{overhead_gb * world:g} GB overhead + KV for one {length:,}-token request"
        )
    raise HpcserveError(
        f"{info.name} does not fit on up to {last} nodes of {node.gpus} × "
        f"{node.gpu_memory_gb:g} GB at utilisation {utilization}"
    )


def _no_layout(info: ModelInfo, node: NodeShape, last: int, tp: int | None, pp: int | None) -> None:
    """Raise: no node count up to ``last`` has a layout vLLM accepts (not a memory verdict);
    the reason and a layout that works are :func:`choose_layout`'s, on one node."""
    try:
        choose_layout(info, 1, node.gpus, tp, pp, node.layout)
    except UsageError as e:
        raise UsageError(
            f"no layout vLLM accepts for {info.name} on 1 to {last} node(s) of {node.gpus} GPUs "
            f"(before any memory check); on 1 node: {e}"
        ) from e


def _auto_layout(
    info: ModelInfo, node: NodeShape, nodes: int, tp: int | None, pp: int | None
) -> Layout | str:
    """The layout ``choose_layout`` would take on ``nodes`` nodes, or why there is none."""
    try:
        want_tp, want_pp = requested_layout(nodes, node.gpus, tp, pp, node.layout)
    except UsageError as e:
        return f"no valid layout ({e})"
    if refusals(info, nodes, node.gpus, want_tp, want_pp):
        return f"no valid TP={want_tp} PP={want_pp} layout"
    return Layout(want_tp, want_pp, nodes, node.gpus)


def plan_for_site(
    site: Site,
    info: ModelInfo,
    *,
    nodes: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    kv_cache_dtype: str | None = None,
    dtype: str | None = None,
) -> Plan:
    """Size ``info`` on ``site`` (``nodes=None``: the fewest that fit).

    Options are vLLM's (None: vLLM's default) and are checked by the flag table exactly as
    ``render``/``submit`` check them; the layout comes from the same
    :func:`hpcserve.plan.layout.choose_layout` with the site's ``engine.layout``.
    """
    values = {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "kv_cache_dtype": kv_cache_dtype,
        "dtype": dtype,
    }
    problems = vllm_flags.check_values(values)
    problems += vllm_flags.context_problems(
        max_model_len, info.max_position_embeddings, site.engine.env
    )
    if problems:
        raise UsageError("; ".join(problems))
    served = resolve_dtype(dtype or "auto")
    return make_plan(
        replace(info, served_dtype=served),
        node_shape(site),
        nodes=nodes,
        tp=tp,
        pp=pp,
        max_model_len=max_model_len,
        utilization=DEFAULT_UTILIZATION
        if gpu_memory_utilization is None
        else gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype or "auto",
    )


# --------------------------------------------------------------------------- printing


def _gb(x: float) -> str:
    return f"{x / GB:.1f} GB"


def _e9(x: float) -> str:
    return f"{x / 1e9:.1f}e9"


def _mb(x: float) -> str:
    return f"{x / 1e6:.2f} MB" if x >= 1e6 else f"{x / 1e3:.1f} kB"


def _model_line(info: ModelInfo) -> str:
    parts = [info.architecture, f"{info.num_layers} layers"]
    if info.is_hybrid:
        parts[-1] += (
            f": {info.num_full_attention_layers} full attention + "
            f"{info.num_linear_attention_layers} Gated DeltaNet"
        )
    if info.is_moe:
        parts.append(f"{info.num_experts} experts top-{info.experts_per_token}")
    q = info.quant
    parts.append(
        f"{q.method} int{q.bits}" + (f" g{q.group_size}" if q.group_size else "")
        if q
        else info.torch_dtype
    )
    return f"model: {info.name} ({', '.join(parts)})"


def weight_line(w: WeightBytes, info: ModelInfo) -> str:
    if info.quant is None:
        line = f"weights: {_e9(w.params)} params × {w.dtype_bytes} B = {_gb(w.estimated_total)}"
    else:
        line = (
            f"weights: {_e9(w.quantised_params)} params × {w.bytes_per_quantised_param:g} B"
            f" + scales {_gb(w.scale_bytes)}"
            f" + {_e9(w.unquantised_params)} unquantised × {w.dtype_bytes} B"
            f" ({_gb(w.unquantised_bytes)}) = {_gb(w.estimated_total)}"
        )
    if w.exact_total:
        line += f"; safetensors index says {_gb(w.exact_total)} (used)"
    return line


def plan_lines(p: Plan) -> list[str]:
    info, node, fit = p.info, p.node, p.fit
    lay = fit.layout
    out = [_model_line(info)]
    if info.config_path:
        out.append(f"config: {info.config_path}")
    out.append(
        f"site: {node.site}: {node.gpus} × {node.gpu_model} ({node.gpu_memory_gb:g} GB) per node"
    )
    cats = p.params.by_category
    top = sorted(((v, k) for k, v in cats.items() if v), reverse=True)[:4]
    out.append(
        f"params: {_e9(p.params.total)} ("
        + ", ".join(f"{k} {_e9(v)}" for v, k in top)
        + (", all experts counted" if info.is_moe else "")
        + ")"
    )
    out.append(weight_line(p.weights, info))
    if p.weights.unquantised_categories:
        out.append("  kept in 16 bit: " + ", ".join(p.weights.unquantised_categories))
    out.append(
        f"usable per GPU: {node.gpu_memory_gb:g} GB × {p.utilization:g} = "
        f"{_gb(p.usable_per_gpu)}; per node: {node.gpus} × {_gb(p.usable_per_gpu)} = "
        f"{_gb(p.usable_per_node)}"
    )
    for t in p.tried:
        out.append(f"  {t}")
    out.append(
        f"layout: TP={lay.tp} × PP={lay.pp} = {lay.world_size} GPUs on {lay.nodes} node(s)"
        + _layout_note(lay, node)
    )
    parts = pp_partition(info.num_layers, lay.pp)
    for s, (sw, wg, bud) in enumerate(
        zip(fit.stage_weights, fit.weights_per_gpu, fit.kv_budget_per_gpu, strict=True)
    ):
        out.append(
            f"stage {s} ({parts[s]} layers): weights {_gb(sw)} / TP {lay.tp} = {_gb(wg)} per GPU;"
            f" KV budget {_gb(p.usable_per_gpu)} − {_gb(wg)} − {p.overhead_gb:g} GB overhead"
            f" = {_gb(bud)}"
        )
    out += kv_lines(p)
    out += [f"note: {n}" for n in info.notes]
    out.append(verdict(p))
    return out


def _layout_note(lay: Layout, node: NodeShape) -> str:
    """Which default the layout is, when it is the site's default."""
    if (lay.tp, lay.pp) != default_layout(lay.nodes, node.gpus, node.layout):
        return ""
    if node.layout == TP_ACROSS_NODES:
        return " (TP = all GPUs, PP = 1: the site's engine.layout tp-across-nodes)"
    return " (TP = GPUs per node, PP = nodes)"


def kv_lines(p: Plan) -> list[str]:
    info, fit = p.info, p.fit
    tp = fit.layout.tp
    kvb = kv_dtype_bytes(info, p.kv_cache_dtype)
    heads = kv_heads_per_rank(info, tp)
    rep = " (replicated)" if info.num_kv_heads < tp else ""
    out = [
        f"KV per token per attention layer per GPU: 2 × {heads} KV head(s){rep}"
        f" [{info.num_kv_heads}/TP {tp}] × {info.head_dim} × {kvb} B = "
        f"{2 * heads * info.head_dim * kvb} B"
    ]
    kv = fit.kv
    if kv is None:
        out.append("KV cache: no memory left after the weights")
        return out
    lay = kv.layout
    if info.is_hybrid and info.linear is not None:
        lin = info.linear
        conv_dim = 2 * lin.num_key_heads * lin.key_head_dim
        conv_dim += lin.num_value_heads * lin.value_head_dim
        ssm_b = ssm_state_dtype_bytes(info)
        out.append(
            f"Gated DeltaNet state per layer per GPU: conv {lin.conv_kernel_dim - 1} × "
            f"{conv_dim // tp} × {info.dtype_bytes} B + ssm {lin.num_value_heads // tp} × "
            f"{lin.value_head_dim} × {lin.key_head_dim} × {ssm_b} B = {lay.state_bytes} B"
        )
        out.append(
            f"block: attention block grows to {lay.block_size} tokens so its page "
            f"({lay.block_size} × {lay.attn_bytes_per_token} B = {_mb(lay.page_bytes)}) holds "
            "a state; states are padded to that page"
        )
        kinds: dict[str, list[int]] = {}
        for g in lay.groups:
            kinds.setdefault(g.kind, []).append(len(g.layers))
        out.append(
            "groups: "
            + " + ".join(f"{len(v)} {k} group(s) of {max(v)} layers" for k, v in kinds.items())
        )
    else:
        out.append(
            f"block: {lay.block_size} tokens × {lay.attn_bytes_per_token} B = "
            f"{_mb(lay.page_bytes)} per layer"
        )
    for s, (bud, bpb) in enumerate(zip(fit.kv_budget_per_gpu, kv.bytes_per_block, strict=True)):
        out.append(
            f"stage {s} blocks: {_gb(bud)} / ({bpb // lay.page_bytes} layers × "
            f"{_mb(lay.page_bytes)}) = {int(bud // bpb)}"
        )
    pool = "CPU" if p.node.device == "cpu" else "GPU"
    out.append(
        f"KV cache size: {kv.num_blocks} blocks ÷ {kv.blocks_per_request} blocks per "
        f"{p.max_model_len}-token request × {p.max_model_len} = {kv.tokens:,} tokens"
        f' (vLLM: "{pool} KV cache size: {kv.tokens:,} tokens")'
    )
    out.append(
        f"max concurrency at {p.max_model_len:,} tokens per request: {kv.max_concurrency:.2f}x"
    )
    if info.is_hybrid:
        naive = naive_kv_bytes_per_token(info, p.kv_cache_dtype)
        real = 2 * info.num_full_attention_layers * info.num_kv_heads * info.head_dim * kvb
        out.append(
            f"naive count (every layer keeps KV): {naive:,} B/token vs {real:,} B/token "
            f"for the {info.num_full_attention_layers} attention layers ({naive / real:.1f}× off)"
        )
    return out


def verdict(p: Plan) -> str:
    lay = p.fit.layout
    if p.fit.fits:
        how = "needs" if p.auto_nodes else "fits on"
        return (
            f"verdict: {p.info.name} {how} {lay.nodes} node(s) of {p.node.site} "
            f"(TP={lay.tp}, PP={lay.pp})"
        )
    if p.fit.kv is None:  # no memory left for any KV cache: the context length is not the cause
        return (
            f"verdict: does NOT fit on {lay.nodes} node(s): the weights "
            f"({_gb(max(p.fit.weights_per_gpu))} a GPU) and the non-KV memory exceed the "
            f"{_gb(p.usable_per_gpu)} usable a GPU; try --nodes auto (more GPUs), a quantised "
            "model or a higher --gpu-memory-utilization"
        )
    return (
        f"verdict: does NOT fit on {lay.nodes} node(s): weights and one "
        f"{p.max_model_len}-token request exceed {_gb(p.usable_per_node * lay.nodes)}; "
        "try --nodes auto, a smaller --max-model-len, or --kv-cache-dtype fp8"
    )


def plan_dict(p: Plan) -> dict[str, Any]:
    fit, kv = p.fit, p.fit.kv
    lay = fit.layout
    info = p.info
    return {
        "model": info.name,
        "architecture": info.architecture,
        "config_path": info.config_path,
        "site": p.node.site,
        "gpus_per_node": p.node.gpus,
        "gpu_memory_gb": p.node.gpu_memory_gb,
        "gpu_memory_utilization": p.utilization,
        "max_model_len": p.max_model_len,
        "kv_cache_dtype": p.kv_cache_dtype,
        "dtype": info.served_dtype or "auto",
        "dtype_bytes": info.dtype_bytes,
        "layout_mode": p.node.layout,
        "overhead_gb_per_gpu": p.overhead_gb,
        "params": p.params.total,
        "params_by_category": p.params.by_category,
        "weights": {
            "quantised_params": p.weights.quantised_params,
            "bytes_per_quantised_param": p.weights.bytes_per_quantised_param,
            "scale_bytes": p.weights.scale_bytes,
            "unquantised_params": p.weights.unquantised_params,
            "unquantised_bytes": p.weights.unquantised_bytes,
            "estimated_bytes": p.weights.estimated_total,
            "safetensors_bytes": p.weights.exact_total,
            "bytes": p.weights.total,
            "unquantised_categories": p.weights.unquantised_categories,
        },
        "usable_per_gpu_bytes": p.usable_per_gpu,
        "usable_per_node_bytes": p.usable_per_node,
        "nodes": lay.nodes,
        "auto_nodes": p.auto_nodes,
        "tp": lay.tp,
        "pp": lay.pp,
        "stage_weight_bytes": fit.stage_weights,
        "weights_per_gpu_bytes": fit.weights_per_gpu,
        "kv_budget_per_gpu_bytes": fit.kv_budget_per_gpu,
        "kv": None
        if kv is None
        else {
            "block_size": kv.layout.block_size,
            "page_bytes": kv.layout.page_bytes,
            "attention_bytes_per_token_per_layer_per_gpu": kv.layout.attn_bytes_per_token,
            "linear_state_bytes_per_layer_per_gpu": kv.layout.state_bytes,
            "groups": [{"kind": g.kind, "layers": g.layers} for g in kv.layout.groups],
            "num_blocks": kv.num_blocks,
            "blocks_per_request": kv.blocks_per_request,
            "tokens": kv.tokens,
            "max_concurrency": kv.max_concurrency,
        },
        "fits": fit.fits,
        "notes": info.notes,
    }
