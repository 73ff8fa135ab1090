"""Warm starts (issue 16): the shared compilation cache, model staging, the weight-loading flags
and what `wait`/`status` say about the cache, from vLLM's own lines."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import apptainer_site, read_env, read_nul, venv_site
from test_render import request, run_node

from hpcserve.errors import UsageError
from hpcserve.jobs.phases import PHASES, PhaseInfo, combine_cache, merge, read_phase
from hpcserve.jobs.state import JobStatus, _running
from hpcserve.launch import caches, vllm_flags
from hpcserve.launch.render import LaunchRequest, render
from hpcserve.sites.loader import SiteFileError, load_site_file
from hpcserve.sites.schema import Engine, Site, Storage

# -- where the cache lives ---------------------------------------------------------------------


def _storage(site: Site, **kw: object) -> Site:
    return dataclasses.replace(site, storage=dataclasses.replace(site.storage, **kw))


def test_the_cache_defaults_to_the_workdir_per_vllm_version() -> None:
    site = apptainer_site()  # workdir /project/jobs, no engine.vllm_version
    assert caches.compile_cache_root(site) == "/project/jobs/vllm-cache/vllm-any"
    site = dataclasses.replace(site, engine=Engine(vllm_version="0.26.0"))
    assert caches.compile_cache_root(site) == "/project/jobs/vllm-cache/vllm-0.26.0"
    assert caches.cache_env(site) == [
        ("VLLM_CACHE_ROOT", "/project/jobs/vllm-cache/vllm-0.26.0"),
        ("TRITON_CACHE_DIR", "/project/jobs/vllm-cache/vllm-0.26.0/triton"),
    ]


def test_a_site_moves_the_cache_or_turns_it_off() -> None:
    moved = _storage(apptainer_site(), compile_cache_dir="/scratch/shared/cache/")
    assert caches.compile_cache_root(moved) == "/scratch/shared/cache/vllm-any"
    off = _storage(apptainer_site(), compile_cache=False, compile_cache_dir="/x")
    assert caches.compile_cache_root(off) is None and caches.cache_env(off) == []
    text = render(off, request(2))
    assert "VLLM_CACHE_ROOT" not in text and "TRITON_CACHE_DIR" not in text


def test_site_files_take_the_new_fields(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    head = "name: s\nnode: {gpus: 4, gpu_model: H100}\ncontainer: {runtime: none}\n"
    head += "scheduler: {submit: local}\n"
    path.write_text(
        head + "storage: {compile_cache: false, compile_cache_dir: /c, stage_dir: /local}\n"
    )
    site = load_site_file(str(path))
    assert (site.storage.compile_cache, site.storage.compile_cache_dir) == (False, "/c")
    assert site.storage.stage_dir == "/local"
    path.write_text(head + "storage: {compile_cache: maybe}\n")
    with pytest.raises(SiteFileError, match="storage.compile_cache"):
        load_site_file(str(path))


def test_the_node_exports_the_cache_and_engine_env_still_wins(
    fake_path: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "shared-cache"
    site = _storage(venv_site(), compile_cache_dir=str(cache))
    job = tmp_path / "job"
    job.mkdir()
    script = job / "launcher.sbatch"
    script.write_text(render(site, dataclasses.replace(request(1), job_dir=str(job))))
    assert run_node(script, 0, {}).returncode == 0, (job / "node-0.log").read_text()
    env = read_env(fake_path / "vllm-env.0")
    assert env["VLLM_CACHE_ROOT"] == f"{cache}/vllm-any"
    assert env["TRITON_CACHE_DIR"] == f"{cache}/vllm-any/triton"
    assert (cache / "vllm-any").is_dir()  # made before vLLM starts (containers bind it)
    mine = dataclasses.replace(site, engine=Engine(env={"VLLM_CACHE_ROOT": "/mine"}))
    script.write_text(render(mine, dataclasses.replace(request(1), job_dir=str(job))))
    assert run_node(script, 0, {}).returncode == 0
    assert read_env(fake_path / "vllm-env.0")["VLLM_CACHE_ROOT"] == "/mine"


def test_an_unwritable_cache_leaves_vllm_its_defaults(fake_path: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    site = _storage(venv_site(), compile_cache_dir=str(blocker / "below"))  # under a file
    job = tmp_path / "job"
    job.mkdir()
    script = job / "launcher.sbatch"
    script.write_text(render(site, dataclasses.replace(request(1), job_dir=str(job))))
    assert run_node(script, 0, {}).returncode == 0
    env = read_env(fake_path / "vllm-env.0")
    assert "VLLM_CACHE_ROOT" not in env and "TRITON_CACHE_DIR" not in env
    assert "vLLM compiles into its default cache" in (job / "node-0.log").read_text()


# -- staging to node-local disk ----------------------------------------------------------------


def test_the_staged_path_depends_on_model_and_revision_only() -> None:
    site = _storage(apptainer_site(), stage_dir="/local/")
    a = caches.staged_model_dir(site, "/shared/models/Llama-3-8B")
    assert a is not None and a.startswith("/local/hpcserve-models/Llama-3-8B-")
    assert a == caches.staged_model_dir(site, "/shared/models/Llama-3-8B")  # the next job too
    assert a != caches.staged_model_dir(site, "/other/Llama-3-8B")
    assert caches.staged_model_dir(site, "org/m", "v1") != caches.staged_model_dir(site, "org/m")
    odd = caches.staged_model_dir(site, "x; rm -rf /")
    assert odd is not None and ";" not in odd.rsplit("/", 1)[1]
    assert caches.staged_model_dir(apptainer_site(), "org/m") is None  # no stage_dir


def _stage_run(
    fake_path: Path, tmp_path: Path, model: str, req: LaunchRequest | None = None
) -> tuple[list[str], str, Path]:
    stage = tmp_path / "local"
    site = _storage(venv_site(), stage_dir=str(stage), compile_cache=False)
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    script = job / "launcher.sbatch"
    req = req or request(1, model=model)
    script.write_text(render(site, dataclasses.replace(req, job_dir=str(job))))
    assert run_node(script, 0, {"HOME": str(tmp_path / "home")}).returncode == 0
    return read_nul(fake_path / "vllm-argv.0"), (job / "node-0.log").read_text(), stage


def test_a_model_directory_is_copied_once_and_served_under_its_name(
    fake_path: Path, tmp_path: Path
) -> None:
    model = tmp_path / "shared" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    argv, log, stage = _stage_run(fake_path, tmp_path, str(model))
    served = argv[1]
    assert served.startswith(f"{stage}/hpcserve-models/m-")
    assert (Path(served) / "config.json").read_text() == "{}"
    assert (Path(served) / caches.STAGED_MARK).read_text().strip() == str(model)
    assert argv[argv.index("--served-model-name") + 1] == str(model)  # the API name stays
    assert "stage: copied" in log
    (job_log := tmp_path / "job" / "node-0.log").write_text("")
    argv2, _, _ = _stage_run(fake_path, tmp_path, str(model))
    assert argv2[1] == served  # reused by the next job, not copied again
    assert "stage: copied" not in job_log.read_text()


def test_a_hub_model_is_staged_from_its_snapshot_in_the_hf_cache(
    fake_path: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "home" / "hf-cache" / "hub" / "models--org--m"  # venv_site: ~/hf-cache
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123\n")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blob").write_text("weights")
    (snap / "model.safetensors").symlink_to(repo / "blob")
    argv, _, _ = _stage_run(fake_path, tmp_path, "org/m")
    copy = Path(argv[1]) / "model.safetensors"
    assert copy.read_text() == "weights" and not copy.is_symlink()  # links followed
    assert argv[argv.index("--served-model-name") + 1] == "org/m"


def test_a_model_not_here_or_a_foreign_copy_is_served_where_it_is(
    fake_path: Path, tmp_path: Path
) -> None:
    argv, log, _ = _stage_run(fake_path, tmp_path, "org/absent")
    assert argv[1] == "org/absent" and "not staged" in log
    model = tmp_path / "m"
    model.mkdir()
    site = _storage(venv_site(), stage_dir=str(tmp_path / "local"))
    dest = Path(str(caches.staged_model_dir(site, str(model))))
    dest.mkdir(parents=True)
    (dest / caches.STAGED_MARK).write_text("/somewhere/else\n")
    argv, log, _ = _stage_run(fake_path, tmp_path, str(model))
    assert argv[1] == str(model) and "remove" in log


def test_a_served_name_given_by_the_user_is_kept(fake_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    req = request(1, model=str(model), vllm_options={"served_model_name": "mine"})
    argv, _, _ = _stage_run(fake_path, tmp_path, str(model), req)
    assert argv.count("--served-model-name") == 1
    assert argv[argv.index("--served-model-name") + 1] == "mine"


def test_containers_bind_the_cache_and_the_stage_dir() -> None:
    site = _storage(apptainer_site(), stage_dir="/local", compile_cache_dir="/c")
    words = render(site, request(2)).split()
    binds = [words[i + 1] for i, w in enumerate(words) if w == "--bind"]
    assert "/c/vllm-any" in binds and "/local" in binds


# -- weight-loading flags ----------------------------------------------------------------------


def test_load_flags_are_table_rows_with_vllms_spellings_and_choices() -> None:
    argv = vllm_flags.flag_argv(
        {
            "load_format": "runai_streamer",
            "safetensors_load_strategy": "prefetch",
            "safetensors_prefetch_num_threads": 16,
            "model_loader_extra_config": '{"enable_multithread_load": true}',
        }
    )
    assert argv == [
        "--load-format", "runai_streamer",
        "--safetensors-load-strategy", "prefetch",
        "--safetensors-prefetch-num-threads", "16",
        "--model-loader-extra-config", '{"enable_multithread_load": true}',
    ]  # fmt: skip
    assert vllm_flags.check_values({"load_format": "gguf"}) == [
        "--load-format 'gguf': expected one of " + ", ".join(vllm_flags.LOAD_FORMATS)
    ]
    assert vllm_flags.check_values({"safetensors_load_strategy": "lazy"}) == []
    assert vllm_flags.check_values({"safetensors_prefetch_num_threads": 0})
    bad = vllm_flags.check_values({"model_loader_extra_config": "[1, 2]"})
    assert bad == ["--model-loader-extra-config '[1, 2]': expected a JSON object"]
    assert vllm_flags.check_values({"model_loader_extra_config": "{nope"})


def test_render_refuses_a_bad_load_option_in_one_line() -> None:
    with pytest.raises(UsageError, match="--load-format 'tar'"):
        render(apptainer_site(), request(2, vllm_options={"load_format": "tar"}))
    text = render(apptainer_site(), request(2, vllm_options={"load_format": "safetensors"}))
    assert "--load-format" in text and "safetensors" in text


def test_render_takes_the_load_options(cli: Any, tmp_path: Path) -> None:
    site = tmp_path / "s.yaml"
    site.write_text(
        "name: s\nnode: {gpus: 1, gpu_model: H100}\ncontainer: {runtime: none}\n"
        "scheduler: {submit: local}\n"
    )
    args = ["render", "--site", str(site), "--nodes", "1", "--model", "/m", "--no-api-key"]
    args += ["--job-dir", "/j"]
    code, out, _ = cli(*args, "--safetensors-load-strategy", "eager")
    assert code == 0 and "--safetensors-load-strategy" in out
    code, _, err = cli(*args, "--load-format", "zip")
    assert code == 2 and "--load-format 'zip': expected one of" in err


# -- vLLM's compile lines: the phase and the cache outcome -------------------------------------

COLD = [
    "INFO [backends.py:1094] Using cache directory: /c/torch_compile_cache/f14b82a3a0/rank_0_0/"
    "backbone for vLLM's torch.compile",
    "INFO [backends.py:1155] Dynamo bytecode transform time: 7.62 s",
    "INFO [backends.py:378] Cache the graph of compile range (1, 8192) for later use",
    "INFO [backends.py:393] Compiling a graph for compile range (1, 8192) takes 10.74 s",
    "INFO [decorators.py:708] saved AOT compiled function to /c/torch_aot_compile/x/rank_0_0/model",
    "INFO [monitor.py:53] torch.compile took 23.20 s in total",
]
WARM = [
    "INFO [backends.py:292] Directly load the compiled graph(s) for compile range (1, 8192) from "
    "the cache, took 1.474 s",
    "INFO [decorators.py:311] Directly load AOT compilation from path /c/torch_aot_compile/x/m",
    "INFO [monitor.py:53] torch.compile took 4.33 s in total",
]


def test_cold_and_warm_compile_lines() -> None:
    cold = read_phase(["Loading weights took 2.43 seconds", *COLD])
    assert cold.phase == "compiling" and cold.compile_cache == "miss"
    assert cold.compile_seconds == 23.2
    assert cold.compile_cache_dir == "/c/torch_compile_cache/f14b82a3a0/rank_0_0/backbone"
    assert cold.detail() == "compiling the model (torch.compile) (cache miss, 23.2 s)"
    warm = read_phase(WARM)
    assert (warm.phase, warm.compile_cache, warm.compile_seconds) == ("compiling", "hit", 4.33)
    assert warm.compile_summary() == "compile cache hit (torch.compile 4.33 s)"
    stale = read_phase(
        ["WARNING [decorators.py:321] Compiling model again due to a load failure from /c/m, "
         "reason: Compile cache file corrupted.", *WARM[:1]]
    )  # fmt: skip
    assert stale.compile_cache == "partial"
    off = read_phase(["INFO [backends.py:1092] vLLM's torch.compile cache is disabled."])
    assert off.compile_cache == "disabled"
    assert read_phase(["Available KV cache memory: 1.0 GiB"]).compile_summary() is None


def test_compiling_sits_between_loading_and_the_kv_cache() -> None:
    assert PHASES.index("loading") + 1 == PHASES.index("compiling")
    assert PHASES.index("compiling") + 1 == PHASES.index("kv_cache")
    info = read_phase([*WARM, "Available KV cache memory: 112.56 GiB"])
    assert info.phase == "kv_cache" and info.compile_cache == "hit"  # kept for later phases


def test_combine_cache_and_merge_over_nodes() -> None:
    assert combine_cache(None, "hit") == "hit"
    assert combine_cache("hit", "hit") == "hit"
    assert combine_cache("hit", "miss") == combine_cache("miss", "hit") == "partial"
    assert combine_cache("partial", "hit") == "partial"
    assert combine_cache("hit", "disabled") == combine_cache("disabled", "miss") == "disabled"
    head, worker = read_phase(WARM), read_phase(COLD)
    job = merge([head, worker])
    assert job.compile_cache == "partial" and job.compile_seconds == 23.2  # the slowest node
    assert merge([read_phase(WARM), read_phase(WARM)]).compile_cache == "hit"
    assert merge([PhaseInfo(), read_phase(WARM)]).compile_cache == "hit"


def test_a_ready_job_says_whether_the_cache_was_hit() -> None:
    st = JobStatus("1", "s", None, "m", "RUNNING", "starting", "", url="http://h:1", health=True)
    _running(st, read_phase(WARM), None)
    assert st.ready and st.detail == "ready at http://h:1; compile cache hit (torch.compile 4.33 s)"
    plain = JobStatus("1", "s", None, "m", "RUNNING", "starting", "", url="http://h:1", health=True)
    _running(plain, read_phase(["Available KV cache memory: 1.0 GiB"]), None)
    assert plain.detail == "ready at http://h:1"  # no compile lines (enforce-eager, CPU): as before


def test_storage_defaults_are_on() -> None:
    s = Storage()
    assert s.compile_cache is True and s.compile_cache_dir is None and s.stage_dir is None
    assert os.path.basename(caches.CACHE_LEAF) == "vllm-cache"


def test_a_staging_launcher_passes_bash_n_and_shellcheck(tmp_path: Path) -> None:
    import subprocess

    from test_render import shellcheck

    site = _storage(apptainer_site(), stage_dir="/local/scratch", compile_cache_dir="~/cache")
    script = tmp_path / "launcher.sbatch"
    script.write_text(render(site, request(2, vllm_options={"revision": "v1"})))
    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run([shellcheck(), "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
