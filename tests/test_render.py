"""The rendered launcher: valid bash, the right flags per role, quoting, no secrets."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import all_test_sites, apptainer_site, read_env, read_nul, venv_site

from hpcserve.errors import UsageError
from hpcserve.launch.render import LaunchRequest, Var, choose_layout, render, shell_word
from hpcserve.plan.modelinfo import parse_config
from hpcserve.sites.schema import Engine, Network, Site

SITES = all_test_sites()


def request(nodes: int = 2, **kw: object) -> LaunchRequest:
    base = LaunchRequest(model="Qwen/Qwen3-8B", nodes=nodes, job_dir="/scratch/u/jobs/j1")
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:  # fail, never skip: CI installs shellcheck
        pytest.fail("shellcheck is not installed (apt-get install shellcheck)")
    return path


@pytest.mark.parametrize("nodes", [1, 2, 4])
@pytest.mark.parametrize("site", SITES, ids=[s.name for s in SITES])
def test_bash_n_and_shellcheck(site: Site, nodes: int, tmp_path: Path) -> None:
    gpus = site.node.gpus
    if site.container.runtime != "none" and not site.container.image:
        # a shipped site may leave the image to the user; render needs one
        site = dataclasses.replace(
            site, container=dataclasses.replace(site.container, image="/shared/vllm.sif")
        )
    script = tmp_path / "launcher.sbatch"
    script.write_text(render(site, request(nodes, tp=gpus, pp=nodes)))
    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run([shellcheck(), "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_directives_from_site_and_overrides() -> None:
    text = render(
        apptainer_site(),
        request(2, sbatch={"time": "02:00:00", "qos": "urgent", "mem": "0"}),
    )
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=2" in directives
    assert "#SBATCH --ntasks-per-node=1" in directives
    assert "#SBATCH --time=02:00:00" in directives
    assert "#SBATCH --qos=urgent" in directives
    assert "#SBATCH --account=p200" in directives
    assert "#SBATCH --gres=gpu:4" in directives
    assert "#SBATCH --exclusive" in directives
    assert "#SBATCH --mem=0" in directives
    assert "#SBATCH --output=/scratch/u/jobs/j1/slurm-%j.out" in directives
    assert directives[-1] == "#SBATCH --hint=nomultithread"  # site extra_sbatch, verbatim, last


def test_srun_one_task_per_node() -> None:
    text = render(apptainer_site(), request(4))
    assert "srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --kill-on-bad-exit=1" in text
    # A node whose vLLM ends with status 0 (a head that stopped) still ends the job.
    assert "--wait=30 --export=ALL" in text


def test_layout_defaults_and_refusals() -> None:
    site = apptainer_site()
    assert choose_layout(site, request(nodes=2)) == choose_layout(
        site, request(nodes=2, tp=4, pp=2)
    )
    assert choose_layout(site, request(nodes=2, tp=8, pp=1)).ranks_per_node == 4
    with pytest.raises(UsageError, match="per node"):
        choose_layout(site, request(nodes=2, tp=8, pp=2))
    with pytest.raises(UsageError, match="split evenly"):
        choose_layout(site, request(nodes=2, tp=3, pp=1))
    # A site whose vLLM cannot run PP (the CPU lab) spans nodes with TP instead.
    site.engine.layout = "tp-across-nodes"
    lay = choose_layout(site, request(nodes=2))
    assert (lay.tp, lay.pp) == (8, 1)


def test_layout_is_checked_against_the_model_when_its_config_is_here() -> None:
    site = apptainer_site()
    info = parse_config(
        {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 768,
            "num_hidden_layers": 2,
            "num_attention_heads": 6,
            "num_key_value_heads": 6,
            "intermediate_size": 1536,
            "vocab_size": 1000,
        },
        "m",
    )
    with pytest.raises(UsageError, match=r"attention heads \(6\) are not divisible by TP=4"):
        render(site, request(nodes=2, model_info=info))


def test_bad_requests_are_usage_errors() -> None:
    site = apptainer_site()
    with pytest.raises(UsageError, match="--model"):
        render(site, request(model="--help"))
    with pytest.raises(UsageError, match="absolute"):
        render(site, request(job_dir="relative/dir"))
    with pytest.raises(UsageError, match="--api-key"):
        render(site, request(vllm_args=["--api-key=sekrit"]))
    with pytest.raises(UsageError, match="--name"):
        render(site, request(job_name="a b"))
    with pytest.raises(UsageError, match="extra_sbatch"):
        render(
            apptainer_site(
                scheduler=dataclasses.replace(apptainer_site().scheduler, extra_sbatch=["hint=x"])
            ),
            request(),
        )


def test_shell_word() -> None:
    assert shell_word("a b") == "'a b'"
    assert shell_word((Var("HOME"), "/x y")) == "\"${HOME}\"'/x y'"
    assert shell_word("") == "''"


# --- running the node role with fake executables -------------------------------------------


def run_node(script: Path, rank: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        **env,
        "SLURM_NODEID": str(rank),
        "HPCSERVE_HEAD_ADDR": "10.0.0.1",
        "HPCSERVE_API_PORT": "8123",
        "HPCSERVE_MASTER_PORT": "9123",
    }
    return subprocess.run(["bash", str(script), "node"], env=full, capture_output=True, text=True)


def write_launcher(site: Site, req: LaunchRequest, job_dir: Path) -> Path:
    """The launcher in ``job_dir``; the site's compilation cache next to it (the node role makes
    that directory: never outside the test's tmp_path)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    if site.storage.compile_cache and not site.storage.compile_cache_dir:
        cache = str(job_dir.parent / "vllm-cache")
        site = dataclasses.replace(
            site, storage=dataclasses.replace(site.storage, compile_cache_dir=cache)
        )
    req = dataclasses.replace(req, job_dir=str(job_dir))
    path = job_dir / "launcher.sbatch"
    path.write_text(render(site, req))
    return path


def test_head_and_worker_flags(fake_path: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    script = write_launcher(venv_site(), request(2, vllm_options={"max_model_len": 4096}), job)
    (job / "secrets.env").write_text("VLLM_API_KEY='k-123'\nHF_TOKEN='hf-abc'\n")
    for rank in (0, 1):
        proc = run_node(script, rank, {})
        assert proc.returncode == 0, (job / f"node-{rank}.log").read_text()
    head = read_nul(fake_path / "vllm-argv.0")
    worker = read_nul(fake_path / "vllm-argv.1")

    def value(argv: list[str], name: str) -> str:
        return argv[argv.index(name) + 1]

    assert head[:2] == ["serve", "Qwen/Qwen3-8B"]
    for argv, rank in ((head, "0"), (worker, "1")):
        assert value(argv, "--tensor-parallel-size") == "1"
        assert value(argv, "--pipeline-parallel-size") == "2"
        assert value(argv, "--nnodes") == "2"
        assert value(argv, "--node-rank") == rank
        assert value(argv, "--master-addr") == "10.0.0.1"
        assert value(argv, "--master-port") == "9123"
        assert value(argv, "--max-model-len") == "4096"
        assert value(argv, "--distributed-executor-backend") == "mp"
        assert not any("k-123" in a or "hf-abc" in a for a in argv)  # secrets never in argv
    assert "--headless" not in head and "--headless" in worker
    assert value(head, "--host") == "0.0.0.0" and value(head, "--port") == "8123"

    env0, env1 = read_env(fake_path / "vllm-env.0"), read_env(fake_path / "vllm-env.1")
    assert env0["VLLM_API_KEY"] == "k-123" and env0["HF_TOKEN"] == "hf-abc"
    assert env0["NCCL_DEBUG"] == "INFO"
    assert env0["PYTHONUNBUFFERED"] == env1["PYTHONUNBUFFERED"] == "1"  # live phases in logs
    assert env1["NCCL_DEBUG_FILE"] == f"{job}/nccl/node-1.%h.%p.log"
    assert env0["HF_HOME"] == os.path.expanduser("~/hf-cache")
    assert "HF_HUB_OFFLINE" not in env0
    assert env0["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env0["VLLM_HOST_IP"] == "127.0.0.1"  # the address of the site interface (lo)
    ncpu = os.cpu_count() or 1
    assert env1["VLLM_CPU_OMP_THREADS_BIND"] == str(1 % ncpu)
    assert "fake vllm on node 1" in (job / "node-1.log").read_text()


def test_single_node_has_no_multinode_flags(fake_path: Path, tmp_path: Path) -> None:
    script = write_launcher(venv_site(), request(1), tmp_path / "job")
    assert run_node(script, 0, {}).returncode == 0
    # a missing secrets file is created empty and private, so --env-file/source always work
    assert (tmp_path / "job" / "secrets.env").stat().st_mode & 0o777 == 0o600
    argv = read_nul(fake_path / "vllm-argv.0")
    assert "--nnodes" not in argv and "--headless" not in argv
    assert "--port" in argv


def test_apptainer_command_line(fake_path: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    site = apptainer_site(
        network=dataclasses.replace(apptainer_site().network, head_interface="lo")
    )
    script = write_launcher(site, request(2), job)
    (job / "secrets.env").write_text("VLLM_API_KEY='k-123'\n")
    for rank in (0, 1):
        assert run_node(script, rank, {}).returncode == 0
    argv = read_nul(fake_path / "apptainer-argv.1")
    assert argv[:2] == ["exec", "--nvccli"]
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    # the shared compilation cache is bound too (storage.compile_cache, per vLLM version)
    assert binds == ["/project", str(job), "/project/hf", f"{tmp_path}/vllm-cache/vllm-any"]
    assert argv[argv.index("--env-file") + 1] == f"{job}/secrets.env"
    image = argv.index("/project/vllm.sif")
    assert argv[image + 1 : image + 4] == ["vllm", "serve", "Qwen/Qwen3-8B"]
    assert argv[-1] == "--headless"
    env = read_env(fake_path / "apptainer-env.1")
    assert "VLLM_API_KEY" not in env  # reaches the container only through --env-file
    assert env["HF_HUB_OFFLINE"] == "1" and env["NCCL_IB_HCA"] == "mlx5"
    assert env["NCCL_SOCKET_IFNAME"] == "ib0" and env["NCCL_IB_TIMEOUT"] == "22"


def test_hostile_model_name_is_one_argument(fake_path: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    model = f"x; touch {pwned}; $(touch {pwned}) `touch {pwned}`"
    script = write_launcher(venv_site(), request(2, model=model), tmp_path / "job")
    for rank in (0, 1):
        assert run_node(script, rank, {}).returncode == 0
    assert not pwned.exists()
    assert read_nul(fake_path / "vllm-argv.0")[1] == model


def test_hostile_site_values_are_not_run(fake_path: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    evil = f"$(touch {pwned})"
    site = venv_site(
        network=Network(head_interface=evil, nccl_socket_ifname=f"`touch {pwned}`"),
        engine=Engine(port=18000, env={"EVIL": evil}, extra_args=[f"--x={evil}"]),
        modules=[evil],
    )
    job = tmp_path / "job"
    script = write_launcher(site, request(2, vllm_args=[f"--y={evil}"]), job)
    for rank in (0, 1):
        proc = run_node(script, rank, {})
        assert proc.returncode == 0, (job / f"node-{rank}.log").read_text()
    # and the batch step (module load, head address, srun) with fake srun/module
    env = {**os.environ, "SLURM_JOB_ID": "77", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + (job / "slurm-77.out").read_text()
    assert not pwned.exists()
    assert read_env(fake_path / "vllm-env.0")["EVIL"] == evil
    assert f"--x={evil}" in read_nul(fake_path / "vllm-argv.1")
    assert read_nul(fake_path / "module-argv") == ["load", *shlex.split(evil)]


def test_site_extra_args_cannot_set_the_api_key() -> None:
    site = venv_site(engine=Engine(extra_args=["--api-key", "abc"]))
    with pytest.raises(UsageError, match="engine.extra_args"):
        render(site, request())


def test_hostile_env_name_is_refused() -> None:
    site = venv_site(engine=Engine(env={"A=1; touch /tmp/x; B": "1"}))
    with pytest.raises(UsageError, match="environment variable"):
        render(site, request())


def test_batch_step_writes_endpoint_and_runs_every_node(fake_path: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    site = venv_site()
    script = write_launcher(site, request(3), job)
    env = {**os.environ, "SLURM_JOB_ID": "4321", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    endpoint = json.loads((job / "endpoint.json").read_text())
    assert endpoint["job_id"] == "4321"
    assert endpoint["head_addr"] == "127.0.0.1"
    assert endpoint["api_port"] >= 18000 + 4321 % 100
    assert endpoint["master_port"] >= 19000 + 4321 % 100
    for rank in range(3):
        argv = read_nul(fake_path / f"vllm-argv.{rank}")
        assert argv[argv.index("--port") + 1] == str(endpoint["api_port"])
        assert argv[argv.index("--master-port") + 1] == str(endpoint["master_port"])
    srun = read_nul(fake_path / "srun-argv")
    assert srun[-3:] == ["bash", str(job / "launcher.sbatch"), "node"]
    # the site's environment is already set for srun itself (e.g. MeluXina's PMIX_MCA_psec)
    assert read_env(fake_path / "srun-env")["VLLM_LOGGING_LEVEL"] == "DEBUG"
    # the claimed ports are released when the batch step exits
    assert not any((tmp_path / f"hpcserve-ports-{os.getuid()}").iterdir())


def test_two_jobs_on_one_node_get_different_ports(fake_path: Path, tmp_path: Path) -> None:
    site = venv_site()
    locks = tmp_path / f"hpcserve-ports-{os.getuid()}"
    locks.mkdir()
    (locks / str(18000 + 5 % 100)).mkdir()  # job A holds its API port (still running)
    job = tmp_path / "job-b"
    script = write_launcher(site, request(1), job)
    env = {**os.environ, "SLURM_JOB_ID": "105", "TMPDIR": str(tmp_path)}  # same offset as job 5
    assert subprocess.run(["bash", str(script)], env=env, capture_output=True).returncode == 0
    assert json.loads((job / "endpoint.json").read_text())["api_port"] == 18006


def test_batch_step_exits_with_srun_status(fake_path: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    script = write_launcher(venv_site(), request(2), job)
    env = {**os.environ, "SLURM_JOB_ID": "9", "TMPDIR": str(tmp_path), "FAKE_VLLM_EXIT": "3"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 3


def test_scancel_signal_reaches_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM to the batch step is passed to srun and on to the exec'd vLLM, which exits."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "vllm").write_text(
        "#!/bin/bash\n"
        "trap 'echo got-term >\"$FAKE_RECORD_DIR/term.$SLURM_NODEID\"; exit 143' TERM\n"
        'echo started >"$FAKE_RECORD_DIR/started.$SLURM_NODEID"\n'
        "while :; do sleep 0.1; done\n"
    )
    (fake / "vllm").chmod(0o755)
    fake_bin = Path(__file__).resolve().parent / "fake_bin"
    (fake / "srun").write_text(
        "#!/bin/bash\n"  # like srun: forward TERM to the tasks
        "pids=(); trap 'kill -TERM \"${pids[@]}\"; wait; exit 143' TERM\n"
        'for k in 0 1; do SLURM_NODEID=$k "${@: -3}" & pids+=($!); done\n'
        "wait\n"
        "wait\n"
    )
    (fake / "srun").chmod(0o755)
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RECORD_DIR", str(record))
    job = tmp_path / "job"
    script = write_launcher(venv_site(), request(2), job)
    env = {**os.environ, "SLURM_JOB_ID": "11", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(["bash", str(script)], env=env)
    import time

    for _ in range(200):
        if all((record / f"started.{k}").exists() for k in (0, 1)):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("fake vllm did not start")
    proc.terminate()
    assert proc.wait(timeout=20) == 143  # the batch step exits with srun's status
    assert (record / "term.0").read_text().strip() == "got-term"
    assert (record / "term.1").read_text().strip() == "got-term"


def test_no_secret_in_rendered_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETVALUE")
    monkeypatch.setenv("VLLM_API_KEY", "sk-SECRETVALUE")
    for site in SITES:
        text = render(site, request(2))
        assert "SECRETVALUE" not in text
        assert "--api-key" not in text


def test_template_cache_gives_the_same_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("HPCSERVE_NO_TEMPLATE_CACHE", raising=False)
    first = render(apptainer_site(), request(2))
    assert list((tmp_path / "hpcserve" / "jinja2").iterdir())  # compiled once, cached
    second = render(apptainer_site(), request(2))
    monkeypatch.setenv("HPCSERVE_NO_TEMPLATE_CACHE", "1")
    assert first == second == render(apptainer_site(), request(2))


def test_apptainer_definition_pins_the_official_image() -> None:
    definition = (Path(__file__).resolve().parent.parent / "apptainer" / "vllm.def").read_text()
    lines = dict(
        line.split(":", 1)
        for line in definition.splitlines()
        if line.startswith(("Bootstrap", "From"))
    )
    assert lines["Bootstrap"].strip() == "docker"
    image, _, tag = lines["From"].strip().partition(":")
    assert image == "vllm/vllm-openai"
    assert tag.startswith("v") and tag != "latest"


def test_job_dir_under_home_is_expanded_on_the_cluster(fake_path: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    text = render(venv_site(), request(2, job_dir="~/jobs/x"))
    assert "--output" not in text and "--chdir" not in text  # sbatch cannot expand ~
    script = tmp_path / "launcher.sbatch"
    script.write_text(text)
    env = {**os.environ, "HOME": str(home), "SLURM_JOB_ID": "55", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    job = home / "jobs" / "x"
    assert json.loads((job / "endpoint.json").read_text())["job_id"] == "55"
    assert "srun exited with status 0" in (job / "slurm-55.out").read_text()
    assert (job / "launcher.sbatch").read_text() == text  # copied for the srun tasks
    assert (job / "node-1.log").exists()


def test_model_path_under_home_is_expanded(fake_path: Path, tmp_path: Path) -> None:
    script = write_launcher(venv_site(), request(1, model="~/models/m x"), tmp_path / "job")
    home = tmp_path / "home"
    assert run_node(script, 0, {"HOME": str(home)}).returncode == 0
    assert read_nul(fake_path / "vllm-argv.0")[1] == f"{home}/models/m x"


def test_a_listening_port_is_skipped(fake_path: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        for job_id in range(20, 100):  # find a job whose first API port we can occupy
            try:
                busy.bind(("127.0.0.1", 18000 + job_id))
                break
            except OSError:
                continue
        busy.listen()
        job = tmp_path / "job"
        script = write_launcher(venv_site(), request(1), job)
        env = {**os.environ, "SLURM_JOB_ID": str(job_id), "TMPDIR": str(tmp_path)}
        proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        api_port = json.loads((job / "endpoint.json").read_text())["api_port"]
        assert api_port == 18000 + job_id + 1


def sbatch_like(
    text: str, job_id: str, tmp_path: Path, home: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as sbatch does: a private copy of the script, run from the submit directory."""
    spool = tmp_path / f"spool-{job_id}"
    spool.mkdir()
    script = spool / "slurm_script"
    script.write_text(text)
    env = {**os.environ, "HOME": str(home), "SLURM_JOB_ID": job_id, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        ["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True
    )


def test_each_default_rendered_launcher_runs_what_it_says(fake_path: Path, tmp_path: Path) -> None:
    """Two `render`s without --job-dir, sbatched one after the other: each serves its own model."""
    home = tmp_path / "home"
    home.mkdir()
    site = venv_site()
    first = render(site, request(1, model="org/FIRST", job_dir=""))
    second = render(
        site, request(1, model="org/SECOND", job_dir="", vllm_options={"max_model_len": 4096})
    )
    seen = []
    for text, job_id in ((first, "101"), (second, "102")):
        proc = sbatch_like(text, job_id, tmp_path, home)
        assert proc.returncode == 0, proc.stderr
        seen.append(read_nul(fake_path / "vllm-argv.0"))
    assert seen[0][:2] == ["serve", "org/FIRST"] and "--max-model-len" not in seen[0]
    assert seen[1][:2] == ["serve", "org/SECOND"]
    assert seen[1][seen[1].index("--max-model-len") + 1] == "4096"


def test_a_job_directory_belongs_to_one_job(fake_path: Path, tmp_path: Path) -> None:
    """Another launcher (or another job) in an explicit --job-dir is refused, never run."""
    home = tmp_path / "home"
    home.mkdir()
    site = venv_site()
    first = render(site, request(1, model="org/FIRST", job_dir="~/jobs/x"))
    second = render(site, request(1, model="org/SECOND", job_dir="~/jobs/x"))
    assert sbatch_like(first, "201", tmp_path, home).returncode == 0
    (fake_path / "vllm-argv.0").unlink()
    proc = sbatch_like(second, "202", tmp_path, home)
    assert proc.returncode != 0
    assert not (fake_path / "vllm-argv.0").exists()
    log = (home / "jobs" / "x" / "slurm-202.out").read_text()
    assert "belongs to job 201" in log or "another launcher" in log
    proc = sbatch_like(first, "203", tmp_path, home)  # the same script again: still another job
    assert proc.returncode != 0 and not (fake_path / "vllm-argv.0").exists()
    assert "belongs to job 201" in (home / "jobs" / "x" / "slurm-203.out").read_text()


# --- data parallelism ---------------------------------------------------------------------

QWEN35_CONFIG = Path(__file__).parent / "data" / "models" / "qwen3.5-397b-a17b-gptq-int4.json"


def _value(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_dp_runs_one_api_server_and_headless_engines(fake_path: Path, tmp_path: Path) -> None:
    """data_parallel_deployment.md: the head serves the API with --data-parallel-size N
    --data-parallel-size-local L --data-parallel-address HEAD --data-parallel-rpc-port P; the
    other nodes add --headless --data-parallel-start-rank K."""
    job = tmp_path / "job"
    script = write_launcher(venv_site(), request(2, dp=2), job)
    for rank in (0, 1):
        proc = run_node(script, rank, {})
        assert proc.returncode == 0, (job / f"node-{rank}.log").read_text()
    head = read_nul(fake_path / "vllm-argv.0")
    worker = read_nul(fake_path / "vllm-argv.1")
    for argv in (head, worker):
        assert _value(argv, "--data-parallel-size") == "2"
        assert _value(argv, "--data-parallel-size-local") == "1"
        assert _value(argv, "--data-parallel-address") == "10.0.0.1"
        assert _value(argv, "--data-parallel-rpc-port") == "9123"  # the launcher's master port
        assert _value(argv, "--tensor-parallel-size") == "1"
        assert _value(argv, "--pipeline-parallel-size") == "1"
        # every DP rank lives on one node: no torch.distributed group spans the nodes
        for flag in ("--nnodes", "--node-rank", "--master-addr", "--master-port"):
            assert flag not in argv
        assert "--distributed-executor-backend" not in argv
        assert "--enable-expert-parallel" not in argv  # no model config here: no EP default
    assert "--headless" not in head and "--data-parallel-start-rank" not in head
    assert "--headless" in worker and _value(worker, "--data-parallel-start-rank") == "1"
    assert _value(head, "--port") == "8123"


def test_dp_start_rank_counts_the_ranks_of_earlier_nodes(fake_path: Path, tmp_path: Path) -> None:
    """expert_parallel_deployment.md: the start rank is the cumulative local DP size of the
    nodes before (4 ranks on 2 nodes of 4 GPUs, TP 2: 2 a node, node 1 starts at 2)."""
    site = venv_site(node=dataclasses.replace(venv_site().node, gpus=4))
    job = tmp_path / "job"
    script = write_launcher(site, request(2, dp=4), job)
    assert run_node(script, 1, {}).returncode == 0, (job / "node-1.log").read_text()
    worker = read_nul(fake_path / "vllm-argv.1")
    assert _value(worker, "--data-parallel-size-local") == "2"
    assert _value(worker, "--data-parallel-start-rank") == "2"
    assert _value(worker, "--tensor-parallel-size") == "2"


def test_expert_parallel_is_on_for_a_moe_model_with_dp() -> None:
    info = parse_config(json.loads(QWEN35_CONFIG.read_text()), "Qwen/Qwen3.5-397B-A17B-GPTQ-Int4")
    site = apptainer_site()
    text = render(site, request(2, dp=2, model_info=info))
    assert "--enable-expert-parallel" in text
    assert "--data-parallel-size 2" in " ".join(shlex.split(text.replace("\\\n", " ")))
    assert "--enable-expert-parallel" not in render(site, request(2, model_info=info))  # no DP
    assert "--enable-expert-parallel" not in render(
        site, request(2, dp=2, ep=False, model_info=info)
    )
    assert "--enable-expert-parallel" in render(site, request(2, ep=True, model_info=info))
    assert "# DP 2 x TP 4 x PP 1." in text


def test_dp_layouts_vllm_or_the_launcher_refuse() -> None:
    site = apptainer_site()  # 4 GPUs a node
    with pytest.raises(UsageError, match=r"--dp 3 does not divide the 8 GPUs of 2 node\(s\)"):
        choose_layout(site, request(2, dp=3))
    with pytest.raises(UsageError) as e:
        choose_layout(site, request(4, dp=2))  # one DP rank of 8 GPUs would span two nodes
    assert "DP=2 does not split evenly over 4 node(s)" in str(e.value)
    assert "--dp 4 --tp 4 --pp 1" in str(e.value)  # a DP layout that works
    with pytest.raises(UsageError, match="needs 8 GPUs per node but nodes have 4"):
        choose_layout(site, request(2, dp=2, tp=4, pp=2))
    lay = choose_layout(site, request(2, dp=4))
    assert (lay.dp, lay.tp, lay.pp, lay.dp_local, lay.ranks_per_node) == (4, 2, 1, 2, 4)


def test_dp_flags_cannot_be_smuggled_through_vllm_arg() -> None:
    site = apptainer_site()
    for arg in (
        "--data-parallel-size=2",
        "-dp=2",
        "--data-parallel-start-rank=1",
        "--data-parallel-rpc-port=1",
        "-dpa=10.0.0.1",
        "--data-parallel-rank=0",
        "--data-parallel-hybrid-lb",
        "--enable-expert-parallel",
    ):
        with pytest.raises(UsageError, match="is not allowed"):
            render(site, request(2, vllm_args=[arg]))


def test_dp_launcher_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "launcher.sbatch"
    script.write_text(render(venv_site(), request(2, dp=2)))
    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run([shellcheck(), "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
