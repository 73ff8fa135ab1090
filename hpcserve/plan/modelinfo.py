"""Find and read a model's ``config.json`` into a :class:`ModelInfo`.

Where a config comes from, in order (:func:`locate_model`): ``--config-json PATH``; a local model
directory; the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, ``models--ORG--NAME/snapshots/*/config.json``); then, for ``plan``
and the Python API only, the Hugging Face Hub (:mod:`hpcserve.plan.hub`). A
``model.safetensors.index.json`` beside it gives the exact weight size (``metadata.total_size``)
when present.

Parsing is a pure function (:func:`parse_config`) so the sizing logic is tested on plain dicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcserve.errors import UsageError
from hpcserve.rules import resolve_dtype

FULL_ATTENTION = "full_attention"
LINEAR_ATTENTION = "linear_attention"  # Gated DeltaNet (Qwen3-Next / Qwen3.5)
SLIDING_ATTENTION = "sliding_attention"

INDEX_FILE = "model.safetensors.index.json"

DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "fp32": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "fp16": 2,
    "bf16": 2,
    "fp8": 1,
    "float8_e4m3fn": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}


@dataclass
class QuantInfo:
    """The parts of ``quantization_config`` that change how many bytes a weight takes."""

    method: str  # gptq, awq, fp8, compressed-tensors, bitsandbytes, ...
    bits: int
    group_size: int | None = None  # None/-1: per output channel
    sym: bool = True
    weight_block_size: list[int] | None = None  # FP8 block quantisation, e.g. [128, 128]
    not_converted: list[str] = field(default_factory=list)  # module patterns left in 16 bit


@dataclass
class LinearAttentionDims:
    """Gated DeltaNet dimensions (``linear_*`` keys of Qwen3-Next / Qwen3.5)."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel_dim: int


@dataclass
class ModelInfo:
    """The text model's shape, as far as memory sizing needs it."""

    name: str
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int | None = None
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int = 0  # Qwen-style single shared expert
    num_shared_experts: int = 0  # DeepSeek-style n_shared_experts of moe size
    moe_layers: list[bool] = field(default_factory=list)  # per layer: MoE MLP or dense
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"
    quant: QuantInfo | None = None
    layer_types: list[str] = field(default_factory=list)  # one per layer
    linear: LinearAttentionDims | None = None
    mamba_ssm_dtype: str | None = None
    attn_output_gate: bool = False
    attention_bias: bool = False
    max_position_embeddings: int | None = None
    rope_scaling: dict[str, Any] | None = None  # config's rope_scaling (or rope_parameters)
    sliding_window: int | None = None
    multimodal: bool = False
    uses_mla: bool = False
    config_path: str | None = None
    safetensors_total_size: int | None = None
    served_dtype: str | None = None  # vLLM --dtype when not auto
    notes: list[str] = field(default_factory=list)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_hybrid(self) -> bool:
        return any(t == LINEAR_ATTENTION for t in self.layer_types)

    @property
    def num_full_attention_layers(self) -> int:
        return sum(1 for t in self.layer_types if t != LINEAR_ATTENTION)

    @property
    def num_linear_attention_layers(self) -> int:
        return sum(1 for t in self.layer_types if t == LINEAR_ATTENTION)

    @property
    def dtype_bytes(self) -> int:
        """Bytes of one unquantised weight/KV element as vLLM serves it.

        ``--dtype auto`` downcasts float32 checkpoints to a 16-bit type
        (``_resolve_auto_dtype`` in ``vllm/config/model.py``); ``served_dtype`` overrides, resolved
        by :func:`hpcserve.rules.resolve_dtype` (``half`` is float16, ``float`` float32).
        """
        if self.served_dtype and self.served_dtype != "auto":
            return DTYPE_BYTES[resolve_dtype(self.served_dtype)]
        return min(DTYPE_BYTES.get(self.torch_dtype, 2), 2)


# --------------------------------------------------------------------------- finding


def hub_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The HF hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/...``."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()
    return base / "huggingface" / "hub"


def _snapshot_config(repo_dir: Path, revision: str | None = None) -> Path | None:
    """config.json of the snapshot ``refs/REVISION`` (default main) names, or of the snapshot
    named REVISION; with no revision given, else of the newest snapshot."""
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / (revision or "main")
    names = [ref.read_text().strip()] if ref.is_file() else []
    names += [revision] if revision else []
    for name in names:
        candidate = snapshots / name / "config.json"
        if candidate.is_file():
            return candidate
    if revision:
        return None
    found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's config is, and its safetensors index when there is one."""

    config: Path
    index: Path | None = None
    source: str = "local"  # config-json, local, cache or hub


def _beside(config: Path, source: str) -> ModelFiles:
    index = config.with_name(INDEX_FILE)
    return ModelFiles(config, index if index.is_file() else None, source)


def _explicit(config_json: str) -> Path:
    path = Path(config_json).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UsageError(f"--config-json {config_json}: no such file")
    return path


def _local_config(model: str, looked: list[str]) -> Path | None:
    local = Path(model).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return local / "config.json"
        looked.append(str(local / "config.json"))
    elif local.is_file() and local.name.endswith(".json"):
        return local
    else:
        looked.append(f"{local} (not a directory)")
    return None


def _is_path(model: str) -> bool:
    """Whether ``model`` names a directory rather than a hub id (ORG/NAME or NAME)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


def locate_model(
    model: str,
    config_json: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    revision: str | None = None,
    network: bool = True,
) -> ModelFiles:
    """Find the model's config.json: the one lookup order every command uses.

    ``--config-json PATH``; a local model directory; the HF cache (:func:`hub_cache_dir`); and,
    with ``network`` (``plan`` and the Python API, never ``render``/``submit``), the Hugging
    Face Hub through :mod:`hpcserve.plan.hub`, which stores what it fetches in that cache. A
    ``model.safetensors.index.json`` beside the config (fetched too when the hub has one) gives
    the exact weight bytes. Not found: UsageError saying where it looked and what to do.
    """
    env = os.environ if env is None else env
    if config_json:
        return _beside(_explicit(config_json), "config-json")
    looked: list[str] = []
    local = _local_config(model, looked)
    if local is not None:
        return _beside(local, "local")
    cache = hub_cache_dir(env)
    repo_dir = cache / ("models--" + model.strip("/").replace("/", "--"))
    cached = _snapshot_config(repo_dir, revision) if repo_dir.is_dir() else None
    if cached is not None:
        return _beside(cached, "cache")
    looked.append(str(repo_dir / "snapshots" / "*" / "config.json"))
    if network and not _is_path(model):
        from hpcserve.plan import hub

        req = hub.HubRequest(model, revision, env, cache)
        return ModelFiles(hub.fetch_config(req), hub.fetch_index(req), "hub")
    where = "" if _is_path(model) else "; `hpcserve plan` on a machine with internet fetches it"
    raise UsageError(
        f"no config.json for model {model!r}; looked in: {'; '.join(looked)}. "
        f"Pass --config-json PATH{where}."
    )


def read_safetensors_total(index: Path | None) -> int | None:
    """``metadata.total_size`` of a model.safetensors.index.json, if readable."""
    if index is None or not index.is_file():
        return None
    try:
        total = json.loads(index.read_text())["metadata"]["total_size"]
        return int(total)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_model_info(
    model: str,
    config_json: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    revision: str | None = None,
    network: bool = True,
) -> ModelInfo:
    """Find (:func:`locate_model`), read and parse the config of ``model``."""
    files = locate_model(model, config_json, env=env, revision=revision, network=network)
    path = files.config
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    info = parse_config(data, name=model)
    info.config_path = str(path)
    info.safetensors_total_size = read_safetensors_total(files.index)
    return info


# --------------------------------------------------------------------------- parsing


def _int(cfg: Mapping[str, Any], *keys: str, default: int | None = None) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            return int(value)
    return default


def _require(cfg: Mapping[str, Any], name: str, *keys: str) -> int:
    value = _int(cfg, *keys)
    if value is None:
        raise UsageError(f"{name}: config.json lacks {' / '.join(keys)}")
    return value


def parse_quant(qc: Mapping[str, Any] | None) -> QuantInfo | None:
    """Read ``quantization_config`` (gptq, awq, fp8, compressed-tensors, bitsandbytes)."""
    if not qc:
        return None
    method = str(qc.get("quant_method", "unknown")).lower()
    not_converted = [
        str(x)
        for key in ("modules_to_not_convert", "ignore", "ignored_layers", "skip_modules")
        for x in (qc.get(key) or [])
    ]
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        weights: Mapping[str, Any] = {}
        for group in groups.values():
            if isinstance(group, Mapping) and isinstance(group.get("weights"), Mapping):
                weights = group["weights"]
                break
        bits = int(weights.get("num_bits", 8))
        gs = weights.get("group_size")
        return QuantInfo(
            method=method,
            bits=bits,
            group_size=int(gs) if isinstance(gs, int) and gs > 0 else None,
            sym=bool(weights.get("symmetric", True)),
            weight_block_size=weights.get("block_structure"),
            not_converted=not_converted,
        )
    if method == "fp8":
        block = qc.get("weight_block_size")
        return QuantInfo(
            method=method,
            bits=8,
            weight_block_size=list(block) if isinstance(block, list) else None,
            not_converted=not_converted,
        )
    if method == "bitsandbytes":
        bits = 4 if qc.get("load_in_4bit") else 8
        return QuantInfo(method=method, bits=bits, group_size=64, not_converted=not_converted)
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    gs = qc.get("group_size", qc.get("q_group_size"))
    group_size = int(gs) if isinstance(gs, int) and gs > 0 else None
    sym = bool(qc.get("sym", not qc.get("zero_point", False)))
    return QuantInfo(
        method=method, bits=bits, group_size=group_size, sym=sym, not_converted=not_converted
    )


def _layer_types(cfg: Mapping[str, Any], num_layers: int) -> list[str]:
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == num_layers:
        out = []
        for t in types:
            t = str(t)
            if t in ("linear_attention", "linear", "gated_deltanet"):
                out.append(LINEAR_ATTENTION)
            elif t in ("sliding_attention", "sliding_window"):
                out.append(SLIDING_ATTENTION)
            else:
                out.append(FULL_ATTENTION)
        return out
    interval = _int(cfg, "full_attention_interval")
    if interval and "linear_num_value_heads" in cfg:
        # Qwen3-Next: layer i keeps KV when (i + 1) % interval == 0.
        return [
            FULL_ATTENTION if (i + 1) % interval == 0 else LINEAR_ATTENTION
            for i in range(num_layers)
        ]
    return [FULL_ATTENTION] * num_layers


def _moe_layers(cfg: Mapping[str, Any], num_layers: int, num_experts: int) -> list[bool]:
    if num_experts <= 0:
        return [False] * num_layers
    mlp_only = set(cfg.get("mlp_only_layers") or [])
    step = _int(cfg, "decoder_sparse_step", default=1) or 1
    first_dense = _int(cfg, "first_k_dense_replace", default=0) or 0
    out = []
    for i in range(num_layers):
        moe = i not in mlp_only and (i + 1) % step == 0 and i >= first_dense
        out.append(moe)
    return out


def parse_config(data: Mapping[str, Any], name: str = "model") -> ModelInfo:
    """Parse a HF config dict (multimodal wrappers: the text config under ``text_config``)."""
    top = data
    text = data.get("text_config") if isinstance(data.get("text_config"), Mapping) else None
    cfg: Mapping[str, Any] = text if text is not None else data
    multimodal = text is not None or "vision_config" in data
    archs = top.get("architectures") or cfg.get("architectures") or ["unknown"]
    architecture = str(archs[0]) if isinstance(archs, list) and archs else "unknown"
    model_type = str(cfg.get("model_type") or top.get("model_type") or "unknown")

    hidden = _require(cfg, name, "hidden_size", "d_model", "n_embd")
    layers = _require(cfg, name, "num_hidden_layers", "n_layer", "num_layers")
    heads = _require(cfg, name, "num_attention_heads", "n_head")
    kv_heads = _int(cfg, "num_key_value_heads", "num_kv_heads", default=heads) or heads
    head_dim = _int(cfg, "head_dim") or hidden // heads
    vocab = _require(cfg, name, "vocab_size")
    num_experts = _int(cfg, "num_experts", "num_local_experts", "n_routed_experts", default=0) or 0
    quant_cfg = top.get("quantization_config") or cfg.get("quantization_config")
    dtype = str(
        cfg.get("torch_dtype") or cfg.get("dtype") or top.get("torch_dtype") or "bfloat16"
    ).replace("torch.", "")
    linear = None
    if "linear_num_value_heads" in cfg:
        linear = LinearAttentionDims(
            num_key_heads=_require(cfg, name, "linear_num_key_heads"),
            num_value_heads=_require(cfg, name, "linear_num_value_heads"),
            key_head_dim=_require(cfg, name, "linear_key_head_dim"),
            value_head_dim=_require(cfg, name, "linear_value_head_dim"),
            conv_kernel_dim=_int(cfg, "linear_conv_kernel_dim", default=4) or 4,
        )
    tie = cfg.get("tie_word_embeddings", top.get("tie_word_embeddings", False))
    info = ModelInfo(
        name=name,
        architecture=architecture,
        model_type=model_type,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        intermediate_size=_int(cfg, "intermediate_size", "ffn_dim", "n_inner"),
        num_experts=num_experts,
        experts_per_token=_int(cfg, "num_experts_per_tok", "moe_topk", default=0) or 0,
        moe_intermediate_size=_int(cfg, "moe_intermediate_size"),
        shared_expert_intermediate_size=_int(cfg, "shared_expert_intermediate_size", default=0)
        or 0,
        num_shared_experts=_int(cfg, "n_shared_experts", default=0) or 0,
        moe_layers=_moe_layers(cfg, layers, num_experts),
        tie_word_embeddings=bool(tie),
        torch_dtype=dtype,
        quant=parse_quant(quant_cfg if isinstance(quant_cfg, Mapping) else None),
        layer_types=_layer_types(cfg, layers),
        linear=linear,
        mamba_ssm_dtype=cfg.get("mamba_ssm_dtype"),
        # Qwen3-Next / Qwen3.5 gate the attention output (q_proj doubled); vLLM defaults on.
        attn_output_gate=bool(
            cfg.get("attn_output_gate", model_type.startswith(("qwen3_next", "qwen3_5")))
        ),
        attention_bias=bool(cfg.get("attention_bias", model_type.startswith("qwen2"))),
        max_position_embeddings=_int(cfg, "max_position_embeddings", "n_positions"),
        rope_scaling=_rope_scaling(cfg),
        sliding_window=_int(cfg, "sliding_window"),
        multimodal=multimodal,
        uses_mla="kv_lora_rank" in cfg,
    )
    if info.is_moe and info.moe_intermediate_size is None:
        info.moe_intermediate_size = info.intermediate_size
    if SLIDING_ATTENTION in info.layer_types:
        info.notes.append(
            "sliding-window layers are counted as full attention (an upper bound on their KV)"
        )
    if info.uses_mla:
        info.notes.append("MLA (kv_lora_rank) is not modelled: KV is counted as plain GQA")
    if info.is_hybrid and info.linear is None:
        raise UsageError(f"{name}: layer_types name linear_attention but linear_* dims are missing")
    return info


def local_model_info(
    model: str, env: Mapping[str, str] | None = None, *, revision: str | None = None
) -> ModelInfo | None:
    """The model's config (of ``revision`` when given) when it is here (a local directory or
    this machine's HF cache); never the network.

    None when it is not, or when it cannot be parsed: ``render``/``submit`` then check the
    layout's shape only (``hpcserve plan`` reports such problems with their cause).
    """
    try:
        return load_model_info(model, env=env, revision=revision, network=False)
    except UsageError:
        return None


def _rope_scaling(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config's RoPE scaling: ``rope_scaling``, or newer transformers' ``rope_parameters``
    (a dict, or one per layer type: vLLM assumes they share the factor, so the first is used)."""
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not isinstance(rope, dict):
        return None
    if "rope_type" not in rope and "type" not in rope:
        nested = [v for v in rope.values() if isinstance(v, dict)]
        rope = nested[0] if nested else None
    return dict(rope) if rope else None


def derived_max_len(info: ModelInfo) -> int | None:
    """The longest context vLLM accepts without ``VLLM_ALLOW_LONG_MAX_MODEL_LEN``:
    ``max_position_embeddings``, times the RoPE scaling factor unless the rope type is ``su``,
    ``longrope`` or ``llama3`` (their lengths are already scaled), from YaRN's
    ``original_max_position_embeddings``; Gemma 3's is already scaled (vLLM's
    ``_get_and_verify_max_len`` in ``vllm/config/model.py``)."""
    length = info.max_position_embeddings
    rope = info.rope_scaling
    if length is None or rope is None or "gemma3" in info.model_type:
        return length
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default")
    if rope_type in ("su", "longrope", "llama3"):
        return length
    if rope_type == "yarn" and rope.get("original_max_position_embeddings"):
        length = int(rope["original_max_position_embeddings"])
    return int(length * float(rope.get("factor", 1.0)))
