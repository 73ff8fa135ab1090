"""Choose the parallel layout (TP × PP) and refuse what vLLM would refuse.

Default: TP = GPUs per node, PP = nodes (a site may say ``engine.layout: tp-across-nodes``:
TP = GPUs per node × nodes, PP = 1). This module is the one place that decides a layout, for
``plan`` and for ``render``/``submit``. Shape checks always apply; the model checks below apply
when the model's config.json is known. They mirror vLLM (read from its source):

- ``ModelConfig.verify_with_parallel_config`` (``vllm/config/model.py``): total attention heads
  divisible by TP.
- ``QKVParallelLinear`` (``vllm/model_executor/layers/linear.py``): with TP ≥ KV heads the KV
  heads are replicated (``divide(tp, kv_heads)``, so TP % kv_heads == 0); otherwise
  ``divide(kv_heads, tp)``, so kv_heads % TP == 0.
- Column/row-parallel MLPs and fused MoE ``divide`` the (moe_)intermediate size by TP;
  Gated DeltaNet ``divide`` s its key/value heads by TP (``gated_delta_net_state_shape``).
- GPTQ/AWQ (Marlin, ``verify_marlin_supports_shape`` in
  ``quantization/utils/marlin_utils.py``): a row-parallel shard must hold whole groups,
  ``(in_features / TP) % group_size == 0``.
- PP: ``get_pp_indices`` (``vllm/distributed/utils.py``) gives each stage at least one layer
  only when PP ≤ layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcserve.errors import UsageError
from hpcserve.plan.modelinfo import ModelInfo

# SLURM counts nodes in a uint32 (``job_desc_msg_t.min_nodes``, ``slurm.h``; 0xfffffffe: NO_VAL).
MAX_SLURM_NODES = 0xFFFFFFFD
PP_ACROSS_NODES = "pp-across-nodes"
TP_ACROSS_NODES = "tp-across-nodes"


@dataclass
class Layout:
    """A parallel layout over ``nodes`` nodes of ``gpus_per_node`` GPUs."""

    tp: int
    pp: int
    nodes: int
    gpus_per_node: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def ranks_per_node(self) -> int:
        """GPUs each node uses: vLLM's mp executor starts world_size / nnodes workers a node."""
        return self.world_size // self.nodes


def default_layout(nodes: int, gpus_per_node: int, mode: str = PP_ACROSS_NODES) -> tuple[int, int]:
    """(TP, PP) when the user names neither: the site's ``engine.layout`` decides."""
    if mode == TP_ACROSS_NODES:
        return gpus_per_node * nodes, 1
    return gpus_per_node, nodes


def _head_problems(info: ModelInfo, tp: int) -> list[str]:
    """Attention and KV heads split over TP (``verify_with_parallel_config``,
    ``QKVParallelLinear``)."""
    heads, kv = info.num_attention_heads, info.num_kv_heads
    problems = []
    if heads % tp:
        problems.append(f"attention heads ({heads}) are not divisible by TP={tp}")
    if tp >= kv and tp % kv:
        problems.append(f"TP={tp} ≥ KV heads ({kv}) but not a multiple of them (replication)")
    if tp < kv and kv % tp:
        problems.append(f"KV heads ({kv}) are not divisible by TP={tp}")
    return problems


def _has_dense_mlp(info: ModelInfo) -> bool:
    """Whether some layer has a dense MLP of ``intermediate_size`` (not every layer is MoE)."""
    return bool(info.intermediate_size) and not all(info.moe_layers or [False])


def _mlp_problems(info: ModelInfo, tp: int) -> list[str]:
    """Column/row-parallel MLPs and fused MoE divide their intermediate size by TP."""
    problems = []
    dense = info.intermediate_size if _has_dense_mlp(info) else None
    if dense and dense % tp:
        problems.append(f"intermediate_size ({info.intermediate_size}) is not divisible by TP={tp}")
    if info.is_moe and info.moe_intermediate_size and info.moe_intermediate_size % tp:
        problems.append(
            f"moe_intermediate_size ({info.moe_intermediate_size}) is not divisible by TP={tp}"
        )
    return problems


def _linear_attention_problems(info: ModelInfo, tp: int) -> list[str]:
    """Gated DeltaNet key/value heads divide by TP (``gated_delta_net_state_shape``)."""
    if info.linear is None:
        return []
    heads = (
        ("linear_num_key_heads", info.linear.num_key_heads),
        ("linear_num_value_heads", info.linear.num_value_heads),
    )
    return [f"{what} ({n}) is not divisible by TP={tp}" for what, n in heads if n % tp]


def _quant_group_problems(info: ModelInfo, tp: int) -> list[str]:
    """GPTQ/AWQ (Marlin): a row-parallel shard holds whole quantisation groups."""
    q = info.quant
    if q is None or q.method not in ("gptq", "awq", "gptq_marlin", "awq_marlin"):
        return []
    if not q.group_size:
        return []
    rows = {"o_proj/down_proj input": info.num_attention_heads * info.head_dim}
    if info.intermediate_size and _has_dense_mlp(info):
        rows["down_proj input (intermediate_size)"] = info.intermediate_size
    if info.is_moe and info.moe_intermediate_size:
        rows["experts' down_proj input (moe_intermediate_size)"] = info.moe_intermediate_size
    return [
        f"{what} {n}/TP={n // tp} is not a multiple of the quantisation group size {q.group_size}"
        for what, n in rows.items()
        if n % tp == 0 and (n // tp) % q.group_size
    ]


def _pipeline_problems(info: ModelInfo, pp: int) -> list[str]:
    """``get_pp_indices`` gives every stage a layer only when PP ≤ layers."""
    if pp > info.num_layers:
        return [f"PP={pp} is larger than the number of layers ({info.num_layers})"]
    return []


def layout_problems(info: ModelInfo, tp: int, pp: int) -> list[str]:
    """Every reason vLLM would refuse TP=tp, PP=pp for this model (empty: it is fine)."""
    if tp < 1 or pp < 1:
        return ["TP and PP must be at least 1"]
    return [
        *_head_problems(info, tp),
        *_mlp_problems(info, tp),
        *_linear_attention_problems(info, tp),
        *_quant_group_problems(info, tp),
        *_pipeline_problems(info, pp),
    ]


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def alternatives(info: ModelInfo, nodes: int, gpus_per_node: int) -> list[Layout]:
    """Layouts that vLLM accepts on these nodes: all GPUs first, then fewer per node; TP largest
    first within each."""
    out = []
    for per_node in range(gpus_per_node, 0, -1):
        world = nodes * per_node
        for tp in sorted(_divisors(world), reverse=True):
            pp = world // tp
            if not layout_problems(info, tp, pp):
                out.append(Layout(tp, pp, nodes, gpus_per_node))
    return out


def _describe(lay: Layout) -> str:
    flags = f"--tp {lay.tp} --pp {lay.pp}"
    if lay.ranks_per_node < lay.gpus_per_node:
        return f"{flags} ({lay.ranks_per_node} of {lay.gpus_per_node} GPUs per node)"
    return flags


def shape_problems(nodes: int, gpus_per_node: int, tp: int, pp: int) -> list[str]:
    """Why TP×PP cannot be laid out on ``nodes`` nodes of ``gpus_per_node`` GPUs (model aside).

    vLLM's mp executor starts world_size / nnodes workers on every node, so TP×PP must split
    evenly over the nodes and fit one node's GPUs.
    """
    if tp < 1 or pp < 1:
        return ["TP and PP must be at least 1"]
    world = tp * pp
    if world % nodes:
        return [f"TP×PP = {tp}×{pp} = {world} GPUs do not split evenly over {nodes} node(s)"]
    if world // nodes > gpus_per_node:
        return [
            f"TP×PP = {tp}×{pp} needs {world // nodes} GPUs per node but nodes have {gpus_per_node}"
        ]
    return []


def requested_layout(
    nodes: int,
    gpus_per_node: int,
    tp: int | None = None,
    pp: int | None = None,
    mode: str = PP_ACROSS_NODES,
) -> tuple[int, int]:
    """(TP, PP) from what the user named: neither is the site's default (``mode``); one names the
    other from all the GPUs; UsageError when it does not divide them."""
    if nodes < 1 or nodes > MAX_SLURM_NODES:
        raise UsageError(
            f"--nodes must be in [1, {MAX_SLURM_NODES}] (SLURM's node count), got {nodes}"
        )
    world = nodes * gpus_per_node
    if tp is None and pp is None:
        return default_layout(nodes, gpus_per_node, mode)
    if tp is None:
        assert pp is not None
        if pp < 1 or world % pp:
            raise UsageError(f"--pp {pp} does not divide the {world} GPUs of {nodes} node(s)")
        return world // pp, pp
    if pp is None:
        if tp < 1 or world % tp:
            raise UsageError(f"--tp {tp} does not divide the {world} GPUs of {nodes} node(s)")
        return tp, world // tp
    return tp, pp


def max_ranks(info: ModelInfo) -> int:
    """The most ranks any layout vLLM accepts can have: TP divides the attention heads and
    PP ≤ layers, and each node needs one rank, so no more nodes than this either."""
    return info.num_attention_heads * info.num_layers


def node_count_problems(info: ModelInfo | None, nodes: int) -> list[str]:
    """More nodes than any layout of this model can use (checked before any layout search)."""
    if info is None or nodes <= max_ranks(info):
        return []
    return [
        f"{nodes} nodes: a layout of this model has at most {max_ranks(info)} ranks "
        f"({info.num_attention_heads} attention heads × {info.num_layers} layers), one a node"
    ]


def refusals(info: ModelInfo | None, nodes: int, gpus_per_node: int, tp: int, pp: int) -> list[str]:
    """Why TP×PP cannot run on these nodes: the shape, then (``info`` known) the model."""
    problems = node_count_problems(info, nodes)
    if problems:
        return problems
    problems = shape_problems(nodes, gpus_per_node, tp, pp)
    if info is not None and not problems:
        problems = layout_problems(info, tp, pp)
    return problems


def _hint(info: ModelInfo | None, nodes: int, gpus_per_node: int, mode: str) -> str:
    if info is None:
        dtp, dpp = default_layout(nodes, gpus_per_node, mode)
        return f"try --tp {dtp} --pp {dpp}"
    if node_count_problems(info, nodes):
        return f"try --nodes {max(1, max_ranks(info) // gpus_per_node)} or fewer"
    alts = alternatives(info, nodes, gpus_per_node)
    if alts:
        return "a layout that works: " + ", ".join(_describe(a) for a in alts[:3])
    return f"no TP×PP on {nodes} node(s) of {gpus_per_node} GPUs works; try another --nodes"


def choose_layout(
    info: ModelInfo | None,
    nodes: int,
    gpus_per_node: int,
    tp: int | None = None,
    pp: int | None = None,
    mode: str = PP_ACROSS_NODES,
) -> Layout:
    """The site's default layout unless overridden; UsageError naming the reason and a fix.

    The one layout decision of ``plan``, ``render`` and ``submit``. ``info`` None (the model's
    config.json is not available here) checks the shape only.
    """
    tp, pp = requested_layout(nodes, gpus_per_node, tp, pp, mode)
    problems = refusals(info, nodes, gpus_per_node, tp, pp)
    if problems:
        hint = _hint(info, nodes, gpus_per_node, mode)
        raise UsageError(f"layout TP={tp} PP={pp} refused: {'; '.join(problems)}; {hint}")
    return Layout(tp, pp, nodes, gpus_per_node)
