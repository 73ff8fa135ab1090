"""Choose the parallel layout (DP × TP × PP) and refuse what vLLM would refuse.

Default: TP = GPUs per node, PP = nodes (a site may say ``engine.layout: tp-across-nodes``:
TP = GPUs per node × nodes, PP = 1); ``--dp N`` makes N data-parallel ranks with TP inside each.
This module is the one place that decides a layout, for ``plan``, ``render``/``submit`` and
``sweep`` (:func:`candidates`). Shape checks always apply; the model checks below apply
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
- DP (``docs/serving/data_parallel_deployment.md``; ``ParallelConfig`` in
  ``vllm/config/parallel.py``: ``world_size = PP × TP`` per DP rank,
  ``data_parallel_size_local <= data_parallel_size``; ``run_headless`` in
  ``vllm/entrypoints/cli/serve.py`` refuses ``data_parallel_size_local`` 0 on a headless node):
  each node runs ``DP / nodes`` whole DP ranks. (vLLM can also spread one DP rank over nodes,
  ``nnodes_within_dp``; hpcserve's launcher does not, so DP is a multiple of the nodes.)
- MoE layers (``FusedMoEParallelConfig.make`` and ``flatten_tp_across_dp_and_pcp`` in
  ``vllm/model_executor/layers/fused_moe/config.py``): without expert parallelism the experts
  are tensor-parallel over DP × TP ranks, so ``moe_intermediate_size`` divides by DP × TP; with
  ``--enable-expert-parallel`` EP = DP × TP and each rank holds whole experts (TP 1 inside an
  expert; ``determine_expert_map`` in ``fused_moe/layer.py`` gives the first ``E % EP`` ranks
  one more). vLLM recommends EP together with DP for MoE models
  (``docs/serving/expert_parallel_deployment.md``), so it is the default there.
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
    """A parallel layout over ``nodes`` nodes of ``gpus_per_node`` GPUs: ``dp`` data-parallel
    ranks of TP × PP GPUs each, ``ep`` whether MoE layers use expert parallelism."""

    tp: int
    pp: int
    nodes: int
    gpus_per_node: int
    dp: int = 1
    ep: bool = False

    @property
    def world_size(self) -> int:
        """GPUs of one DP rank (vLLM's ``ParallelConfig.world_size``: PP × TP)."""
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        """GPUs of the whole layout: DP × TP × PP."""
        return self.dp * self.world_size

    @property
    def ranks_per_node(self) -> int:
        """GPUs each node uses: vLLM's mp executor starts world_size / nnodes workers a node;
        with DP every node runs DP / nodes ranks of world_size workers."""
        return self.gpus // self.nodes

    @property
    def dp_local(self) -> int:
        """DP ranks on each node (``--data-parallel-size-local``)."""
        return max(1, self.dp // self.nodes)

    @property
    def moe_tp(self) -> int:
        """How many ways each expert's matrices are sliced: 1 with EP, else DP × TP."""
        return 1 if self.ep else self.dp * self.tp

    @property
    def ep_size(self) -> int:
        """Ranks the experts are spread over (1: no expert parallelism)."""
        return self.dp * self.tp if self.ep else 1

    def describe(self) -> str:
        """``DP=2 × TP=4 (EP)`` or ``TP=4 × PP=2``: the layout as tables and errors name it."""
        text = f"TP={self.tp} × PP={self.pp}"
        if self.dp > 1:
            text = f"DP={self.dp} × {text}" if self.pp > 1 else f"DP={self.dp} × TP={self.tp}"
        return text + (" (EP)" if self.ep else "")

    def flags(self) -> str:
        """The hpcserve options that ask for this layout."""
        text = f"--tp {self.tp} --pp {self.pp}"
        if self.dp > 1:
            text = f"--dp {self.dp} " + text
        return text


def shape_text(tp: int, pp: int, dp: int = 1) -> str:
    """``TP=4 PP=2`` or ``DP=2 TP=4 PP=1``: a requested layout as refusals name it."""
    return f"DP={dp} TP={tp} PP={pp}" if dp > 1 else f"TP={tp} PP={pp}"


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


def _moe_ways(tp: int, dp: int, ep: bool) -> tuple[int, str]:
    """How many ways an expert is sliced (1 with EP, else DP × TP) and how errors name it."""
    if ep:
        return 1, "EP"
    return tp * dp, (f"DP×TP={dp * tp}" if dp > 1 else f"TP={tp}")


def _mlp_problems(info: ModelInfo, tp: int, dp: int = 1, ep: bool = False) -> list[str]:
    """Column/row-parallel MLPs divide their intermediate size by TP, fused MoE by DP × TP
    (whole experts with EP)."""
    problems = []
    dense = info.intermediate_size if _has_dense_mlp(info) else None
    if dense and dense % tp:
        problems.append(f"intermediate_size ({info.intermediate_size}) is not divisible by TP={tp}")
    ways, name = _moe_ways(tp, dp, ep)
    if info.is_moe and info.moe_intermediate_size and info.moe_intermediate_size % ways:
        problems.append(
            f"moe_intermediate_size ({info.moe_intermediate_size}) is not divisible by {name}"
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


def _quant_group_problems(info: ModelInfo, tp: int, dp: int = 1, ep: bool = False) -> list[str]:
    """GPTQ/AWQ (Marlin): a row-parallel shard holds whole quantisation groups (experts are
    sliced DP × TP ways, or not at all with EP)."""
    q = info.quant
    if q is None or q.method not in ("gptq", "awq", "gptq_marlin", "awq_marlin"):
        return []
    if not q.group_size:
        return []
    rows = {"o_proj/down_proj input": (info.num_attention_heads * info.head_dim, tp, f"TP={tp}")}
    if info.intermediate_size and _has_dense_mlp(info):
        rows["down_proj input (intermediate_size)"] = (info.intermediate_size, tp, f"TP={tp}")
    if info.is_moe and info.moe_intermediate_size:
        ways, name = _moe_ways(tp, dp, ep)
        rows["experts' down_proj input (moe_intermediate_size)"] = (
            info.moe_intermediate_size, ways, name,
        )  # fmt: skip
    return [
        f"{what} {n}/{name}={n // k} is not a multiple of the quantisation group size "
        f"{q.group_size}"
        for what, (n, k, name) in rows.items()
        if n % k == 0 and (n // k) % q.group_size
    ]


def _pipeline_problems(info: ModelInfo, pp: int) -> list[str]:
    """``get_pp_indices`` gives every stage a layer only when PP ≤ layers."""
    if pp > info.num_layers:
        return [f"PP={pp} is larger than the number of layers ({info.num_layers})"]
    return []


def layout_problems(info: ModelInfo, tp: int, pp: int, dp: int = 1, ep: bool = False) -> list[str]:
    """Every reason vLLM would refuse DP=dp, TP=tp, PP=pp (EP: ``ep``) for this model (empty:
    it is fine)."""
    if tp < 1 or pp < 1 or dp < 1:
        return ["DP, TP and PP must be at least 1"]
    return [
        *_head_problems(info, tp),
        *_mlp_problems(info, tp, dp, ep),
        *_linear_attention_problems(info, tp),
        *_quant_group_problems(info, tp, dp, ep),
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
    flags = lay.flags()
    if lay.ranks_per_node < lay.gpus_per_node:
        return f"{flags} ({lay.ranks_per_node} of {lay.gpus_per_node} GPUs per node)"
    return flags


def _dp_shape_problems(nodes: int, gpus_per_node: int, tp: int, pp: int, dp: int) -> list[str]:
    """DP > 1: whole DP ranks on every node, DP / nodes of them, and they fit its GPUs."""
    if dp % nodes:
        return [
            f"DP={dp} does not split evenly over {nodes} node(s): each node runs whole DP ranks "
            "(DP / nodes of them), so DP must be a multiple of --nodes"
        ]
    local = dp // nodes * tp * pp
    if local > gpus_per_node:
        return [
            f"DP×TP×PP = {dp}×{tp}×{pp} needs {local} GPUs per node but nodes have {gpus_per_node}"
        ]
    return []


def shape_problems(nodes: int, gpus_per_node: int, tp: int, pp: int, dp: int = 1) -> list[str]:
    """Why DP×TP×PP cannot be laid out on ``nodes`` nodes of ``gpus_per_node`` GPUs (model aside).

    vLLM's mp executor starts world_size / nnodes workers on every node, so TP×PP must split
    evenly over the nodes and fit one node's GPUs; with DP each node holds DP / nodes ranks.
    """
    if tp < 1 or pp < 1 or dp < 1:
        return ["DP, TP and PP must be at least 1"]
    if dp > 1:
        return _dp_shape_problems(nodes, gpus_per_node, tp, pp, dp)
    world = tp * pp
    if world % nodes:
        return [f"TP×PP = {tp}×{pp} = {world} GPUs do not split evenly over {nodes} node(s)"]
    if world // nodes > gpus_per_node:
        return [
            f"TP×PP = {tp}×{pp} needs {world // nodes} GPUs per node but nodes have {gpus_per_node}"
        ]
    return []


def _split(world: int, what: str, tp: int | None, pp: int | None) -> tuple[int, int]:
    """(TP, PP) filling ``world`` GPUs when one of them is named (UsageError if it does not
    divide them)."""
    if tp is None:
        assert pp is not None
        if pp < 1 or world % pp:
            raise UsageError(f"--pp {pp} does not divide the {what}")
        return world // pp, pp
    if pp is None:
        if tp < 1 or world % tp:
            raise UsageError(f"--tp {tp} does not divide the {what}")
        return tp, world // tp
    return tp, pp


def requested_layout(
    nodes: int,
    gpus_per_node: int,
    tp: int | None = None,
    pp: int | None = None,
    mode: str = PP_ACROSS_NODES,
    dp: int | None = None,
) -> tuple[int, int]:
    """(TP, PP) from what the user named: neither is the site's default (``mode``); one names the
    other from all the GPUs; UsageError when it does not divide them. With ``dp`` > 1 the
    GPUs of one DP rank are the ones split (neither named: TP = all of them, PP = 1)."""
    if nodes < 1 or nodes > MAX_SLURM_NODES:
        raise UsageError(
            f"--nodes must be in [1, {MAX_SLURM_NODES}] (SLURM's node count), got {nodes}"
        )
    world = nodes * gpus_per_node
    if dp is not None and dp != 1:
        if dp < 1 or world % dp:
            raise UsageError(f"--dp {dp} does not divide the {world} GPUs of {nodes} node(s)")
        per_rank = world // dp
        if tp is None and pp is None:
            return per_rank, 1
        return _split(per_rank, f"{per_rank} GPUs of each of the {dp} DP ranks", tp, pp)
    if tp is None and pp is None:
        return default_layout(nodes, gpus_per_node, mode)
    return _split(world, f"{world} GPUs of {nodes} node(s)", tp, pp)


def default_ep(info: ModelInfo | None, dp: int) -> bool:
    """Expert parallelism when the user does not say: on for a MoE model with DP > 1, as
    vLLM recommends (``expert_parallel_deployment.md``: "EP is more efficient when used in
    conjunction with DP"); off when the model is not known here."""
    return info is not None and info.is_moe and dp > 1


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


def refusals(
    info: ModelInfo | None,
    nodes: int,
    gpus_per_node: int,
    tp: int,
    pp: int,
    dp: int = 1,
    ep: bool = False,
) -> list[str]:
    """Why DP×TP×PP cannot run on these nodes: the shape, then (``info`` known) the model."""
    problems = node_count_problems(info, nodes)
    if problems:
        return problems
    problems = shape_problems(nodes, gpus_per_node, tp, pp, dp)
    if info is not None and not problems:
        problems = layout_problems(info, tp, pp, dp, ep)
    return problems


def candidates(info: ModelInfo | None, nodes: int, gpus_per_node: int) -> list[Layout]:
    """Every layout of all the GPUs of ``nodes`` nodes that vLLM accepts (the model's checks
    when ``info`` is known): TP × PP first, TP largest first, then DP × TP × PP, DP smallest
    first, EP as :func:`default_ep` sets it. What ``plan`` compares and ``sweep`` tries."""
    world = nodes * gpus_per_node
    out: list[Layout] = []
    for dp in _divisors(world):
        ep = default_ep(info, dp)
        for tp in sorted(_divisors(world // dp), reverse=True):
            pp = world // dp // tp
            if not refusals(info, nodes, gpus_per_node, tp, pp, dp, ep):
                out.append(Layout(tp, pp, nodes, gpus_per_node, dp, ep))
    return out


def _hint(info: ModelInfo | None, nodes: int, gpus_per_node: int, mode: str, dp: int) -> str:
    if info is None:
        if dp > 1:
            fits = [c for c in candidates(None, nodes, gpus_per_node) if c.dp > 1]
            if fits:
                return "a layout that works: " + ", ".join(c.flags() for c in fits[:3])
        dtp, dpp = default_layout(nodes, gpus_per_node, mode)
        return f"try --tp {dtp} --pp {dpp}"
    if node_count_problems(info, nodes):
        return f"try --nodes {max(1, max_ranks(info) // gpus_per_node)} or fewer"
    alts = alternatives(info, nodes, gpus_per_node)
    if dp > 1:
        alts = [c for c in candidates(info, nodes, gpus_per_node) if c.dp > 1] + alts
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
    dp: int | None = None,
    ep: bool | None = None,
) -> Layout:
    """The site's default layout unless overridden; UsageError naming the reason and a fix.

    The one layout decision of ``plan``, ``render``, ``submit`` and ``sweep``. ``info`` None
    (the model's config.json is not available here) checks the shape only; ``ep`` None is
    :func:`default_ep`.
    """
    tp, pp = requested_layout(nodes, gpus_per_node, tp, pp, mode, dp)
    ranks = dp or 1
    experts = default_ep(info, ranks) if ep is None else ep
    problems = refusals(info, nodes, gpus_per_node, tp, pp, ranks, experts)
    if problems:
        hint = _hint(info, nodes, gpus_per_node, mode, ranks)
        raise UsageError(
            f"layout {shape_text(tp, pp, ranks)} refused: {'; '.join(problems)}; {hint}"
        )
    return Layout(tp, pp, nodes, gpus_per_node, ranks, experts)
