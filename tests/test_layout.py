"""Layout choice and the refusals vLLM would make."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcserve.errors import UsageError
from hpcserve.plan.layout import alternatives, choose_layout, layout_problems
from hpcserve.plan.modelinfo import ModelInfo, parse_config

DATA = Path(__file__).parent / "data" / "models"


def model(name: str, **override: Any) -> ModelInfo:
    data = json.loads((DATA / f"{name}.json").read_text())
    data.update(override)
    return parse_config(data, name)


def test_default_is_tp_gpus_per_node_and_pp_nodes() -> None:
    lay = choose_layout(model("llama-3.1-70b"), nodes=2, gpus_per_node=4)
    assert (lay.tp, lay.pp, lay.world_size) == (4, 2, 8)


def test_overrides_fill_the_other_size() -> None:
    info = model("llama-3.1-70b")
    assert choose_layout(info, 2, 4, tp=8).pp == 1
    assert choose_layout(info, 2, 4, pp=4).tp == 2


def test_heads_not_divisible_by_tp_is_refused_with_a_working_layout() -> None:
    info = model("qwen2.5-7b-instruct")  # 28 heads, 4 KV heads
    with pytest.raises(UsageError) as e:
        choose_layout(info, nodes=1, gpus_per_node=8)
    msg = str(e.value)
    assert "attention heads (28) are not divisible by TP=8" in msg
    assert "--tp 4 --pp 2" in msg


def test_kv_heads_must_divide_or_be_divided_by_tp() -> None:
    info = model(
        "llama-3.1-70b",
        num_attention_heads=24,
        num_key_value_heads=3,
        hidden_size=3072,
        intermediate_size=8196 * 3,
    )
    assert any("KV heads (3) are not divisible by TP=2" in p for p in layout_problems(info, 2, 1))
    assert any("not a multiple" in p for p in layout_problems(info, 4, 1))
    assert not layout_problems(info, 6, 1)  # replicated twice
    assert not layout_problems(info, 3, 1)


def test_pp_larger_than_layers_is_refused() -> None:
    info = model("qwen2.5-7b-instruct", num_hidden_layers=2)
    with pytest.raises(UsageError, match="PP=4 is larger than the number of layers"):
        choose_layout(info, nodes=4, gpus_per_node=1)


def test_tp_times_pp_must_split_over_the_nodes_and_fit_a_node() -> None:
    info = model("llama-3.1-70b")
    with pytest.raises(UsageError, match="do not split evenly over 2 node"):
        choose_layout(info, nodes=2, gpus_per_node=4, tp=1, pp=3)
    with pytest.raises(UsageError, match="needs 8 GPUs per node but nodes have 4"):
        choose_layout(info, nodes=2, gpus_per_node=4, tp=4, pp=4)
    # Fewer GPUs than the nodes have is a choice vLLM runs: 2 ranks on each node.
    assert choose_layout(info, nodes=2, gpus_per_node=4, tp=4, pp=1).ranks_per_node == 2


def test_site_layout_mode_tp_across_nodes() -> None:
    lay = choose_layout(model("llama-3.1-70b"), nodes=2, gpus_per_node=1, mode="tp-across-nodes")
    assert (lay.tp, lay.pp, lay.ranks_per_node) == (2, 1, 1)


def test_shape_only_without_a_model_config() -> None:
    assert choose_layout(None, nodes=2, gpus_per_node=4).world_size == 8
    with pytest.raises(UsageError, match="try --tp 4 --pp 2"):
        choose_layout(None, nodes=2, gpus_per_node=4, tp=8, pp=2)


def test_gptq_group_must_fit_a_tp_shard() -> None:
    data = json.loads((DATA / "qwen3.5-397b-a17b-gptq-int4.json").read_text())
    data["text_config"]["moe_intermediate_size"] = 768  # 768 / 4 = 192, not a multiple of 128
    info = parse_config(data, "q")
    problems = layout_problems(info, 4, 2)
    assert any("group size 128" in p for p in problems)
    assert not layout_problems(info, 2, 4)  # 384 = 3 × 128


def test_linear_attention_heads_divide_by_tp() -> None:
    info = model("qwen3-next-80b-a3b-instruct")
    assert not layout_problems(info, 2, 1)
    assert not layout_problems(info, 16, 1)  # 16 heads, 16 key heads, 32 value heads
    assert any("linear_num_key_heads" in p for p in layout_problems(info, 32, 1))


def test_alternatives_only_list_accepted_layouts() -> None:
    info = model("qwen2.5-7b-instruct")
    alts = alternatives(info, nodes=1, gpus_per_node=8)
    # All 8 GPUs first, TP largest first; then layouts on fewer GPUs of the node.
    assert [(a.tp, a.pp) for a in alts[:3]] == [(4, 2), (2, 4), (1, 8)]
    assert (4, 1) in [(a.tp, a.pp) for a in alts[3:]]
    assert all(not layout_problems(info, a.tp, a.pp) for a in alts)


def test_a_huge_node_count_is_refused_by_the_layout_rule() -> None:
    """No layout vLLM accepts has more ranks than attention heads × layers (TP divides the
    heads, PP ≤ layers): 10^6 nodes are refused at once, not searched; and no node count
    beyond what SLURM can count (a uint32) is accepted, whatever the model."""
    info = model("qwen2.5-7b-instruct")
    with pytest.raises(UsageError, match="at most 784 ranks"):
        choose_layout(info, nodes=10**6, gpus_per_node=8)
    with pytest.raises(UsageError, match="--nodes"):
        choose_layout(None, nodes=10**20, gpus_per_node=8)


def test_plan_with_a_huge_node_count_is_one_line(cli: Any) -> None:
    code, out, err = cli(
        "plan", "--site", "local", "--model", "tiny", "--config-json",
        str(DATA / "tiny-llama.json"), "--nodes", "99999999999999999999",
    )  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1, err


def test_auto_mode_tells_no_layout_apart_from_does_not_fit() -> None:
    from hpcserve.plan.planner import NodeShape, make_plan

    info = model("qwen2.5-7b-instruct")  # 28 heads: TP=8 is refused on every node count
    with pytest.raises(UsageError) as e:
        make_plan(info, NodeShape(gpus=8, gpu_memory_mib=80 * 1024))
    msg = str(e.value)
    assert "no layout vLLM accepts" in msg and "does not fit" not in msg
    assert "attention heads (28) are not divisible by TP=8" in msg
    assert "--tp 4" in msg  # a layout that works


def test_weights_alone_too_big_do_not_suggest_a_shorter_context() -> None:
    from hpcserve.plan.planner import NodeShape, make_plan, verdict

    p = make_plan(model("llama-3.1-70b"), NodeShape(gpus=1, gpu_memory_mib=24 * 1024), nodes=1)
    assert not p.fit.fits
    line = verdict(p)
    assert "does NOT fit" in line and "weights" in line
    assert "--max-model-len" not in line and "--kv-cache-dtype" not in line
