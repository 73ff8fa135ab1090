"""The small input rules in hpcserve.rules: job name, SLURM time, env-var name, dtype."""

from __future__ import annotations

import pytest

from hpcserve import rules
from hpcserve.errors import UsageError
from hpcserve.plan.modelinfo import DTYPE_BYTES


@pytest.mark.parametrize("name", ["demo", "a", "e2e.run-1_b", "A" + "x" * 63])
def test_job_names_that_are_valid(name: str) -> None:
    assert rules.is_job_name(name) and rules.check_job_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "4242", "-x", ".x", "a b", "a/b", "A" + "x" * 64])
def test_job_names_that_are_not(name: str) -> None:
    assert not rules.is_job_name(name)
    with pytest.raises(UsageError, match=r"^--name .* is not valid: start with a letter"):
        rules.check_job_name(name, "--name")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30 * 60),  # minutes
        ("30:15", 30 * 60 + 15),  # minutes:seconds
        ("4:31", 271),
        ("02:00:00", 7200),  # hours:minutes:seconds
        ("48:00:00", 48 * 3600),
        ("2-12", (2 * 24 + 12) * 3600),  # days-hours
        ("2-12:30", ((2 * 24 + 12) * 60 + 30) * 60),  # days-hours:minutes
        ("2-12:30:15", ((2 * 24 + 12) * 60 + 30) * 60 + 15),  # days-hours:minutes:seconds
        (" 10 ", 600),
        ("UNLIMITED", None),
        ("infinite", None),
    ],
)
def test_every_sbatch_time_format(text: str, seconds: int | None) -> None:
    assert rules.parse_slurm_time(text) == seconds
    assert rules.is_slurm_time(text) and rules.check_slurm_time(text) == text


@pytest.mark.parametrize("text", ["", "2 hours", "1h", "1:2:3:4", "1-", "-1", "1-2:3:4:5", "a:b"])
def test_what_is_not_a_slurm_time(text: str) -> None:
    assert not rules.is_slurm_time(text)
    with pytest.raises(ValueError, match="not a SLURM time"):
        rules.parse_slurm_time(text)
    with pytest.raises(UsageError, match=r"^scheduler.time .*: expected a SLURM time"):
        rules.check_slurm_time(text, "scheduler.time")


@pytest.mark.parametrize("seconds", [0, 59, 271, 7200, 86399, 86400, 93784, 7 * 86400 + 1])
def test_format_parses_back(seconds: int) -> None:
    text = rules.format_slurm_time(seconds)
    assert rules.parse_slurm_time(text) == seconds


def test_format_shows_days_only_when_there_are_any() -> None:
    assert rules.format_slurm_time(93784) == "1-02:03:04"
    assert rules.format_slurm_time(271) == "00:04:31"
    assert rules.format_slurm_time(-5) == "00:00:00"


@pytest.mark.parametrize("name", ["HF_HOME", "_x", "NCCL_IB_HCA", "a1"])
def test_env_names(name: str) -> None:
    assert rules.is_env_name(name)


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "A=B", "A\nB", "$A"])
def test_not_env_names(name: str) -> None:
    assert not rules.is_env_name(name)


def test_dtype_vocabulary_is_vllms_and_aliases_resolve() -> None:
    assert rules.DTYPES == ("auto", "half", "float16", "bfloat16", "float", "float32")
    assert rules.resolve_dtype("half") == "float16"
    assert rules.resolve_dtype("float") == "float32"
    assert rules.resolve_dtype("bfloat16") == "bfloat16"
    assert rules.resolve_dtype("auto") == "auto"


def test_every_dtype_has_a_size_once_resolved() -> None:
    sizes = {d: DTYPE_BYTES[rules.resolve_dtype(d)] for d in rules.DTYPES if d != "auto"}
    assert sizes == {"half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "float64", "Half", ""])
def test_unknown_dtypes_are_refused(dtype: str) -> None:
    with pytest.raises(UsageError, match=r"^--dtype .*: expected one of auto, half"):
        rules.resolve_dtype(dtype)


def test_kv_cache_dtypes_start_with_auto_and_are_sized() -> None:
    from hpcserve.plan.modelinfo import ModelInfo
    from hpcserve.plan.sizing import kv_dtype_bytes

    assert rules.KV_CACHE_DTYPES[0] == "auto"
    info = ModelInfo(
        name="m",
        architecture="LlamaForCausalLM",
        model_type="llama",
        hidden_size=64,
        num_layers=1,
        num_attention_heads=1,
        num_kv_heads=1,
        head_dim=64,
        vocab_size=8,
        max_position_embeddings=16,
    )
    sizes = {d: kv_dtype_bytes(info, d) for d in rules.KV_CACHE_DTYPES[1:]}
    assert sizes == {
        "bfloat16": 2,
        "fp8": 1,
        "fp8_e4m3": 1,
        "fp8_e5m2": 1,
        "fp8_inc": 1,
    }
