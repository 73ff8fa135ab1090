"""Layout choice and the refusals vLLM would make."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcserve.errors import UsageError
from hpcserve.plan.layout import Layout, alternatives, candidates, choose_layout, layout_problems
from hpcserve.plan.modelinfo import ModelInfo, parse_config
from hpcserve.plan.sizing import expert_share

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


# --- data and expert parallelism -----------------------------------------------------------

QWEN35 = "qwen3.5-397b-a17b-gptq-int4"  # 512 experts, moe_intermediate_size 1024, g128


def test_dp_default_is_tp_inside_each_rank_and_ep_for_moe() -> None:
    """``--dp N`` alone: TP = the GPUs of one DP rank, PP 1; expert parallelism on for a MoE
    model (``expert_parallel_deployment.md``: EP is more efficient together with DP)."""
    lay = choose_layout(model(QWEN35), nodes=2, gpus_per_node=4, dp=2)
    assert (lay.dp, lay.tp, lay.pp, lay.ep, lay.dp_local, lay.gpus) == (2, 4, 1, True, 1, 8)
    assert lay.ep_size == 8 and lay.moe_tp == 1
    dense = choose_layout(model("llama-3.1-70b"), nodes=2, gpus_per_node=4, dp=2)
    assert not dense.ep
    assert not choose_layout(model(QWEN35), 2, 4, dp=2, ep=False).ep
    assert choose_layout(model(QWEN35), 2, 4, dp=2, tp=2).pp == 2


def test_moe_slices_over_dp_times_tp_without_ep() -> None:
    """``FusedMoEParallelConfig.make`` / ``flatten_tp_across_dp_and_pcp``
    (``vllm/model_executor/layers/fused_moe/config.py``): without EP the experts' TP group is
    DP × TP, so moe_intermediate_size must divide by it; with EP the experts stay whole."""
    info = model(
        "llama-3.1-70b", num_local_experts=8, num_experts_per_tok=2, moe_intermediate_size=96
    )
    assert info.is_moe
    assert not layout_problems(info, tp=4, pp=1, dp=1)  # 96 / 4
    assert "moe_intermediate_size (96) is not divisible by DP×TP=64" in layout_problems(
        info, tp=8, pp=1, dp=8, ep=False
    )
    assert not any("moe_intermediate" in p for p in layout_problems(info, 8, 1, dp=8, ep=True))


def test_gptq_groups_of_experts_follow_the_expert_slicing() -> None:
    """Marlin (``verify_marlin_supports_shape``): a shard holds whole groups. Qwen3.5's experts
    (moe_intermediate_size 1024, group 128) sliced DP×TP=16 ways leave 64-wide shards; with EP
    each GPU holds whole experts."""
    info = model(QWEN35)
    problems = layout_problems(info, tp=4, pp=1, dp=4, ep=False)
    assert any(
        "1024/DP×TP=16=64 is not a multiple of the quantisation group size 128" in p
        for p in problems
    )
    assert not layout_problems(info, tp=4, pp=1, dp=4, ep=True)


def test_candidates_list_every_layout_vllm_accepts() -> None:
    lays = candidates(model(QWEN35), nodes=2, gpus_per_node=4)
    shapes = [(c.dp, c.tp, c.pp, c.ep) for c in lays]
    assert shapes[:4] == [(1, 8, 1, False), (1, 4, 2, False), (1, 2, 4, False), (1, 1, 8, False)]
    assert (2, 4, 1, True) in shapes and (8, 1, 1, True) in shapes
    assert all(c.gpus == 8 for c in lays)
    # the lab: 2 nodes of one CPU "GPU": TP across nodes, PP across nodes, DP=2
    lab = [(c.dp, c.tp, c.pp) for c in candidates(None, 2, 1)]
    assert lab == [(1, 2, 1), (1, 1, 2), (2, 1, 1)]


def test_expert_share_follows_determine_expert_map() -> None:
    """``determine_expert_map`` (``fused_moe/layer.py``): EP ranks get E // EP experts, the first
    E % EP one more, so the fullest GPU holds ceil(E / EP); without EP 1 / (DP × TP) of every
    expert."""
    assert expert_share(512, tp=4, dp=2, ep=True) == 64 / 512
    assert expert_share(10, tp=4, dp=1, ep=True) == 3 / 10  # 10 experts over 4: 3,3,2,2
    assert expert_share(512, tp=4, dp=2, ep=False) == 1 / 8
    assert expert_share(0, tp=2, dp=4, ep=True) == 1 / 8  # no experts: nothing to share


def test_dp_weights_per_gpu_replicate_the_non_expert_part() -> None:
    """Each DP rank holds its own copy of the non-expert weights (sliced by TP) and the experts
    are spread over DP × TP GPUs: DP=2 × TP=4 with EP holds non-expert/4 + experts × 64/512."""
    from hpcserve.plan.planner import NodeShape, evaluate
    from hpcserve.plan.sizing import count_parameters, stage_expert_bytes, stage_weight_bytes

    info = model(QWEN35)
    node = NodeShape(gpus=4, gpu_memory_mib=40960)
    count = count_parameters(info)
    total = stage_weight_bytes(info, 1, count)[0]
    experts = stage_expert_bytes(info, 1, count)[0]
    assert 0.9 < experts / total < 1.0  # Qwen3.5-397B is mostly experts
    fit = evaluate(info, node, Layout(4, 1, 2, 4, dp=2, ep=True), 4096, 0.9, "auto", None, count)
    assert fit.weights_per_gpu[0] == pytest.approx((total - experts) / 4 + experts * 64 / 512)
    plain = evaluate(info, node, Layout(8, 1, 2, 4), 4096, 0.9, "auto", None, count)
    assert plain.weights_per_gpu[0] == total / 8  # TP=8: everything sliced 8 ways
    assert fit.weights_per_gpu[0] > plain.weights_per_gpu[0]  # the non-expert copy per rank
    assert fit.kv is not None
    assert fit.total_tokens == 2 * fit.kv.tokens  # each DP rank its own KV cache
    assert fit.total_concurrency == pytest.approx(2 * fit.kv.max_concurrency)
