"""The vLLM flag table: spellings, argv rendering, click options, docs in sync."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from hpcserve.launch import vllm_flags
from hpcserve.launch.vllm_flags import BY_NAME, FLAGS, flag, flag_argv

REPO = Path(__file__).resolve().parent.parent


def test_multinode_flags_are_spelt_as_in_vllm_source() -> None:
    # vllm/engine/arg_utils.py (ParallelConfig group) and vllm/entrypoints/openai/cli_args.py
    assert flag("nnodes") == "--nnodes"
    assert flag("node_rank") == "--node-rank"
    assert flag("master_addr") == "--master-addr"
    assert flag("master_port") == "--master-port"
    assert flag("headless") == "--headless"
    assert flag("tensor_parallel_size") == "--tensor-parallel-size"
    assert flag("pipeline_parallel_size") == "--pipeline-parallel-size"
    assert flag("host") == "--host" and flag("port") == "--port"


def test_expected_pass_through_options_are_exposed() -> None:
    exposed = {f.flag for f in vllm_flags.OPTIONS}
    for name in (
        "--max-model-len",
        "--gpu-memory-utilization",
        "--quantization",
        "--dtype",
        "--reasoning-parser",
        "--enable-chunked-prefill",
        "--enable-prefix-caching",
        "--enforce-eager",
        "--served-model-name",
        "--kv-cache-dtype",
        "--trust-remote-code",
    ):
        assert name in exposed
    # topology is the launcher's business
    for name in ("--nnodes", "--node-rank", "--master-addr", "--headless", "--port"):
        assert name not in exposed


def test_names_are_unique_and_typed() -> None:
    assert len(BY_NAME) == len(FLAGS)
    assert len({f.flag for f in FLAGS}) == len(FLAGS)
    assert all(f.type in (bool, int, float, str) for f in FLAGS)
    assert all(f.flag == "--" + f.name.replace("_", "-") for f in FLAGS)


def test_flag_argv_orders_by_table_and_spells_booleans() -> None:
    argv = flag_argv(
        {
            "max_model_len": 4096,
            "tensor_parallel_size": 4,
            "enable_prefix_caching": False,
            "enforce_eager": True,
            "quantization": None,
            "headless": True,
        }
    )
    assert argv == [
        "--tensor-parallel-size",
        "4",
        "--max-model-len",
        "4096",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--headless",
    ]


def test_headless_has_no_negative_form() -> None:
    assert flag_argv({"headless": False}) == []


def test_flag_argv_rejects_unknown_names() -> None:
    with pytest.raises(KeyError, match="unknown vLLM flag"):
        flag_argv({"max_modle_len": 1})


@pytest.mark.parametrize(
    "arg", ["--api-key=abc", "--api-key", "--node-rank=3", "--headless", "--master-addr=1.2.3.4"]
)
def test_reserved_extra_args_are_refused(arg: str) -> None:
    problems = vllm_flags.check_extra_args([arg])
    assert len(problems) == 1 and arg.split("=")[0] in problems[0]


def test_extra_args_pass_otherwise() -> None:
    assert vllm_flags.check_extra_args(["--max-num-seqs=64", "--swap-space", "8"]) == []


def test_click_options_generated_from_table() -> None:
    @click.command()
    @vllm_flags.click_options()
    def cmd(**kw: object) -> None:
        click.echo(repr(sorted((k, v) for k, v in kw.items() if v is not None)))

    from click.testing import CliRunner

    result = CliRunner().invoke(
        cmd, ["--tp", "2", "--max-model-len", "100", "--no-enable-prefix-caching"]
    )
    assert result.exit_code == 0, result.output
    assert "('enable_prefix_caching', False)" in result.output
    assert "('tensor_parallel_size', 2)" in result.output
    assert "('max_model_len', 100)" in result.output
    names = {p.name for p in cmd.params}
    assert names == {f.name for f in vllm_flags.OPTIONS}


def test_docs_are_generated_from_the_table() -> None:
    doc = (REPO / "docs" / "vllm-flags.md").read_text()
    assert doc == vllm_flags.markdown(), (
        "docs/vllm-flags.md is stale: python -m hpcserve.launch.vllm_flags > docs/vllm-flags.md"
    )


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("tensor_parallel_size", 0, "at least 1"),
        ("pipeline_parallel_size", -1, "at least 1"),
        ("max_model_len", 0, "at least 1"),
        ("max_num_seqs", 0, "at least 1"),
        ("gpu_memory_utilization", 0.0, "in (0, 1]"),
        ("gpu_memory_utilization", 1.0001, "in (0, 1]"),
        ("gpu_memory_utilization", float("nan"), "in (0, 1]"),
        ("dtype", "fp16", "one of auto, half, float16, bfloat16, float, float32"),
        ("kv_cache_dtype", "int4", "one of auto, bfloat16, fp8"),
    ],
)
def test_values_outside_the_table_bounds_are_named(name: str, value: object, allowed: str) -> None:
    (problem,) = vllm_flags.check_values({name: value})
    assert problem.startswith(BY_NAME[name].spelling + " ") and f"expected {allowed}" in problem


def test_values_inside_the_bounds_and_unset_ones_pass() -> None:
    values = {
        "tensor_parallel_size": 1,
        "max_model_len": 1,
        "gpu_memory_utilization": 1.0,
        "dtype": "half",
        "kv_cache_dtype": "fp8",
        "seed": -3,  # unbounded
        "quantization": "anything",  # free text
        "pipeline_parallel_size": None,
    }
    assert vllm_flags.check_values(values) == []


def test_check_values_lists_every_problem_in_table_order() -> None:
    problems = vllm_flags.check_values({"max_model_len": 0, "tensor_parallel_size": 0})
    assert [p.split(" ")[0] for p in problems] == ["--tp/--tensor-parallel-size", "--max-model-len"]
    with pytest.raises(KeyError, match="unknown vLLM flag"):
        vllm_flags.check_values({"max_modle_len": 1})


def test_plan_takes_its_engine_options_from_the_table() -> None:
    from hpcserve.cli.plan import plan

    by_name = {p.name: p for p in plan.params}
    for f in vllm_flags.PLAN_OPTIONS:
        assert f.name in by_name
        assert set(by_name[f.name].opts) == {*f.aliases, f.flag}
