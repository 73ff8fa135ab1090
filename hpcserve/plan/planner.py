"""Put sizing and layout together: how many nodes, which layout, how much KV cache.

:func:`plan_for_site` is what ``hpcserve plan`` (and the Python API) calls: it checks the options
against the vLLM flag table, as ``render`` and ``submit`` do, and takes the node shape, layout mode
included, from the site. ``make_plan`` is pure: a :class:`ModelInfo`, the node shape and the
options in, a :class:`Plan` out, whose ``lines()`` print the arithmetic and whose ``to_dict()`` is
the ``--json`` output.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hpcserve.errors import HpcserveError, UsageError
from hpcserve.launch import vllm_flags
from hpcserve.plan.gpus import MIB, GpuSpec, gpu_spec, kernel_notes, memory_mib
from hpcserve.plan.layout import (
    PP_ACROSS_NODES,
    TP_ACROSS_NODES,
    Layout,
    candidates,
    choose_layout,
    default_ep,
    default_layout,
    max_ranks,
    refusals,
    requested_layout,
    shape_text,
)
from hpcserve.plan.modelinfo import ModelInfo, derived_max_len
from hpcserve.plan.sizing import (
    GB,
    GIB,
    KvPrediction,
    MemoryBudget,
    ParamCount,
    WeightBytes,
    count_parameters,
    expert_share,
    kv_dtype_bytes,
    kv_heads_per_rank,
    kv_memory_budget,
    naive_kv_bytes_per_token,
    pp_partition,
    predict_kv_cache_tokens,
    rank_weight_bytes,
    ssm_state_dtype_bytes,
    stage_expert_bytes,
    stage_weight_bytes,
    vllm_rules,
    weight_bytes,
)
from hpcserve.rules import serving_dtype
from hpcserve.sites.schema import Site

MAX_AUTO_NODES = 64
DEFAULT_UTILIZATION = 0.9  # vLLM's CacheConfig.gpu_memory_utilization default before 0.26


#: What vLLM's CPU backend computes in (``CpuPlatform.supported_dtypes`` on x86/aarch64).
CPU_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class NodeShape:
    """What the planner needs of a site's node: memory per GPU in MiB, as nvidia-smi prints it,
    and the GPU's table entry (``gpu``; None for a CPU build or a GPU the table lacks)."""

    gpus: int
    gpu_memory_mib: float
    gpu_model: str = "GPU"
    site: str = "site"
    layout: str = PP_ACROSS_NODES  # the site's engine.layout: how TP and PP default over nodes
    vllm_version: str | None = None  # the site's engine.vllm_version: whose memory rules apply
    cpu_kv_space_gib: float | None = None  # engine.env VLLM_CPU_KVCACHE_SPACE (CPU builds)
    gpu: GpuSpec | None = None

    @property
    def device(self) -> str:
        """``cpu`` for CPU-only sites (vLLM's CPU backend pages KV in blocks of 128)."""
        return "cpu" if self.gpu_model.lower().startswith("cpu") else "cuda"

    @property
    def gpu_memory_bytes(self) -> float:
        return self.gpu_memory_mib * MIB

    @property
    def capability(self) -> tuple[int, int] | None:
        return self.gpu.capability if self.gpu else None

    def describe(self) -> str:
        """``T4 (compute capability 7.5)``: the device as notes and errors name it."""
        if self.gpu is None:
            return self.gpu_model
        return f"{self.gpu.name} (compute capability {self.gpu.capability_text})"

    @property
    def supported_dtypes(self) -> tuple[str, ...]:
        """The device's dtypes, preferred first (an unknown GPU is taken to have bf16)."""
        if self.device == "cpu" or self.gpu is None:
            return CPU_DTYPES
        return self.gpu.supported_dtypes


def node_shape(site: Site) -> NodeShape:
    """The planner's view of ``site``'s nodes: memory from ``gpu_memory_mib``,
    ``gpu_memory_gb`` (as GiB) or the GPU table (:mod:`hpcserve.plan.gpus`), its
    ``engine.layout`` included."""
    node = site.node
    mib = memory_mib(node.gpu_model, node.gpu_memory_mib, node.gpu_memory_gb)
    if mib is None:  # the loader refuses such a site; a Site built in code may still be one
        raise UsageError(
            f"site {site.name}: node.gpu_model {node.gpu_model!r} is not in the GPU table; "
            "give node.gpu_memory_mib"
        )
    return NodeShape(
        gpus=node.gpus,
        gpu_memory_mib=mib,
        gpu_model=node.gpu_model,
        site=site.name,
        layout=site.engine.layout,
        vllm_version=site.engine.vllm_version,
        cpu_kv_space_gib=_cpu_kv_space(site),
        gpu=gpu_spec(node.gpu_model),
    )


def _cpu_kv_space(site: Site) -> float | None:
    """``VLLM_CPU_KVCACHE_SPACE`` (GiB) from the site's ``engine.env``; None when unset or 0."""
    raw = site.engine.env.get("VLLM_CPU_KVCACHE_SPACE", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def overhead_bytes(overhead_gb: float) -> float:
    """Memory per GPU that is neither weights nor KV cache: the one place the planner asks
    :mod:`hpcserve.plan.sizing` for it."""
    return overhead_gb * GB


@dataclass
class Fit:
    """The memory picture of one layout."""

    layout: Layout
    stage_weights: list[float]  # bytes per PP stage
    weights_per_gpu: list[float]  # bytes per GPU, per stage
    kv_budget_per_gpu: list[float]  # bytes per GPU, per stage
    kv: KvPrediction | None  # one DP rank's KV cache (each rank has its own)
    budgets: list[MemoryBudget] = field(default_factory=list)  # per stage, vLLM's terms
    stage_experts: list[float] = field(default_factory=list)  # routed experts' bytes per stage

    @property
    def fits(self) -> bool:
        return (
            self.kv is not None
            and min(self.kv_budget_per_gpu) > 0
            and self.kv.num_blocks >= self.kv.blocks_per_request
        )

    @property
    def total_tokens(self) -> int:
        """KV tokens of all DP ranks (vLLM logs one rank's; every rank has its own cache)."""
        return self.kv.tokens * self.layout.dp if self.kv else 0

    @property
    def total_concurrency(self) -> float:
        """Max-length requests all DP ranks hold at once."""
        return self.kv.max_concurrency * self.layout.dp if self.kv else 0.0


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
    compared: list[Fit] = field(default_factory=list)  # MoE: every layout of these nodes

    @property
    def usable_per_gpu(self) -> float:
        return self.node.gpu_memory_bytes * self.utilization

    @property
    def overhead_bytes(self) -> float:
        return overhead_bytes(self.overhead_gb)

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
    overhead_gb: float | None,
    count: ParamCount,
) -> Fit:
    """Weights per GPU, the KV budget left, and vLLM's KV numbers for one layout.

    The budget is :func:`hpcserve.plan.sizing.kv_memory_budget` (vLLM's profiling, keyed on
    the site's vLLM version); ``overhead_gb`` replaces its non-weight terms on GPU when given.
    Each DP rank holds the non-expert weights and its own KV cache; the experts are shared
    out over DP × TP GPUs (:func:`hpcserve.plan.sizing.expert_share`).
    """
    stages = stage_weight_bytes(info, layout.pp, count)
    experts = stage_expert_bytes(info, layout.pp, count) if info.is_moe else [0.0] * layout.pp
    share = expert_share(info.num_experts, layout.tp, layout.dp, layout.ep)
    per_gpu = [s / layout.tp for s in stages]
    if share != 1 / layout.tp:
        per_gpu = [
            rank_weight_bytes(s, e, layout.tp, share) for s, e in zip(stages, experts, strict=True)
        ]
    rules = vllm_rules(node.vllm_version)
    budgets = [
        kv_memory_budget(
            info,
            node.gpu_memory_bytes,
            utilization,
            w,
            layout.tp,
            rules,
            device=node.device,
            cpu_kv_space_gib=node.cpu_kv_space_gib,
        )
        for w in per_gpu
    ]
    if overhead_gb is not None and node.device != "cpu":
        budgets = [replace(b, activation=0.0, non_torch=overhead_gb * GB) for b in budgets]
        budgets = [replace(b, available=b.requested - b.non_kv) for b in budgets]
    budget = [b.available for b in budgets]
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
            report=rules.kv_report,
        )
    return Fit(layout, stages, per_gpu, budget, kv, budgets, experts)


def compare_layouts(
    info: ModelInfo,
    node: NodeShape,
    nodes: int,
    max_model_len: int,
    utilization: float,
    kv_cache_dtype: str,
    overhead_gb: float | None,
    count: ParamCount,
) -> list[Fit]:
    """Every layout vLLM accepts on ``nodes`` nodes (:func:`hpcserve.plan.layout.candidates`),
    sized: what ``plan`` shows side by side for a MoE model."""
    args = (max_model_len, utilization, kv_cache_dtype, overhead_gb, count)
    return [evaluate(info, node, lay, *args) for lay in candidates(info, nodes, node.gpus)]


def most_kv(fits: list[Fit]) -> Fit | None:
    """The fitting layout that holds the most max-length requests at once (ties: fewer DP
    ranks, then the earlier one)."""
    ok = [f for f in fits if f.fits]
    return max(ok, key=lambda f: (round(f.total_concurrency, 6), -f.layout.dp), default=None)


def make_plan(
    info: ModelInfo,
    node: NodeShape,
    nodes: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    max_model_len: int | None = None,
    utilization: float = DEFAULT_UTILIZATION,
    kv_cache_dtype: str = "auto",
    overhead_gb: float | None = None,
    dp: int | None = None,
    ep: bool | None = None,
) -> Plan:
    """Size ``info`` on ``node``-shaped nodes; ``nodes=None`` finds the smallest that fits.

    ``overhead_gb`` None: the non-KV memory vLLM's profiling finds (``kv_memory_budget``);
    ``dp``/``ep`` as :func:`hpcserve.plan.layout.choose_layout` takes them. A MoE model's plan
    also sizes every other layout of the same nodes (``Plan.compared``).
    """
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
    def plan(fit: Fit, auto_nodes: bool, tried: list[str] | None = None) -> Plan:
        compared = compare_layouts(info, node, fit.layout.nodes, *args) if info.is_moe else []
        return Plan(
            info, node, length, utilization, kv_cache_dtype, _overhead_gb(fit), count,
            weights, fit, auto_nodes, tried or [], compared,
        )  # fmt: skip

    want = (tp, pp, dp, ep)
    if nodes is not None:
        layout = choose_layout(info, nodes, node.gpus, tp, pp, node.layout, dp, ep)
        fit = evaluate(info, node, layout, *args)
        return plan(fit, auto_nodes=False)
    tried: list[str] = []
    last = min(MAX_AUTO_NODES, max_ranks(info))
    if all(isinstance(_auto_layout(info, node, n, *want), str) for n in range(1, last + 1)):
        _no_layout(info, node, last, *want)  # a layout refusal, not a memory verdict
    for n in range(1, last + 1):
        layout_or_why = _auto_layout(info, node, n, *want)
        if isinstance(layout_or_why, str):
            tried.append(f"{n} node(s): {layout_or_why}")
            continue
        fit = evaluate(info, node, layout_or_why, *args)
        if fit.fits:
            return plan(fit, auto_nodes=True, tried=tried)
        tried.append(f"{n} node(s): {shortfall(info, node, fit, *args)}")
    raise HpcserveError(
        f"{info.name} does not fit on up to {last} nodes of {node.gpus} × "
        f"{_gib(node.gpu_memory_bytes)} at utilisation {utilization}"
    )


def request_kv_bytes(
    info: ModelInfo, node: NodeShape, fit: Fit, max_model_len: int, kv_cache_dtype: str
) -> list[float]:
    """KV bytes per GPU, per PP stage, that one request of ``max_model_len`` tokens takes."""
    lay = fit.layout
    kv = fit.kv or predict_kv_cache_tokens(
        info,
        [0.0] * lay.pp,
        tp=lay.tp,
        pp=lay.pp,
        max_model_len=max_model_len,
        kv_cache_dtype=kv_cache_dtype,
        device=node.device,
    )
    return [float(kv.blocks_per_request * b) for b in kv.bytes_per_block]


def shortfall(
    info: ModelInfo,
    node: NodeShape,
    fit: Fit,
    max_model_len: int,
    utilization: float,
    kv_cache_dtype: str,
    overhead_gb: float | None = None,
    count: ParamCount | None = None,
) -> str:
    """Why ``fit`` does not fit, every term per GPU of its fullest stage: usable memory against
    weights + non-KV overhead (vLLM's profiled terms, :attr:`Fit.budgets`) + KV for one
    ``max_model_len``-token request."""
    req = request_kv_bytes(info, node, fit, max_model_len, kv_cache_dtype)
    over = [b.non_kv - b.weights for b in fit.budgets]
    need = [w + o + r for w, o, r in zip(fit.weights_per_gpu, over, req, strict=True)]
    s = max(range(len(need)), key=need.__getitem__)
    usable = fit.budgets[s].requested
    where = f" (stage {s} of {len(need)})" if len(need) > 1 else ""
    return (
        f"per GPU{where}: {_gib(usable)} usable < {_gib(fit.weights_per_gpu[s])} weights + "
        f"{_gib(over[s])} non-KV overhead + {_gib(req[s])} KV for one {max_model_len:,}-token "
        f"request = {_gib(need[s])}"
    )


def _overhead_gb(fit: Fit) -> float:
    """Per-GPU memory besides weights and KV (the largest stage's), in GB."""
    return max((b.non_kv - b.weights for b in fit.budgets), default=0.0) / GB


def _no_layout(
    info: ModelInfo,
    node: NodeShape,
    last: int,
    tp: int | None,
    pp: int | None,
    dp: int | None = None,
    ep: bool | None = None,
) -> None:
    """Raise: no node count up to ``last`` has a layout vLLM accepts (not a memory verdict);
    the reason and a layout that works are :func:`choose_layout`'s, on one node."""
    try:
        choose_layout(info, 1, node.gpus, tp, pp, node.layout, dp, ep)
    except UsageError as e:
        raise UsageError(
            f"no layout vLLM accepts for {info.name} on 1 to {last} node(s) of {node.gpus} GPUs "
            f"(before any memory check); on 1 node: {e}"
        ) from e


def _auto_layout(
    info: ModelInfo,
    node: NodeShape,
    nodes: int,
    tp: int | None,
    pp: int | None,
    dp: int | None = None,
    ep: bool | None = None,
) -> Layout | str:
    """The layout ``choose_layout`` would take on ``nodes`` nodes, or why there is none."""
    try:
        want_tp, want_pp = requested_layout(nodes, node.gpus, tp, pp, node.layout, dp)
    except UsageError as e:
        return f"no valid layout ({e})"
    ranks = dp or 1
    experts = default_ep(info, ranks) if ep is None else ep
    if refusals(info, nodes, node.gpus, want_tp, want_pp, ranks, experts):
        return f"no valid {shape_text(want_tp, want_pp, ranks)} layout"
    return Layout(want_tp, want_pp, nodes, node.gpus, ranks, experts)


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
    dp: int | None = None,
    ep: bool | None = None,
) -> Plan:
    """Size ``info`` on ``site`` (``nodes=None``: the fewest that fit).

    Options are vLLM's (None: vLLM's default) and are checked by the flag table exactly as
    ``render``/``submit`` check them; the layout comes from the same
    :func:`hpcserve.plan.layout.choose_layout` with the site's ``engine.layout``.
    """
    values = {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "data_parallel_size": dp,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "kv_cache_dtype": kv_cache_dtype,
        "dtype": dtype,
    }
    problems = vllm_flags.check_values(values)
    problems += vllm_flags.context_problems(max_model_len, derived_max_len(info), site.engine.env)
    if problems:
        raise UsageError("; ".join(problems))
    node = node_shape(site)
    return make_plan(
        for_node(info, node, dtype or "auto"),
        node,
        nodes=nodes,
        tp=tp,
        pp=pp,
        max_model_len=max_model_len,
        utilization=vllm_rules(site.engine.vllm_version).default_utilization
        if gpu_memory_utilization is None
        else gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype or "auto",
        dp=dp,
        ep=ep,
    )


def for_node(info: ModelInfo, node: NodeShape, dtype: str) -> ModelInfo:
    """``info`` as vLLM would serve it on ``node``: the dtype ``dtype`` resolves to
    (:func:`hpcserve.rules.serving_dtype`), and a note for each thing the GPU cannot run."""
    served, note = serving_dtype(dtype, info.torch_dtype, node.supported_dtypes, node.describe())
    notes = list(info.notes) + ([note] if note else [])
    if node.gpu is not None and info.quant is not None:
        notes += kernel_notes(info.quant.method, node.gpu)
    return replace(info, served_dtype=served, notes=notes)


# --------------------------------------------------------------------------- printing


def _gib(x: float) -> str:
    """Memory as vLLM logs it: GiB (2^30 bytes)."""
    return f"{x / GIB:.1f} GiB"


def _e9(x: float) -> str:
    return f"{x / 1e9:.1f}e9"


def _mb(x: float) -> str:
    return f"{x / MIB:.2f} MiB" if x >= MIB else f"{x / 1024:.1f} KiB"


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
        line = f"weights: {_e9(w.params)} params × {w.dtype_bytes} B = {_gib(w.estimated_total)}"
    else:
        line = (
            f"weights: {_e9(w.quantised_params)} params × {w.bytes_per_quantised_param:g} B"
            f" + scales {_gib(w.scale_bytes)}"
            f" + {_e9(w.unquantised_params)} unquantised × {w.dtype_bytes} B"
            f" ({_gib(w.unquantised_bytes)}) = {_gib(w.estimated_total)}"
        )
    if w.exact_total:
        line += f"; safetensors index says {_gib(w.exact_total)} (used)"
    return line


def plan_lines(p: Plan) -> list[str]:
    info, node, fit = p.info, p.node, p.fit
    lay = fit.layout
    out = [_model_line(info)]
    if info.config_path:
        out.append(f"config: {info.config_path}")
    out.append(f"site: {node.site}: {node.gpus} × {_gpu_text(node)} per node")
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
        f"usable per GPU: {_gib(node.gpu_memory_bytes)} × {p.utilization:g} = "
        f"{_gib(p.usable_per_gpu)}; per node: {node.gpus} × {_gib(p.usable_per_gpu)} = "
        f"{_gib(p.usable_per_node)}"
    )
    for t in p.tried:
        out.append(f"  {t}")
    out.append(
        f"layout: {lay.describe()} = {lay.gpus} GPUs on {lay.nodes} node(s)"
        + _layout_note(lay, node)
    )
    parts = pp_partition(info.num_layers, lay.pp)
    for s, (wg, bud) in enumerate(zip(fit.weights_per_gpu, fit.kv_budget_per_gpu, strict=True)):
        out.append(
            f"stage {s} ({parts[s]} layers): weights {_stage_split(fit, s)} = {_gib(wg)} per GPU;"
            f" KV budget {_gib(p.usable_per_gpu)} − {_gib(wg)} − {_gib(p.overhead_bytes)}"
            " non-KV overhead"
            f" = {_gib(bud)}"
        )
    out += kv_lines(p)
    out += compare_lines(p)
    out += [f"note: {n}" for n in info.notes]
    if not fit.fits:
        out.append("does not fit: " + shortfall(info, node, fit, *_fit_args(p)))
    out.append(verdict(p))
    return out


def _stage_split(fit: Fit, s: int) -> str:
    """How stage ``s``'s weights are spread over one GPU: ``97.4 GiB / TP 4``, or with DP or
    EP the non-expert part / TP plus the GPU's share of the experts."""
    lay, sw = fit.layout, fit.stage_weights[s]
    if lay.dp == 1 and not lay.ep:
        return f"{_gib(sw)} / TP {lay.tp}"
    ex = fit.stage_experts[s] if fit.stage_experts else 0.0
    if lay.ep:
        experts = f"experts {_gib(ex)} over EP {lay.ep_size} (whole experts)"
    else:
        experts = f"experts {_gib(ex)} / DP×TP {lay.dp * lay.tp}"
    return f"{_gib(sw - ex)} non-expert / TP {lay.tp} (each DP rank a copy) + {experts}"


def compare_lines(p: Plan) -> list[str]:
    """The layouts of these nodes side by side (MoE models): weights and KV per GPU, KV tokens
    and concurrency of all DP ranks; ``*`` the plan's layout, and the one holding most."""
    if not p.compared:
        return []
    best = most_kv(p.compared)
    out = [
        f"layouts on {p.fit.layout.nodes} node(s) (KV tokens and concurrency at "
        f"{p.max_model_len:,} tokens: all DP ranks together):",
        f"  {'layout':<24} {'weights/GPU':>11} {'KV/GPU':>9} {'KV tokens':>12} {'concurrency':>11}",
    ]
    for f in p.compared:
        mark = "*" if f.layout == p.fit.layout else " "
        note = "" if f.fits else "  does not fit"
        if best is not None and f is best:
            note = "  most KV"
        out.append(
            f"{mark} {f.layout.describe():<24} {_gib(max(f.weights_per_gpu)):>11} "
            f"{_gib(min(f.kv_budget_per_gpu)):>9} {f.total_tokens:>12,} "
            f"{f.total_concurrency:>10.2f}x{note}"
        )
    out.append(
        "  (which layout serves fastest is a measurement: hpcserve sweep runs them in one "
        "allocation)"
    )
    return out


def _fit_args(p: Plan) -> tuple[int, float, str, float]:
    return p.max_model_len, p.utilization, p.kv_cache_dtype, p.overhead_gb


def _gpu_text(node: NodeShape) -> str:
    """``A100-40GB (40.0 GiB = 40,960 MiB, compute capability 8.0)``."""
    parts = [f"{_gib(node.gpu_memory_bytes)} = {node.gpu_memory_mib:,.0f} MiB"]
    if node.gpu is not None:
        parts.append(f"compute capability {node.gpu.capability_text}")
    return f"{node.gpu_model} ({', '.join(parts)})"


def _layout_note(lay: Layout, node: NodeShape) -> str:
    """Which default the layout is, when it is the site's default."""
    if lay.dp > 1:
        return f" ({lay.dp} DP rank(s) of TP={lay.tp} × PP={lay.pp}, {lay.dp_local} a node)"
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
            f"stage {s} blocks: {_gib(bud)} / ({bpb // lay.page_bytes} layers × "
            f"{_mb(lay.page_bytes)}) = {int(bud // bpb)}"
        )
    pool = "CPU" if p.node.device == "cpu" else "GPU"
    rank = " per DP rank" if fit.layout.dp > 1 else ""
    out.append(
        f"KV cache size{rank}: {kv.num_blocks} blocks ÷ {kv.blocks_per_request} blocks per "
        f"{p.max_model_len}-token request × {p.max_model_len} = {kv.tokens:,} tokens"
        f' (vLLM: "{pool} KV cache size: {kv.tokens:,} tokens")'
    )
    out.append(
        f"max concurrency{rank} at {p.max_model_len:,} tokens per request: "
        f"{kv.max_concurrency:.2f}x"
    )
    if fit.layout.dp > 1:
        out.append(
            f"all {fit.layout.dp} DP ranks (each its own KV cache): {fit.total_tokens:,} tokens, "
            f"{fit.total_concurrency:.2f}x"
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
        shape = f"TP={lay.tp}, PP={lay.pp}"
        if lay.dp > 1:
            shape = f"DP={lay.dp}, {shape}"
        return (
            f"verdict: {p.info.name} {how} {lay.nodes} node(s) of {p.node.site} "
            f"({shape}{', EP' if lay.ep else ''})"
        )
    if p.fit.kv is None:  # no memory left for any KV cache: the context length is not the cause
        return (
            f"verdict: does NOT fit on {lay.nodes} node(s): the weights "
            f"({_gib(max(p.fit.weights_per_gpu))} a GPU) and the non-KV memory exceed the "
            f"{_gib(p.usable_per_gpu)} usable a GPU; try --nodes auto (more GPUs), a quantised "
            "model or a higher --gpu-memory-utilization"
        )
    return (
        f"verdict: does NOT fit on {lay.nodes} node(s): weights and one "
        f"{p.max_model_len}-token request exceed {_gib(p.usable_per_node * lay.nodes)}; "
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
        "gpu_model": p.node.gpu_model,
        "gpu_memory_mib": p.node.gpu_memory_mib,
        "gpu_memory_gib": p.node.gpu_memory_bytes / GIB,
        "compute_capability": p.node.gpu.capability_text if p.node.gpu else None,
        "bf16": "bfloat16" in p.node.supported_dtypes,
        "fp8": p.node.gpu.fp8 if p.node.gpu else None,
        "gpu_memory_utilization": p.utilization,
        "max_model_len": p.max_model_len,
        "kv_cache_dtype": p.kv_cache_dtype,
        "dtype": info.served_dtype or "auto",
        "dtype_bytes": info.dtype_bytes,
        "layout_mode": p.node.layout,
        "overhead_bytes_per_gpu": p.overhead_bytes,
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
        "dp": lay.dp,
        "enable_expert_parallel": lay.ep,
        "kv_tokens_all_dp_ranks": fit.total_tokens,
        "max_concurrency_all_dp_ranks": fit.total_concurrency,
        "layouts": [_compared_dict(f) for f in p.compared],
        "stage_weight_bytes": fit.stage_weights,
        "weights_per_gpu_bytes": fit.weights_per_gpu,
        "kv_budget_per_gpu_bytes": fit.kv_budget_per_gpu,
        "kv_bytes_per_request_per_gpu": request_kv_bytes(
            info, p.node, fit, p.max_model_len, p.kv_cache_dtype
        ),
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


def _compared_dict(f: Fit) -> dict[str, Any]:
    lay = f.layout
    return {
        "dp": lay.dp,
        "tp": lay.tp,
        "pp": lay.pp,
        "enable_expert_parallel": lay.ep,
        "weights_per_gpu_bytes": max(f.weights_per_gpu),
        "kv_budget_per_gpu_bytes": min(f.kv_budget_per_gpu),
        "kv_tokens": f.total_tokens,
        "max_concurrency": f.total_concurrency,
        "fits": f.fits,
    }
