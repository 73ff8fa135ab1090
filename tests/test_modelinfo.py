"""Finding and parsing config.json: --config-json, local dir, HF cache (the hub: test_hub.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcserve.errors import UsageError
from hpcserve.plan.modelinfo import (
    FULL_ATTENTION,
    LINEAR_ATTENTION,
    hub_cache_dir,
    load_model_info,
    local_model_info,
    locate_model,
    parse_config,
)

DATA = Path(__file__).parent / "data" / "models"


def _cache_model(hub: Path, repo: str, snapshot: str = "abc123") -> Path:
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / snapshot
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((DATA / "llama-3.1-70b.json").read_text())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(snapshot)
    return snap / "config.json"


def test_hub_cache_env_precedence(tmp_path: Path) -> None:
    assert hub_cache_dir({"HF_HUB_CACHE": str(tmp_path / "a"), "HF_HOME": "/x"}) == tmp_path / "a"
    assert hub_cache_dir({"HF_HOME": str(tmp_path)}) == tmp_path / "hub"
    assert hub_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "huggingface" / "hub"


def test_finds_the_hf_cache_snapshot(tmp_path: Path) -> None:
    expected = _cache_model(tmp_path / "hub", "meta-llama/Llama-3.1-70B")
    env = {"HF_HOME": str(tmp_path)}
    assert locate_model("meta-llama/Llama-3.1-70B", env=env, network=False).config == expected


def test_local_directory_and_explicit_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert locate_model(str(tmp_path)).config == tmp_path / "config.json"
    assert locate_model("anything", config_json=str(DATA / "llama-3.1-70b.json")).config.is_file()


def test_missing_config_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        locate_model("org/missing-model", env={"HF_HUB_CACHE": str(tmp_path)}, network=False)
    msg = str(e.value)
    assert "models--org--missing-model" in msg
    assert "--config-json" in msg and "`hpcserve plan` on a machine with internet" in msg


def test_missing_config_json_file() -> None:
    with pytest.raises(UsageError, match="no such file"):
        locate_model("m", config_json="/nonexistent/config.json")


def test_a_missing_directory_is_never_looked_up_on_the_hub(tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"}
    with pytest.raises(UsageError, match="not a directory"):
        locate_model(str(tmp_path / "no-such-model"), env=env)
    with pytest.raises(UsageError, match="not a directory"):
        locate_model("./models/org/name", env=env)


def test_cached_index_gives_the_exact_weight_bytes(tmp_path: Path) -> None:
    config = _cache_model(tmp_path / "hub", "meta-llama/Llama-3.1-70B")
    index = config.with_name("model.safetensors.index.json")
    index.write_text(json.dumps({"metadata": {"total_size": 141107412992}, "weight_map": {}}))
    info = local_model_info("meta-llama/Llama-3.1-70B", env={"HF_HOME": str(tmp_path)})
    assert info is not None and info.safetensors_total_size == 141107412992
    assert locate_model("meta-llama/Llama-3.1-70B", env={"HF_HOME": str(tmp_path)}).index == index


def test_cache_lookup_by_revision(tmp_path: Path) -> None:
    _cache_model(tmp_path / "hub", "org/m", snapshot="abc123")
    env = {"HF_HOME": str(tmp_path)}
    assert locate_model("org/m", env=env, revision="abc123", network=False).source == "cache"
    with pytest.raises(UsageError):
        locate_model("org/m", env=env, revision="v2", network=False)
    # render/submit check a layout against the config of the revision they will serve
    assert local_model_info("org/m", env=env, revision="abc123") is not None
    assert local_model_info("org/m", env=env, revision="v2") is None


def test_multimodal_wrapper_reads_text_config() -> None:
    info = load_model_info("q", str(DATA / "qwen3.5-397b-a17b-gptq-int4.json"))
    assert info.multimodal
    assert info.architecture == "Qwen3_5MoeForConditionalGeneration"
    assert (info.hidden_size, info.num_layers, info.head_dim) == (4096, 60, 256)
    assert (info.num_experts, info.experts_per_token) == (512, 10)
    assert info.quant is not None and (info.quant.method, info.quant.bits) == ("gptq", 4)
    assert info.quant.group_size == 128
    assert info.layer_types[:4] == [LINEAR_ATTENTION] * 3 + [FULL_ATTENTION]
    assert info.linear is not None and info.linear.num_value_heads == 64
    assert info.attn_output_gate


def test_layer_types_from_full_attention_interval() -> None:
    data = json.loads((DATA / "qwen3-next-80b-a3b-instruct.json").read_text())
    info = parse_config(data)
    assert info.num_full_attention_layers == 12
    assert info.layer_types[3] == FULL_ATTENTION and info.layer_types[0] == LINEAR_ATTENTION


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    info = parse_config(json.loads((DATA / "llama-3.1-70b.json").read_text()))
    assert info.head_dim == 8192 // 64
    assert not info.is_moe and not info.is_hybrid


def test_config_without_required_keys_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="num_hidden_layers"):
        parse_config({"hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10}, "m")


def test_awq_and_fp8_quant_configs() -> None:
    base = json.loads((DATA / "llama-3.1-70b.json").read_text())
    awq = parse_config(
        {
            **base,
            "quantization_config": {
                "quant_method": "awq",
                "bits": 4,
                "group_size": 128,
                "zero_point": True,
            },
        }
    )
    assert awq.quant is not None and (awq.quant.bits, awq.quant.group_size) == (4, 128)
    fp8 = parse_config(
        {**base, "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    )
    assert fp8.quant is not None and fp8.quant.bits == 8
    assert fp8.quant.weight_block_size == [128, 128]
