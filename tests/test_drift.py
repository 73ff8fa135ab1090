"""`plan`, `render` and `submit --dry-run` on the same input agree, or refuse alike.

Each decision (layout, dtype, numeric bounds, job name, SLURM time, env-var name, default job
directory) has one authority; these tests hold the three commands to it. The site is a local
(no-SSH) site file and the model a local directory with the tiny Llama config, so all three
commands read the same config.json.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import site_to_yaml, venv_site

from hpcserve.launch.request import default_job_dir
from hpcserve.sites.schema import Site

Cli = Callable[..., tuple[int, str, str]]
TINY = Path(__file__).parent / "data" / "models" / "tiny-llama.json"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: Callable[[], Any]) -> Path:
    """HOME in tmp_path (submit writes its job directory there), no HF token."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def model(tmp_path: Path) -> str:
    """A local model directory: plan, render and submit all find its config.json."""
    path = tmp_path / "tiny-llama"
    path.mkdir()
    shutil.copy(TINY, path / "config.json")
    return str(path)


def site_file(tmp_path: Path, layout: str = "tp-across-nodes", **kw: Any) -> str:
    """A one-GPU-per-node site that submits locally (like the lab's ``local`` site)."""
    site = venv_site(**kw)
    site = dataclasses.replace(site, engine=dataclasses.replace(site.engine, layout=layout))
    return str(site_to_yaml(site, tmp_path / f"{site.name}-{layout}.yaml"))


def plan_json(cli: Cli, site: str, model: str, *args: str) -> dict[str, Any]:
    code, out, err = cli("plan", "--site", site, "--model", model, "--json", *args)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def render_script(cli: Cli, site: str, model: str, *args: str) -> str:
    code, out, err = cli("render", "--site", site, "--model", model, *args)
    assert code == 0, err
    return out


def submit_dry(cli: Cli, site: str, model: str, *args: str) -> tuple[dict[str, Any], str]:
    """``submit --dry-run --json``: its JSON and the launcher it wrote."""
    code, out, err = cli("submit", "--site", site, "--model", model, "--dry-run", "--json", *args)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data, Path(data["launcher"]).read_text()


def flag_value(script: str, flag: str) -> str | None:
    """The value after ``flag`` on the vllm command line (each word is on its own line)."""
    values = set(re.findall(rf"^\s*{re.escape(flag)}\n\s*(\S+)$", script, re.M))
    assert len(values) <= 1, values  # head and workers agree
    return values.pop() if values else None


def layout_of(script: str) -> tuple[int, int]:
    tp, pp = (
        flag_value(script, "--tensor-parallel-size"),
        flag_value(script, "--pipeline-parallel-size"),
    )
    assert tp is not None and pp is not None
    return int(tp), int(pp)


def refusals(cli: Cli, commands: list[tuple[str, ...]]) -> list[str]:
    """Run each command; each must exit 2 with one ``error:`` line and print nothing else."""
    errors = []
    for argv in commands:
        code, out, err = cli(*argv)
        assert code == 2, (argv, code, err)
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        errors.append(err)
    return errors


def three(site: str, model: str, *args: str) -> list[tuple[str, ...]]:
    common = ("--site", site, "--model", model, *args)
    return [("plan", *common), ("render", *common), ("submit", "--dry-run", *common)]


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("layout", "args", "want"),
    [
        ("tp-across-nodes", ("--nodes", "2"), (2, 1)),
        ("pp-across-nodes", ("--nodes", "2"), (1, 2)),
        ("pp-across-nodes", ("--nodes", "2", "--tp", "2"), (2, 1)),
        ("tp-across-nodes", ("--nodes", "2", "--pp", "2"), (1, 2)),
    ],
)
def test_plan_sizes_the_layout_render_and_submit_launch(
    cli: Cli, env: Path, tmp_path: Path, model: str, layout: str, args: tuple[str, ...],
    want: tuple[int, int],
) -> None:  # fmt: skip
    site = site_file(tmp_path, layout)
    planned = plan_json(cli, site, model, *args)
    submitted, launcher = submit_dry(cli, site, model, *args)
    assert (planned["tp"], planned["pp"]) == want
    assert layout_of(render_script(cli, site, model, *args)) == want
    assert (submitted["tp"], submitted["pp"]) == want and layout_of(launcher) == want


def test_auto_nodes_follow_the_site_layout(cli: Cli, env: Path, tmp_path: Path, model: str) -> None:
    # one node fits the tiny model: TP×PP = 1×1 whatever the mode; with --tp 2 it needs 2 nodes
    planned = plan_json(cli, site_file(tmp_path), model, "--tp", "2")
    assert (planned["nodes"], planned["tp"], planned["pp"]) == (2, 2, 1)
    script = render_script(cli, site_file(tmp_path), model, "--nodes", "2")
    assert layout_of(script) == (planned["tp"], planned["pp"])


def test_a_layout_the_model_refuses_is_refused_alike(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    # TP=3 across 3 nodes: 4 attention heads do not split in 3
    errors = refusals(cli, three(site_file(tmp_path), model, "--nodes", "3"))
    assert len(set(errors)) == 1
    assert "attention heads (4) are not divisible by TP=3" in errors[0]


@pytest.mark.parametrize("tp", ["0", "-1"])
def test_tp_below_one_is_a_usage_error_everywhere(
    cli: Cli, env: Path, tmp_path: Path, model: str, tp: str
) -> None:
    site = site_file(tmp_path)
    # with --nodes all three refuse; without, plan searches the node count (still refused)
    for commands in ([(*c, "--nodes", "2") for c in three(site, model, "--tp", tp)],
                     three(site, model, "--tp", tp)[:1]):  # fmt: skip
        errors = refusals(cli, commands)
        assert set(errors) == {f"error: --tp/--tensor-parallel-size {tp}: expected at least 1\n"}


# --------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    ("given", "resolved", "nbytes"),
    [("half", "float16", 2), ("float", "float32", 4), ("bfloat16", "bfloat16", 2)],
)
def test_dtype_resolves_alike(
    cli: Cli, env: Path, tmp_path: Path, model: str, given: str, resolved: str, nbytes: int
) -> None:
    site = site_file(tmp_path)
    planned = plan_json(cli, site, model, "--dtype", given)
    assert (planned["dtype"], planned["dtype_bytes"]) == (resolved, nbytes)
    assert flag_value(render_script(cli, site, model, "--dtype", given), "--dtype") == resolved
    assert flag_value(submit_dry(cli, site, model, "--dtype", given)[1], "--dtype") == resolved


def test_auto_dtype_is_not_passed_and_sizes_float32_checkpoints_16_bit(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    site = site_file(tmp_path)
    planned = plan_json(cli, site, model)
    # The config says float32; plan reports the dtype vLLM's auto serves it in on this CPU site.
    assert (planned["dtype"], planned["dtype_bytes"]) == ("bfloat16", 2)
    assert flag_value(render_script(cli, site, model), "--dtype") is None


@pytest.mark.parametrize(
    ("option", "value"),
    [("--dtype", "fp16"), ("--dtype", "float64"), ("--kv-cache-dtype", "fp9")],
)
def test_unknown_dtypes_are_refused_alike(
    cli: Cli, env: Path, tmp_path: Path, model: str, option: str, value: str
) -> None:
    errors = refusals(cli, three(site_file(tmp_path), model, option, value))
    assert len(set(errors)) == 1 and f"{option} {value!r}: expected one of auto" in errors[0]


def test_kv_cache_dtype_vocabulary_is_shared(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    site = site_file(tmp_path)
    assert (
        plan_json(cli, site, model, "--kv-cache-dtype", "fp8_e5m2")["kv_cache_dtype"] == "fp8_e5m2"
    )
    script = render_script(cli, site, model, "--kv-cache-dtype", "fp8_e5m2")
    assert flag_value(script, "--kv-cache-dtype") == "fp8_e5m2"


# --------------------------------------------------------------------------- numeric bounds


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--max-model-len", "0", "at least 1"),
        ("--max-model-len", "-5", "at least 1"),
        ("--gpu-memory-utilization", "1.5", "in (0, 1]"),
        ("--gpu-memory-utilization", "0", "in (0, 1]"),
        ("--gpu-memory-utilization", "nan", "in (0, 1]"),
        ("--pp", "0", "at least 1"),
    ],
)
def test_numeric_bounds_are_one_table(
    cli: Cli, env: Path, tmp_path: Path, model: str, option: str, value: str, allowed: str
) -> None:
    errors = refusals(cli, three(site_file(tmp_path), model, "--nodes", "2", option, value))
    assert len(set(errors)) == 1
    assert f": expected {allowed}" in errors[0] and option in errors[0]


def test_values_inside_the_bounds_reach_vllm(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    site = site_file(tmp_path)
    args = ("--max-model-len", "1024", "--gpu-memory-utilization", "0.5")
    planned = plan_json(cli, site, model, *args)
    assert (planned["max_model_len"], planned["gpu_memory_utilization"]) == (1024, 0.5)
    for script in (render_script(cli, site, model, *args), submit_dry(cli, site, model, *args)[1]):
        assert flag_value(script, "--max-model-len") == "1024"
        assert flag_value(script, "--gpu-memory-utilization") == "0.5"


# --------------------------------------------------------------------------- job name


@pytest.mark.parametrize("name", ["1abc", "-x", "a b", "x" * 65])
def test_job_name_rule_is_the_registry_rule(
    cli: Cli, env: Path, tmp_path: Path, model: str, name: str
) -> None:
    site = site_file(tmp_path)
    commands = three(site, model, "--name", name)[1:]  # plan names no job
    commands.append(("submit", "--site", site, "--model", model, "--name", name))
    errors = refusals(cli, commands)
    assert len(set(errors)) == 1 and f"--name {name!r} is not valid" in errors[0]


def test_a_valid_name_is_the_slurm_job_name_of_render_and_submit(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    site = site_file(tmp_path)
    assert "#SBATCH --job-name=demo.1\n" in render_script(cli, site, model, "--name", "demo.1")
    assert "#SBATCH --job-name=demo.1\n" in submit_dry(cli, site, model, "--name", "demo.1")[1]


# --------------------------------------------------------------------------- SLURM time


@pytest.mark.parametrize("value", ["2 hours", "1h", "1:2:3:4", "-1-00"])
def test_bad_time_is_refused_alike(
    cli: Cli, env: Path, tmp_path: Path, model: str, value: str
) -> None:
    errors = refusals(cli, three(site_file(tmp_path), model, "--time", value)[1:])
    assert len(set(errors)) == 1 and f"--time {value!r}: expected a SLURM time" in errors[0]


@pytest.mark.parametrize("value", ["90", "4:30", "1-12", "1-12:30", "unlimited"])
def test_every_sbatch_time_form_is_accepted_alike(
    cli: Cli, env: Path, tmp_path: Path, model: str, value: str
) -> None:
    site = site_file(tmp_path)
    assert f"#SBATCH --time={value}\n" in render_script(cli, site, model, "--time", value)
    assert f"#SBATCH --time={value}\n" in submit_dry(cli, site, model, "--time", value)[1]
    # the same text is a valid site default
    scheduled = dataclasses.replace(venv_site().scheduler, time=value)
    site_path = site_file(tmp_path, scheduler=scheduled)
    assert f"#SBATCH --time={value}\n" in render_script(cli, site_path, model)


def test_a_site_with_a_bad_time_is_refused_by_every_command(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    scheduled = dataclasses.replace(venv_site().scheduler, time="1 hour")
    errors = refusals(cli, three(site_file(tmp_path, scheduler=scheduled), model))
    assert len(set(errors)) == 1 and "scheduler.time: expected a Slurm time" in errors[0]


# --------------------------------------------------------------------------- env-var names


@pytest.mark.parametrize("name", ["1BAD", "A-B", "A B"])
def test_a_site_with_a_bad_env_name_is_refused_by_every_command(
    cli: Cli, env: Path, tmp_path: Path, model: str, name: str
) -> None:
    engine = dataclasses.replace(venv_site().engine, env={name: "x"})
    errors = refusals(cli, three(site_file(tmp_path, engine=engine), model))
    assert len(set(errors)) == 1 and f"engine.env.{name}: expected an environment" in errors[0]


# --------------------------------------------------------------------------- job directory


def test_default_job_dir_is_one_function(cli: Cli, env: Path, tmp_path: Path, model: str) -> None:
    site_path = site_file(tmp_path)
    site: Site = venv_site()
    script = render_script(cli, site_path, model, "--name", "demo")
    assert default_job_dir(site, "demo") == "~/hpcserve-jobs/demo"
    assert 'JOBDIR="${HOME}"/hpcserve-jobs/demo-"${SLURM_JOB_ID}"\n' in script
    submitted, _ = submit_dry(cli, site_path, model, "--name", "demo")
    prefix = default_job_dir(site, "demo", home=str(env)) + "-"
    assert submitted["job_dir"].startswith(prefix) and submitted["job_dir"] != prefix
    again, _ = submit_dry(cli, site_path, model, "--name", "demo")
    assert again["job_dir"] != submitted["job_dir"]  # submit never reuses a directory


# --------------------------------------------------------------------------- context length


def test_max_model_len_beyond_the_model_is_refused_by_every_command(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    """vLLM refuses max_model_len > max_position_embeddings (2048 here) without
    VLLM_ALLOW_LONG_MAX_MODEL_LEN; every command says so, with that hint."""
    errors = refusals(cli, three(site_file(tmp_path), model, "--max-model-len", "4096"))
    assert len(set(errors)) == 1
    assert "4096" in errors[0] and "2048" in errors[0]
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in errors[0]
    engine = dataclasses.replace(venv_site().engine, env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"})
    (tmp_path / "long").mkdir()
    allowed = site_file(tmp_path / "long", engine=engine)
    assert plan_json(cli, allowed, model, "--max-model-len", "4096")["max_model_len"] == 4096
    assert flag_value(render_script(cli, allowed, model, "--max-model-len", "4096"),
                      "--max-model-len") == "4096"  # fmt: skip


def test_rope_scaling_extends_the_length_every_command_accepts(
    cli: Cli, env: Path, tmp_path: Path
) -> None:
    """vLLM multiplies the length by the RoPE factor (YaRN from its original length), except
    for llama3/longrope/su, whose max_position_embeddings are already scaled."""
    cfg = json.loads(TINY.read_text())
    site = site_file(tmp_path)
    for rope, ok, refused in (
        (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
            4096,
            4097,
        ),
        ({"type": "linear", "factor": 2.0}, 4096, 4097),
        ({"rope_type": "llama3", "factor": 8.0}, 2048, 2049),
    ):
        path = tmp_path / f"m-{rope.get('rope_type') or rope['type']}"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({**cfg, "rope_scaling": rope}))
        assert plan_json(cli, site, str(path), "--max-model-len", str(ok))["max_model_len"] == ok
        assert flag_value(render_script(cli, site, str(path), "--max-model-len", str(ok)),
                          "--max-model-len") == str(ok)  # fmt: skip
        errors = refusals(cli, three(site, str(path), "--max-model-len", str(refused)))
        assert len(set(errors)) == 1 and f"({ok}:" in errors[0], errors


def test_a_vllm_arg_repeating_an_option_hpcserve_sets_is_refused(
    cli: Cli, env: Path, tmp_path: Path, model: str
) -> None:
    site = site_file(tmp_path)
    for args in (
        ("--vllm-arg=--tensor-parallel-size=2",),
        ("--vllm-arg", "-tp", "--vllm-arg", "2"),
        ("--max-model-len", "512", "--vllm-arg=--max_model_len=1024"),
    ):
        for command in ("render", "submit"):
            extra = ("--dry-run",) if command == "submit" else ()
            code, out, err = cli(command, *extra, "--site", site, "--model", model, *args)
            assert code == 2 and err.count("\n") == 1 and "--vllm-arg" in err, (args, err)
    # an option hpcserve does not set may still go through --vllm-arg
    script = render_script(cli, site, model, "--vllm-arg=--max-num-seqs=8")
    assert "--max-num-seqs=8" in script
