"""Sizing arithmetic: parameters, weight bytes, KV cache the way vLLM accounts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcserve.plan.modelinfo import ModelInfo, load_model_info
from hpcserve.plan.planner import NodeShape, make_plan
from hpcserve.plan.sizing import (
    GB,
    GIB,
    attention_bytes_per_token,
    count_parameters,
    kv_layout,
    linear_state_bytes,
    naive_kv_bytes_per_token,
    pp_partition,
    predict_kv_cache_tokens,
    weight_bytes,
)

DATA = Path(__file__).parent / "data" / "models"
MELUXINA = NodeShape(gpus=4, gpu_memory_mib=40 * 1024, gpu_model="A100-40GB", site="meluxina")


def model(name: str) -> ModelInfo:
    return load_model_info(name, str(DATA / f"{name}.json"))


# --------------------------------------------------------------------------- worked example


def test_worked_example_qwen35_397b_gptq_on_meluxina_needs_two_nodes() -> None:
    info = model("qwen3.5-397b-a17b-gptq-int4")
    plan = make_plan(info, MELUXINA, nodes=None, utilization=0.9)
    assert plan.usable_per_node == pytest.approx(144 * GIB)  # 4 × 40 GiB × 0.9
    assert 395e9 < plan.params.total < 398e9  # "397B", all 512 experts counted
    assert 195 * GB < plan.weights.total < 215 * GB  # int4 ≈ 199 GB + scales + 16-bit parts
    assert plan.weights.total > plan.usable_per_node  # one node cannot hold the weights
    assert plan.fit.layout.nodes == 2
    assert (plan.fit.layout.tp, plan.fit.layout.pp) == (4, 2)
    assert plan.fit.fits


def test_worked_example_one_node_is_refused_as_not_fitting() -> None:
    plan = make_plan(model("qwen3.5-397b-a17b-gptq-int4"), MELUXINA, nodes=1)
    assert not plan.fit.fits
    assert "does NOT fit" in plan.lines()[-1]


# --------------------------------------------------------------------------- dense model


def test_llama_70b_parameters_by_hand() -> None:
    info = model("llama-3.1-70b")
    h, inter, layers, vocab = 8192, 28672, 80, 128256
    attn = h * 64 * 128 + 2 * h * 8 * 128 + 64 * 128 * h  # q, k, v, o
    mlp = 3 * h * inter  # gate, up, down
    per_layer = attn + mlp + 2 * h  # two RMSNorms
    expected = layers * per_layer + 2 * vocab * h + h  # untied embeddings + lm_head, final norm
    assert count_parameters(info).total == expected == 70_553_706_496
    assert weight_bytes(info).total == expected * 2  # bf16


def test_llama_70b_kv_by_hand() -> None:
    info = model("llama-3.1-70b")
    # 8 KV heads over TP=4: 2 per GPU; K and V; head_dim 128; bf16.
    assert attention_bytes_per_token(info, tp=4) == 2 * 2 * 128 * 2 == 1024
    avail = 10 * GIB
    pred = predict_kv_cache_tokens(info, avail, tp=4, pp=1, max_model_len=8192)
    blocks = avail // (80 * 16 * 1024)  # all 80 layers, block of 16 tokens
    assert pred.num_blocks == blocks == 8192
    assert pred.blocks_per_request == 8192 // 16
    assert pred.max_concurrency == pytest.approx(blocks / 512)
    assert pred.tokens == 8192 * 16 == 131_072
    # With PP=2 each stage holds 40 layers' KV only: twice the blocks.
    assert predict_kv_cache_tokens(info, avail, tp=4, pp=2, max_model_len=8192).num_blocks == (
        2 * blocks
    )


def test_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    info = model("qwen2.5-7b-instruct")  # 4 KV heads
    assert attention_bytes_per_token(info, tp=4) == 2 * 1 * 128 * 2
    assert attention_bytes_per_token(info, tp=8) == 2 * 1 * 128 * 2  # not half a head


def test_fp8_kv_cache_halves_the_bytes() -> None:
    info = model("llama-3.1-70b")
    assert attention_bytes_per_token(info, 4, "fp8") * 2 == attention_bytes_per_token(info, 4)


# --------------------------------------------------------------------------- hybrid model


def test_qwen3_next_state_and_block_size_by_hand() -> None:
    info = model("qwen3-next-80b-a3b-instruct")
    per_token = 2 * 2 * 256 * 2  # 2 KV heads × 256, K and V, bf16, TP=1
    conv = 3 * (2 * 16 * 128 + 32 * 128) * 2  # (kernel-1) × conv_dim × bf16
    ssm = 32 * 128 * 128 * 2  # value heads × Vd × Kd, model dtype for Qwen3-Next
    assert attention_bytes_per_token(info, 1) == per_token
    assert linear_state_bytes(info, 1) == conv + ssm == 1_097_728
    lay = kv_layout(info, tp=1)
    assert lay.block_size == 16 * -(-(conv + ssm) // (16 * per_token)) == 544
    assert lay.page_bytes == 544 * per_token
    assert sorted((g.kind, len(g.layers)) for g in lay.groups) == [
        ("attention", 12),
        ("linear_attention", 12),
        ("linear_attention", 12),
        ("linear_attention", 12),
    ]


def test_hybrid_kv_is_about_four_times_the_naive_count() -> None:
    info = model("qwen3-next-80b-a3b-instruct")
    avail, length = 20 * GIB, 32768
    pred = predict_kv_cache_tokens(info, avail, tp=1, max_model_len=length)
    naive_tokens = avail / naive_kv_bytes_per_token(info)  # all 48 layers keep KV
    assert 3.5 < pred.tokens / naive_tokens < 4.1
    blocks = avail // (12 * kv_layout(info, 1).page_bytes)
    assert pred.num_blocks == blocks
    per_request = -(-length // 544) + 3 * 2  # attention blocks + 2 per mamba group (align)
    assert pred.tokens == int(blocks / per_request * length)


def test_qwen35_ssm_state_is_float32_from_config() -> None:
    info = model("qwen3.5-397b-a17b-gptq-int4")
    conv = 3 * (2 * 16 * 128 + 64 * 128) // 4 * 2
    ssm = (64 // 4) * 128 * 128 * 4  # mamba_ssm_dtype float32
    assert linear_state_bytes(info, tp=4) == conv + ssm
    assert kv_layout(info, tp=4).block_size == 1056


@pytest.mark.parametrize(
    ("name", "avail", "tp", "pp", "length", "blocks", "tokens", "groups"),
    [
        # Reference values: vLLM 0.32's get_kv_cache_configs + get_kv_cache_capacity run on
        # the same per-layer specs (FullAttentionSpec/MambaSpec, block 16, align mode).
        ("qwen3-next-80b-a3b-instruct", 13.1e9, 4, 2, 262144, 7838, 2_118_231, 4),
        ("qwen3-next-80b-a3b-instruct", 13.1e9, 4, 1, 262144, 3919, 1_059_115, 4),
        ("qwen3.5-397b-a17b-gptq-int4", 6.9e9, 4, 2, 262144, 797, 819_328, 4),
        ("llama-3.1-70b", 15.4e9, 4, 2, 131072, 23498, 375_968, 1),
        ("llama-3.1-70b", 15.4e9, 4, 2, 1000, 23498, 372_984, 1),
    ],
)
def test_matches_vllm_kv_cache_manager(
    name: str, avail: float, tp: int, pp: int, length: int, blocks: int, tokens: int, groups: int
) -> None:
    pred = predict_kv_cache_tokens(model(name), avail, tp=tp, pp=pp, max_model_len=length)
    assert (pred.num_blocks, pred.tokens, len(pred.layout.groups)) == (blocks, tokens, groups)


def test_legacy_report_counts_blocks_per_group() -> None:
    info = model("qwen3-next-80b-a3b-instruct")
    pred = predict_kv_cache_tokens(info, 13.1e9, tp=4, pp=1, max_model_len=262144, report="legacy")
    assert pred.tokens == 3919 // 4 * 272


def test_cpu_backend_uses_block_128() -> None:
    info = model("qwen2.5-7b-instruct")
    pred = predict_kv_cache_tokens(info, 4 * GIB, tp=1, max_model_len=4096, device="cpu")
    assert pred.layout.block_size == 128
    assert pred.num_blocks == 4 * GIB // (28 * 128 * 2 * 4 * 128 * 2)


# --------------------------------------------------------------------------- weights


def test_gptq_scales_follow_group_size_and_16bit_parts_stay() -> None:
    info = model("qwen3.5-397b-a17b-gptq-int4")
    w = weight_bytes(info)
    assert w.bytes_per_quantised_param == 0.5
    # one fp16 scale + one packed 4-bit zero per 128 weights
    assert w.scale_bytes == pytest.approx(w.quantised_params * 2.5 / 128)
    for cat in ("embed_tokens", "lm_head", "router"):
        assert cat in w.unquantised_categories
    cats = count_parameters(info).by_category
    assert cats["experts"] == 60 * 512 * 3 * 4096 * 1024


def test_modules_to_not_convert_stay_16bit() -> None:
    data = json.loads((DATA / "qwen3.5-397b-a17b-gptq-int4.json").read_text())
    data["quantization_config"]["modules_to_not_convert"] = ["linear_attn", "shared_expert"]
    from hpcserve.plan.modelinfo import parse_config

    info = parse_config(data, "q")
    w = weight_bytes(info)
    assert {"linear_attn", "shared_expert"} <= set(w.unquantised_categories)


def test_safetensors_index_gives_the_exact_size(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((DATA / "llama-3.1-70b.json").read_text())
    index = {"metadata": {"total_size": 141_107_412_992}, "weight_map": {}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    info = load_model_info(str(tmp_path))
    assert weight_bytes(info).total == 141_107_412_992


def test_pp_partition_like_vllm() -> None:
    assert pp_partition(80, 2) == [40, 40]
    assert pp_partition(61, 4) == [15, 15, 16, 15]  # remainder before the last stage
    assert pp_partition(62, 4) == [15, 16, 16, 15]


def test_parse_vllm_kv_log_current_and_older_formats() -> None:
    from hpcserve.plan.sizing import parse_vllm_kv_log

    new = (
        "INFO [gpu_worker.py:760] Available KV cache memory: 6.43 GiB\n"
        "INFO [kv_cache_utils.py:2327] GPU KV cache size: 814,188 tokens, "
        "Maximum concurrency for 262,144 tokens per request: 3.11x\n"
    )
    got = parse_vllm_kv_log(new)
    assert got["available_bytes"] == pytest.approx(6.43 * GIB)
    assert (got["tokens"], got["max_model_len"], got["max_concurrency"]) == (814188, 262144, 3.11)
    cpu = (
        "Auto set (3.50/15.00) GiB for KV cache on node 0, with 12.00 GiB requested memory\n"
        "CPU KV cache size: 29,952 tokens, Maximum concurrency for 4,096 tokens per request: "
        "7.31x\n"
    )
    got = parse_vllm_kv_log(cpu)
    assert got["available_bytes"] == pytest.approx(3.5 * GIB) and got["tokens"] == 29952
    old = "GPU KV cache size: 1,000 tokens\nMaximum concurrency for 100 tokens per request: 10.00x"
    assert parse_vllm_kv_log(old)["tokens"] == 1000


def test_cpu_site_plans_with_cpu_blocks() -> None:
    node = NodeShape(gpus=1, gpu_memory_mib=16 * 1024, gpu_model="cpu", site="local")
    plan = make_plan(model("qwen2.5-7b-instruct"), node, nodes=2, max_model_len=4096)
    assert plan.fit.kv is not None and plan.fit.kv.layout.block_size == 128
    assert any('"CPU KV cache size:' in line for line in plan.lines())


def test_float32_checkpoints_are_served_16bit_unless_told() -> None:
    from dataclasses import replace

    info = replace(model("qwen2.5-7b-instruct"), torch_dtype="float32")
    assert attention_bytes_per_token(info, 1) == 2 * 4 * 128 * 2
    info.served_dtype = "float32"
    assert attention_bytes_per_token(info, 1) == 2 * 4 * 128 * 4


LOGS = Path(__file__).parent / "data" / "vllm-logs"


@pytest.mark.parametrize(
    ("config", "log"),
    [
        ("tiny-llama", "tiny-llama-cpu.log"),
        ("tiny-qwen3-next", "tiny-qwen3-next-cpu.log"),
    ],
)
def test_prediction_equals_real_vllm_cpu_log(config: str, log: str) -> None:
    """Real vLLM 0.32 (CPU build, VLLM_CPU_KVCACHE_SPACE=1) printed these lines; see README."""
    from hpcserve.plan.sizing import parse_vllm_kv_log

    seen = parse_vllm_kv_log((LOGS / log).read_text())
    pred = predict_kv_cache_tokens(
        model(config),
        seen["available_bytes"],
        max_model_len=int(seen["max_model_len"]),
        device="cpu",
    )
    assert pred.tokens == seen["tokens"]
    assert round(pred.max_concurrency, 2) == seen["max_concurrency"]
