"""Memory arithmetic for serving a model with vLLM: parameters, weight bytes, KV cache.

Everything here is a pure function of a :class:`~hpcserve.plan.modelinfo.ModelInfo` and numbers.

KV-cache accounting follows vLLM's v1 KV-cache manager (read from its source, not copied):

- ``vllm/v1/kv_cache_interface.py``: ``FullAttentionSpec.page_size_bytes`` is
  ``block_size × num_kv_heads_per_rank × (head_size + head_size_v) × dtype_bytes``;
  ``MambaSpec.page_size_bytes`` is the sum of its state tensors (padded to
  ``page_size_padded``), independent of the block size; ``MambaSpec.max_memory_usage_bytes``
  is one page per request (two with ``mamba_cache_mode="align"``, which prefix caching sets).
- ``vllm/config/model.py`` ``ModelConfig.get_num_kv_heads``: ``max(1, kv_heads // tp)``, so KV
  heads are replicated when TP exceeds them.
- ``Platform._align_hybrid_block_size`` (``vllm/platforms/interface.py``): for hybrid models
  the attention block size grows to ``align × cdiv(mamba_page, align × attn_page_1_token)``
  and the mamba page is padded to the attention page, so every layer has one page size.
- ``MambaStateShapeCalculator.gated_delta_net_state_shape`` and
  ``MambaStateDtypeCalculator.gated_delta_net_state_dtype``
  (``vllm/model_executor/layers/mamba/mamba_utils.py``): conv state
  ``(conv_kernel - 1) × (2·Kh·Kd + Vh·Vd)/tp`` in the model dtype, recurrent state
  ``(Vh/tp) × Vd × Kd`` in ``mamba_ssm_cache_dtype`` (Qwen3.5 configs set float32 through
  ``Qwen3_5ForConditionalGenerationConfig``; Qwen3-Next keeps the model dtype).
- ``vllm/v1/core/kv_cache_utils.py``: ``_get_kv_cache_groups_uniform_page_size`` buckets layers
  by spec, takes the smallest bucket as the group size and splits each bucket into groups of
  that many layers (``layers[i::num_groups]``); ``get_kv_cache_config_from_groups`` makes
  ``num_blocks = available // (layers_per_group × page)``; ``get_kv_cache_configs`` projects
  the groups onto each PP worker and keeps the smallest ``num_blocks``;
  ``get_max_concurrency_for_kv_cache_config`` divides ``num_blocks`` by the blocks one
  max-length request takes summed over groups, and ``get_kv_cache_capacity`` /
  ``update_kv_cache_capacity`` print ``int(concurrency × max_model_len)`` as
  ``GPU KV cache size: N tokens, Maximum concurrency for L tokens per request: X.XXx``
  (``CPU KV cache size`` on the CPU backend). Older releases printed
  ``num_blocks // num_groups × block_size``; ``report="legacy"`` reproduces that.
- The memory vLLM hands to this computation is logged by ``gpu_worker.py`` as
  ``Available KV cache memory: X GiB`` (``requested_memory − non_kv_cache_memory``, with
  ``requested_memory = total × gpu_memory_utilization``); the CPU worker logs
  ``Auto set (X/Y) GiB for KV cache`` or ``Explicitly set (X/Y) GiB`` (``VLLM_CPU_KVCACHE_SPACE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hpcserve.plan.modelinfo import DTYPE_BYTES, LINEAR_ATTENTION, ModelInfo, QuantInfo

GB = 1e9
GIB = 1024**3


#: vLLM's default KV block size on CUDA (``CacheConfig.DEFAULT_BLOCK_SIZE``) and on CPU
#: (``CpuPlatform.check_and_update_config``), and the smallest kernel block each backend takes
#: (FlashAttention ``MultipleOf(16)``; CPU attention ``MultipleOf(32)``).
DEFAULT_BLOCK_SIZE = {"cuda": 16, "cpu": 128}
KERNEL_BLOCK_ALIGNMENT = {"cuda": 16, "cpu": 32}

#: Scale and zero-point storage of group-quantised int weights (GPTQ/AWQ): one fp16 scale and
#: one packed ``bits``-bit zero per group of ``group_size`` weights of one output column.
SCALE_BYTES = 2

# Module categories, named after the HF module names they cover.
QUANTISABLE = ("self_attn", "linear_attn", "mlp", "experts", "shared_expert")
UNQUANTISED = ("embed_tokens", "lm_head", "router", "linear_attn_misc", "norms")


# --------------------------------------------------------------------------- parameters


def layer_params(info: ModelInfo, i: int) -> dict[str, int]:
    """Parameters of decoder layer ``i`` by module category."""
    h = info.hidden_size
    out: dict[str, int] = {"norms": 2 * h}
    if info.layer_types[i] == LINEAR_ATTENTION:
        lin = info.linear
        assert lin is not None
        key_dim = lin.num_key_heads * lin.key_head_dim
        value_dim = lin.num_value_heads * lin.value_head_dim
        # in_proj_qkvz, in_proj_ba, out_proj are linear layers.
        out["linear_attn"] = h * (2 * key_dim + 2 * value_dim) + h * 2 * lin.num_value_heads
        out["linear_attn"] += value_dim * h
        # conv1d over q,k,v; A_log and dt_bias per value head; gated RMSNorm per head dim.
        out["linear_attn_misc"] = (
            (2 * key_dim + value_dim) * lin.conv_kernel_dim
            + 2 * lin.num_value_heads
            + lin.value_head_dim
        )
    else:
        q_out = info.num_attention_heads * info.head_dim
        kv_out = info.num_kv_heads * info.head_dim
        q_proj = h * q_out * (2 if info.attn_output_gate else 1)
        attn = q_proj + 2 * h * kv_out + q_out * h
        if info.attention_bias:
            attn += q_out + 2 * kv_out
        out["self_attn"] = attn
    if info.moe_layers and info.moe_layers[i]:
        moe_i = info.moe_intermediate_size or 0
        out["experts"] = info.num_experts * 3 * h * moe_i
        out["router"] = info.num_experts * h
        shared = 0
        if info.shared_expert_intermediate_size:
            shared += 3 * h * info.shared_expert_intermediate_size
            out["router"] += h  # shared_expert_gate
        if info.num_shared_experts:
            shared += info.num_shared_experts * 3 * h * moe_i
        if shared:
            out["shared_expert"] = shared
    else:
        out["mlp"] = 3 * h * (info.intermediate_size or 4 * h)
    return out


@dataclass
class ParamCount:
    """Parameters of the text model by category, plus per-layer totals."""

    by_category: dict[str, int]
    per_layer: list[dict[str, int]]

    @property
    def total(self) -> int:
        return sum(self.by_category.values())


def count_parameters(info: ModelInfo) -> ParamCount:
    """Parameters from the config: embeddings, every layer (all experts), lm_head, norms."""
    per_layer = [layer_params(info, i) for i in range(info.num_layers)]
    cats: dict[str, int] = {}
    for lp in per_layer:
        for k, v in lp.items():
            cats[k] = cats.get(k, 0) + v
    cats["embed_tokens"] = info.vocab_size * info.hidden_size
    cats["lm_head"] = 0 if info.tie_word_embeddings else info.vocab_size * info.hidden_size
    cats["norms"] = cats.get("norms", 0) + info.hidden_size
    return ParamCount(by_category=cats, per_layer=per_layer)


# --------------------------------------------------------------------------- weight bytes


def is_quantised(category: str, quant: QuantInfo | None) -> bool:
    """Whether a category's weights are stored quantised (embeddings/lm_head/router never)."""
    if quant is None or category not in QUANTISABLE:
        return False
    # modules_to_not_convert / ignore patterns such as "linear_attn" or "re:.*shared_expert.*"
    token = {"experts": "mlp.experts", "mlp": "mlp."}.get(category, category)
    return not any(token in pattern for pattern in quant.not_converted)


def quant_bytes_per_param(quant: QuantInfo, in_features: int) -> tuple[float, float]:
    """(bytes per weight, bytes of scales/zeros per weight) for a quantised matrix."""
    base = quant.bits / 8
    if quant.method in ("fp8",) or (quant.bits == 8 and quant.group_size is None):
        block = quant.weight_block_size
        if block and len(block) == 2:
            return base, 4 / (block[0] * block[1])  # one fp32 scale per block
        return base, 0.0  # per-tensor / per-channel scales: negligible
    group = quant.group_size or in_features
    zero_bytes = 0.0 if (quant.method == "compressed-tensors" and quant.sym) else quant.bits / 8
    return base, (SCALE_BYTES + zero_bytes) / group


@dataclass
class WeightBytes:
    """Weight memory, split as a person would check it."""

    params: int
    quantised_params: int
    unquantised_params: int
    bytes_per_quantised_param: float
    scale_bytes: float
    unquantised_bytes: float
    dtype_bytes: int
    estimated_total: float
    exact_total: int | None  # from model.safetensors.index.json
    unquantised_categories: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(self.exact_total) if self.exact_total else self.estimated_total


def _category_bytes(info: ModelInfo, cat: str, params: int) -> tuple[float, float, float]:
    """(weight bytes, scale bytes, unquantised bytes) of ``params`` weights of one category."""
    if is_quantised(cat, info.quant):
        assert info.quant is not None
        base, scale = quant_bytes_per_param(info.quant, info.hidden_size)
        return params * base, params * scale, 0.0
    return 0.0, 0.0, float(params * info.dtype_bytes)


def weight_bytes(info: ModelInfo, count: ParamCount | None = None) -> WeightBytes:
    """Bytes of all weights by quantisation; exact size from safetensors when known."""
    count = count or count_parameters(info)
    q_params = u_params = 0
    q_bytes = s_bytes = u_bytes = 0.0
    unq: list[str] = []
    for cat, n in count.by_category.items():
        wb, sb, ub = _category_bytes(info, cat, n)
        q_bytes, s_bytes, u_bytes = q_bytes + wb, s_bytes + sb, u_bytes + ub
        if is_quantised(cat, info.quant):
            q_params += n
        else:
            u_params += n
            if n and info.quant is not None:
                unq.append(cat)
    bpp = q_bytes / q_params if q_params else float(info.dtype_bytes)
    return WeightBytes(
        params=count.total,
        quantised_params=q_params,
        unquantised_params=u_params,
        bytes_per_quantised_param=bpp,
        scale_bytes=s_bytes,
        unquantised_bytes=u_bytes,
        dtype_bytes=info.dtype_bytes,
        estimated_total=q_bytes + s_bytes + u_bytes,
        exact_total=info.safetensors_total_size,
        unquantised_categories=unq,
    )


def pp_partition(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage as vLLM's ``get_pp_indices`` splits them.

    Even split; the remainder goes one each to the stages before the last, from the
    second-to-last backwards (``vllm/distributed/utils.py``).
    """
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def stage_weight_bytes(info: ModelInfo, pp: int, count: ParamCount | None = None) -> list[float]:
    """Weight bytes held by each PP stage (first adds embeddings, last lm_head + norm)."""
    count = count or count_parameters(info)
    wb = weight_bytes(info, count)
    parts = pp_partition(info.num_layers, pp)
    stages: list[float] = []
    start = 0
    for s, n in enumerate(parts):
        total = 0.0
        for lp in count.per_layer[start : start + n]:
            for cat, params in lp.items():
                a, b, c = _category_bytes(info, cat, params)
                total += a + b + c
        start += n
        if s == 0:
            total += info.vocab_size * info.hidden_size * info.dtype_bytes
        if s == pp - 1:
            total += info.hidden_size * info.dtype_bytes
            if not info.tie_word_embeddings or pp > 1:
                total += info.vocab_size * info.hidden_size * info.dtype_bytes
        stages.append(total)
    if wb.exact_total and sum(stages):
        scale = wb.exact_total / wb.estimated_total
        stages = [x * scale for x in stages]
    return stages


def stage_expert_bytes(info: ModelInfo, pp: int, count: ParamCount | None = None) -> list[float]:
    """The routed experts' share of :func:`stage_weight_bytes`, per PP stage (same scaling to
    the safetensors size)."""
    count = count or count_parameters(info)
    wb = weight_bytes(info, count)
    parts = pp_partition(info.num_layers, pp)
    out: list[float] = []
    start = 0
    for n in parts:
        experts = sum(lp.get("experts", 0) for lp in count.per_layer[start : start + n])
        a, b, c = _category_bytes(info, "experts", experts)
        out.append(a + b + c)
        start += n
    if wb.exact_total and wb.estimated_total:
        out = [x * wb.exact_total / wb.estimated_total for x in out]
    return out


def expert_share(num_experts: int, tp: int, dp: int = 1, ep: bool = False) -> float:
    """The fraction of the experts' bytes one GPU holds.

    ``FusedMoEParallelConfig.make`` (``vllm/model_executor/layers/fused_moe/config.py``):
    without expert parallelism the experts are sliced over DP × TP ranks
    (``flatten_tp_across_dp_and_pcp``); with it EP = DP × TP ranks hold whole experts, and
    ``determine_expert_map`` (``fused_moe/layer.py``) gives the first ``E % EP`` ranks
    ``E // EP + 1`` of them, so the fullest GPU holds ``ceil(E / EP)``.
    """
    ways = tp * dp
    if not ep or num_experts <= 0:
        return 1 / ways
    return -(-num_experts // ways) / num_experts


def rank_weight_bytes(stage_bytes: float, expert_bytes: float, tp: int, share: float) -> float:
    """Weight bytes on one GPU of a stage: the non-expert weights (replicated in every DP rank)
    sliced by TP, plus ``share`` of the experts."""
    return (stage_bytes - expert_bytes) / tp + expert_bytes * share


# --------------------------------------------------------------------------- KV cache


def kv_dtype_bytes(info: ModelInfo, kv_cache_dtype: str = "auto") -> int:
    """Bytes of one KV element: the model dtype for ``auto``, 1 for fp8 variants."""
    if kv_cache_dtype == "auto":
        return info.dtype_bytes
    return DTYPE_BYTES.get(kv_cache_dtype, 1 if kv_cache_dtype.startswith("fp8") else 2)


def kv_heads_per_rank(info: ModelInfo, tp: int) -> int:
    """``ModelConfig.get_num_kv_heads``: split across TP, at least one (replicated)."""
    return max(1, info.num_kv_heads // tp)


def attention_bytes_per_token(info: ModelInfo, tp: int, kv_cache_dtype: str = "auto") -> int:
    """Bytes one token takes in one full-attention layer on one TP rank (K and V)."""
    return 2 * kv_heads_per_rank(info, tp) * info.head_dim * kv_dtype_bytes(info, kv_cache_dtype)


def ssm_state_dtype_bytes(info: ModelInfo, override: str | None = None) -> int:
    """Recurrent-state dtype: Qwen3.5 architectures take ``mamba_ssm_dtype`` from the config."""
    if override:
        return DTYPE_BYTES[override]
    if info.mamba_ssm_dtype and info.architecture.startswith("Qwen3_5"):
        return DTYPE_BYTES.get(str(info.mamba_ssm_dtype), info.dtype_bytes)
    return info.dtype_bytes


def linear_state_bytes(info: ModelInfo, tp: int, mamba_ssm_dtype: str | None = None) -> int:
    """Bytes of one Gated DeltaNet layer's state for one request on one TP rank."""
    lin = info.linear
    if lin is None:
        return 0
    conv_dim = 2 * lin.num_key_heads * lin.key_head_dim + lin.num_value_heads * lin.value_head_dim
    conv = (conv_dim // tp) * (lin.conv_kernel_dim - 1) * info.dtype_bytes
    ssm = (lin.num_value_heads // tp) * lin.value_head_dim * lin.key_head_dim
    return conv + ssm * ssm_state_dtype_bytes(info, mamba_ssm_dtype)


@dataclass
class KvGroup:
    """One KV-cache group: layers sharing a block table."""

    kind: str  # "attention" or "linear_attention"
    layers: list[int]


@dataclass
class KvLayout:
    """How vLLM pages the KV cache for a model at a TP size."""

    block_size: int  # tokens per attention block
    page_bytes: int  # bytes of one block of one layer (all layers equal)
    attn_bytes_per_token: int  # one attention layer, one rank
    state_bytes: int  # one linear-attention layer's state, unpadded, one rank
    groups: list[KvGroup]

    def blocks_per_request(self, max_model_len: int, mamba_blocks: int) -> int:
        """Blocks one request of ``max_model_len`` tokens takes, summed over groups."""
        total = 0
        for g in self.groups:
            if g.kind == "attention":
                total += -(-max_model_len // self.block_size)
            else:
                total += mamba_blocks
        return total


def _split_groups(kind: str, layers: list[int], group_size: int) -> list[KvGroup]:
    n = -(-len(layers) // group_size)
    return [KvGroup(kind, layers[i::n]) for i in range(n)]


def kv_layout(
    info: ModelInfo,
    tp: int,
    kv_cache_dtype: str = "auto",
    block_size: int | None = None,
    device: str = "cuda",
    mamba_ssm_dtype: str | None = None,
) -> KvLayout:
    """Block size, page size and groups the way vLLM builds them (see the module docstring)."""
    bs = block_size or DEFAULT_BLOCK_SIZE.get(device, 16)
    per_token = attention_bytes_per_token(info, tp, kv_cache_dtype)
    attn_layers = [i for i, t in enumerate(info.layer_types) if t != LINEAR_ATTENTION]
    lin_layers = [i for i, t in enumerate(info.layer_types) if t == LINEAR_ATTENTION]
    state = linear_state_bytes(info, tp, mamba_ssm_dtype) if lin_layers else 0
    if not lin_layers:
        return KvLayout(bs, bs * per_token, per_token, 0, [KvGroup("attention", attn_layers)])
    align = max(KERNEL_BLOCK_ALIGNMENT.get(device, 16), bs)
    needed = align * -(-state // (align * per_token))
    bs = max(bs, needed)
    page = bs * per_token  # the mamba page is padded up to this
    if not attn_layers:
        return KvLayout(bs, page, per_token, state, [KvGroup(LINEAR_ATTENTION, lin_layers)])
    lo, hi = sorted((len(attn_layers), len(lin_layers)))
    group_size = hi if hi < lo * 1.5 else lo
    groups = _split_groups("attention", attn_layers, group_size)
    groups += _split_groups(LINEAR_ATTENTION, lin_layers, group_size)
    return KvLayout(bs, page, per_token, state, groups)


@dataclass
class KvPrediction:
    """What vLLM would report for the KV cache of a deployment."""

    num_blocks: int
    tokens: int  # "KV cache size: N tokens"
    max_concurrency: float  # "Maximum concurrency for L tokens per request: X"
    blocks_per_request: int
    bytes_per_block: list[int]  # per PP stage: layers-per-group × page
    layout: KvLayout


def predict_kv_cache_tokens(
    info: ModelInfo,
    available_kv_bytes_per_gpu: float | list[float],
    tp: int = 1,
    pp: int = 1,
    max_model_len: int = 4096,
    kv_cache_dtype: str = "auto",
    block_size: int | None = None,
    device: str = "cuda",
    prefix_caching: bool = True,
    mamba_ssm_dtype: str | None = None,
    report: str = "capacity",
) -> KvPrediction:
    """Predict vLLM's ``KV cache size: N tokens`` from the memory it had for KV per GPU.

    ``available_kv_bytes_per_gpu`` is what vLLM logs as ``Available KV cache memory: X GiB``
    (pass ``X * 2**30``), one value for all ranks or one per PP stage. ``report="capacity"``
    follows current vLLM (``int(concurrency × max_model_len)``); ``"legacy"`` the older
    ``num_blocks // num_groups × block_size``.
    """
    layout = kv_layout(info, tp, kv_cache_dtype, block_size, device, mamba_ssm_dtype)
    avail = (
        list(available_kv_bytes_per_gpu)
        if isinstance(available_kv_bytes_per_gpu, list)
        else [available_kv_bytes_per_gpu] * pp
    )
    if len(avail) != pp:
        raise ValueError("need one available-memory value per PP stage")
    parts = pp_partition(info.num_layers, pp)
    bounds = [(sum(parts[:s]), sum(parts[: s + 1])) for s in range(pp)]
    per_stage_block: list[int] = []
    blocks: list[int] = []
    for (lo, hi), mem in zip(bounds, avail, strict=True):
        widest = max(sum(1 for i in g.layers if lo <= i < hi) for g in layout.groups)
        bpb = max(widest, 1) * layout.page_bytes
        per_stage_block.append(bpb)
        blocks.append(max(int(mem // bpb), 0))
    num_blocks = min(blocks)
    mamba_blocks = 2 if prefix_caching else 1
    per_req = layout.blocks_per_request(max_model_len, mamba_blocks)
    concurrency = num_blocks / per_req if per_req else 0.0
    if report == "legacy":
        tokens = num_blocks // len(layout.groups) * layout.block_size
    else:
        tokens = int(concurrency * max_model_len)
    return KvPrediction(num_blocks, tokens, concurrency, per_req, per_stage_block, layout)


def naive_kv_bytes_per_token(info: ModelInfo, kv_cache_dtype: str = "auto") -> int:
    """The naive count: every layer keeps K and V for every token (whole model, no TP)."""
    return (
        2
        * info.num_layers
        * info.num_kv_heads
        * info.head_dim
        * kv_dtype_bytes(info, kv_cache_dtype)
    )


# --------------------------------------------------------------------------- vLLM's log lines

_LOG_PATTERNS = {
    # gpu_worker.py determine_available_memory
    "available_gib": r"Available KV cache memory: ([\d.]+) GiB",
    # cpu_worker.py determine_available_memory
    "cpu_auto_gib": r"Auto set \(([\d.]+)/[\d.]+\) GiB for KV cache",
    "cpu_explicit_gib": r"Explicitly set \(([\d.]+)/[\d.]+\) GiB for KV cache",
    # kv_cache_utils.py update_kv_cache_capacity (older: _report_kv_cache_config)
    "tokens": r"(?:GPU|CPU|XPU|[A-Z]+)(?: \+ host)? KV cache size: ([\d,]+) tokens",
    "concurrency": r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x",
}


def parse_vllm_kv_log(text: str) -> dict[str, float]:
    """Pull the KV numbers out of a vLLM log: available GiB, tokens, concurrency, length.

    Keys present only when their line is: ``available_bytes`` (GPU ``Available KV cache
    memory`` or the CPU ``Auto set``/``Explicitly set`` line), ``tokens``, ``max_model_len``,
    ``max_concurrency``. The first occurrence wins (every rank prints the same numbers).
    """
    out: dict[str, float] = {}
    for key in ("available_gib", "cpu_auto_gib", "cpu_explicit_gib"):
        m = re.search(_LOG_PATTERNS[key], text)
        if m and "available_bytes" not in out:
            out["available_bytes"] = float(m.group(1)) * GIB
    m = re.search(_LOG_PATTERNS["tokens"], text)
    if m:
        out["tokens"] = float(m.group(1).replace(",", ""))
    m = re.search(_LOG_PATTERNS["concurrency"], text)
    if m:
        out["max_model_len"] = float(m.group(1).replace(",", ""))
        out["max_concurrency"] = float(m.group(2))
    return out


# --------------------------------------------------------------------------- memory budget

#: The vLLM release whose rules apply when a site does not say (``engine.vllm_version``).
DEFAULT_VLLM_VERSION = "0.32.0"

#: ``max_num_batched_tokens`` and ``max_num_seqs`` of ``vllm serve`` on a data-centre GPU
#: (``EngineArgs._set_default_args`` for the OpenAI server; the logs in ``tests/data`` print
#: ``Chunked prefill is enabled with max_num_batched_tokens=8192``).
PROFILE_TOKENS = 8192
PROFILE_SEQS = 1024

#: Torch memory the profile run holds whatever the model: persistent input buffers, the
#: cuBLAS/attention workspaces (the tiny models of ``tests/data`` peak at 0.17-0.18 GiB).
ACTIVATION_FLOOR = 0.1 * GIB

#: Memory outside torch that appears between loading and the end of profiling (NCCL buffers,
#: allocator slack): 0.06-0.22 GiB in the 0.26.0 logs of ``tests/data``.
NON_TORCH = 0.2 * GIB

#: The CPU worker's memory besides the KV cache and the weights (Python, torch, oneDNN).
CPU_RUNTIME = 1.0 * GIB


def _version(text: str) -> tuple[int, int]:
    """``"0.26.0"`` -> ``(0, 26)``; anything unreadable is the default version."""
    m = re.match(r"v?(\d+)\.(\d+)", text.strip())
    if not m:
        m = re.match(r"(\d+)\.(\d+)", DEFAULT_VLLM_VERSION)
        assert m
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class VllmRules:
    """The parts of vLLM's memory accounting that changed between releases."""

    version: str
    #: ``CacheConfig.gpu_memory_utilization`` default (0.26.0 logs: ``(0.92, ...)``).
    default_utilization: float
    #: How ``KV cache size: N tokens`` is computed: ``"capacity"`` (0.32: ``int(concurrency ×
    #: max_model_len)``, ``get_kv_cache_capacity``) or ``"legacy"`` (older: ``num_blocks //
    #: num_groups × block_size``, ``_report_kv_cache_config``).
    kv_report: str
    #: CPU backend without ``VLLM_CPU_KVCACHE_SPACE``: a fixed size in GiB (older
    #: ``CpuPlatform.check_and_update_config``: 4) or None for the 0.32 ``cpu_worker.py`` rule
    #: ``Auto set``: ``total × gpu_memory_utilization − the worker's RSS``.
    cpu_kv_default_gib: float | None


def vllm_rules(version: str | None) -> VllmRules:
    """The rules of ``version`` (the site's ``engine.vllm_version``).

    None: the newest known release's rules, except the utilisation default (0.9).
    """
    text = version or DEFAULT_VLLM_VERSION
    v = _version(text)
    return VllmRules(
        version=text,
        # unknown release: the long-standing 0.9, which leaves more room than 0.92
        default_utilization=0.92 if version and v >= (0, 26) else 0.9,
        kv_report="capacity" if v >= (0, 32) else "legacy",
        cpu_kv_default_gib=None if v >= (0, 32) else 4.0,
    )


def activation_peak_bytes(info: ModelInfo, tp: int, tokens: int = PROFILE_TOKENS) -> float:
    """Torch peak of vLLM's profile run (``gpu_model_runner.profile_run``) on one rank.

    One forward of ``tokens`` tokens keeps a few hidden-size tensors and one MLP (or fused-MoE)
    intermediate live at a time; the dummy sampler run makes float32 logits for
    ``PROFILE_SEQS`` requests over the whole vocabulary (and a softmax copy).
    """
    b = info.dtype_bytes
    mlp = info.intermediate_size or 4 * info.hidden_size
    if info.is_moe and info.moe_intermediate_size:
        mlp = info.moe_intermediate_size * max(info.experts_per_token, 1)
    forward = tokens * b * (4 * info.hidden_size + 2 * mlp // tp)
    sampler = PROFILE_SEQS * info.vocab_size * 4 * 2
    return ACTIVATION_FLOOR + forward + sampler


@dataclass
class MemoryBudget:
    """One rank's memory the way vLLM's worker splits it before sizing the KV cache."""

    total: float  # the device's memory (on CPU: the rank's memory)
    requested: float  # total × gpu_memory_utilization
    weights: float
    activation: float  # torch peak of the profile run (0 on CPU)
    non_torch: float  # NCCL, allocator slack (on CPU: the worker's runtime)
    available: float  # "Available KV cache memory" / the CPU worker's KV space

    @property
    def non_kv(self) -> float:
        """What is not KV cache: weights, activation peak, non-torch memory."""
        return self.weights + self.activation + self.non_torch


def kv_memory_budget(
    info: ModelInfo,
    total_bytes: float,
    utilization: float,
    weight_bytes_per_rank: float,
    tp: int,
    rules: VllmRules,
    device: str = "cuda",
    cpu_kv_space_gib: float | None = None,
) -> MemoryBudget:
    """The KV memory of one rank, as vLLM's worker ``determine_available_memory`` finds it.

    GPU (``vllm/v1/worker/gpu_worker.py``, ``vllm/utils/mem_utils.py`` ``memory_profiling``):
    ``requested = total × utilization``; ``non_kv = weights + torch peak increase of the
    profile run + non-torch increase``; ``available = requested − non_kv``. The CUDA-graph
    estimate enters only with ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` (off by default:
    the 0.26.0 logs print it but leave it out of the available figure).
    CPU (``vllm/v1/worker/cpu_worker.py``): ``VLLM_CPU_KVCACHE_SPACE`` GiB when set (vLLM
    refuses it when it exceeds the memory left), else ``rules.cpu_kv_default_gib`` or the
    ``Auto set`` rule ``requested − RSS``.
    """
    requested = total_bytes * utilization
    if device == "cpu":
        return _cpu_budget(total_bytes, requested, weight_bytes_per_rank, rules, cpu_kv_space_gib)
    act = activation_peak_bytes(info, tp)
    non_kv = weight_bytes_per_rank + act + NON_TORCH
    return MemoryBudget(
        total_bytes, requested, weight_bytes_per_rank, act, NON_TORCH, requested - non_kv
    )


def _cpu_budget(
    total: float, requested: float, weights: float, rules: VllmRules, space_gib: float | None
) -> MemoryBudget:
    """The CPU worker's KV space: explicit, the old fixed default, or ``Auto set``."""
    explicit = space_gib if space_gib else rules.cpu_kv_default_gib
    left = total - weights - CPU_RUNTIME
    if explicit is None:
        kv = requested - weights - CPU_RUNTIME
    else:
        kv = explicit * GIB
        if kv > left:  # "Available memory on node ... is less than requested memory for kv"
            kv = left - kv
    return MemoryBudget(total, requested, weights, 0.0, CPU_RUNTIME, kv)
