"""``hpcserve render/submit/download`` end to end with fake sbatch/hf on PATH."""

from __future__ import annotations

import dataclasses
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import apptainer_site, read_nul, site_to_yaml, venv_site

from hpcserve.cluster.connect import executor_for
from hpcserve.errors import UsageError
from hpcserve.sites.schema import Scheduler, Site

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    return home


@pytest.fixture
def site_file(tmp_path: Path) -> Callable[[Site], str]:
    def write(site: Site) -> str:
        return str(site_to_yaml(site, tmp_path / f"{site.name}.yaml"))

    return write


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def only_job_dir(home: Path) -> Path:
    dirs = list((home / "hpcserve-jobs").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def test_a_dp_submit_records_its_data_parallel_ranks(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    registry: Callable[[], Any],
) -> None:  # fmt: skip
    code, out, err = cli(
        "submit", "--site", site_file(venv_site()), "--nodes", "2", "--model", "org/m",
        "--dp", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["dp"] == 2
    rec = registry().get("4242")
    assert (rec.nodes, rec.dp, rec.tp, rec.pp) == (2, 2, 1, 1)


def test_submit_writes_job_dir_and_records_the_job(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    registry: Callable[[], Any], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", "hf_TOKENVALUE")
    code, out, err = cli(
        "submit", "--site", site_file(venv_site()), "--nodes", "2", "--model", "org/m",
        "--name", "demo", "--max-model-len", "2048",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "4242"
    job = only_job_dir(home)
    assert job.name.startswith("demo-")
    launcher, secrets = job / "launcher.sbatch", job / "secrets.env"
    assert mode(job) == 0o700 and mode(secrets) == 0o600 and mode(launcher) == 0o700
    assert (job / "nccl").is_dir()
    values = dict(line.split("=", 1) for line in secrets.read_text().splitlines())
    assert values["HF_TOKEN"] == "hf_TOKENVALUE"
    api_key = values["VLLM_API_KEY"]
    assert len(api_key) >= 32
    text = launcher.read_text()
    assert "hf_TOKENVALUE" not in text and api_key not in text
    assert "--max-model-len" in text and f"JOBDIR={job}" in text
    assert read_nul(fake_path / "sbatch-argv") == ["--parsable", str(launcher)]

    rec = registry().get("4242")
    assert (rec.site, rec.model, rec.nodes, rec.tp, rec.pp) == ("cpu-venv", "org/m", 2, 1, 2)
    assert rec.dp == 1
    assert rec.job_dir == str(job) and rec.remote is False and rec.name == "demo"
    key_file = Path(rec.api_key_file)
    assert mode(key_file) == 0o600
    assert key_file.read_text().strip() == api_key


def test_hf_token_from_the_token_file(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    registry: Callable[[], Any],
) -> None:  # fmt: skip
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text("hf_FROMFILE\n")
    code, _, err = cli("submit", "--site", site_file(venv_site()), "--model", "org/m")
    assert code == 0, err
    assert "HF_TOKEN=hf_FROMFILE" in (only_job_dir(home) / "secrets.env").read_text()


def test_no_api_key_and_json(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    registry: Callable[[], Any],
) -> None:  # fmt: skip
    code, out, err = cli(
        "submit", "--site", site_file(venv_site()), "--model", "org/m", "--no-api-key", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["job_id"] == "4242" and data["api_key_file"] is None
    assert data["job_dir"] == str(only_job_dir(home)) and data["dry_run"] is False
    assert "VLLM_API_KEY" not in (only_job_dir(home) / "secrets.env").read_text()
    assert registry().get("4242").api_key_file is None


def test_dry_run_writes_but_does_not_submit(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    registry: Callable[[], Any],
) -> None:  # fmt: skip
    code, out, err = cli("submit", "--site", site_file(venv_site()), "--model", "m", "--dry-run")
    assert code == 0, err
    assert "not submitted" in out
    assert (only_job_dir(home) / "launcher.sbatch").exists()
    assert not (fake_path / "sbatch-argv").exists()
    assert registry().list() == []


def test_sbatch_failure_is_one_line(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    registry: Callable[[], Any], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "Invalid account")
    code, _, err = cli("submit", "--site", site_file(venv_site()), "--model", "m")
    assert code == 1
    assert err.startswith("error: sbatch failed") and "Invalid account" in err
    assert "Traceback" not in err


def test_unknown_sbatch_arg_lists_valid_keys(
    cli: Cli, home: Path, site_file: Callable[[Site], str]
) -> None:
    code, _, err = cli(
        "render", "--site", site_file(venv_site()), "--model", "m", "--sbatch-arg", "memm=0"
    )
    assert code == 2
    assert "unknown sbatch option 'memm'" in err
    assert "valid keys:" in err and "mem" in err and "partition" in err and "reservation" in err


def test_sbatch_arg_types_are_checked(cli: Cli, site_file: Callable[[Site], str]) -> None:
    code, _, err = cli("render", "--site", site_file(venv_site()), "--model", "m",
                       "--sbatch-arg", "cpus-per-task=many")  # fmt: skip
    assert code == 2 and "whole number" in err


def test_render_prints_script_and_passes_options(
    cli: Cli, site_file: Callable[[Site], str]
) -> None:
    code, out, err = cli(
        "render", "--site", site_file(apptainer_site()), "--nodes", "2", "--model", "org/m",
        "--enable-chunked-prefill", "--no-enable-prefix-caching", "--quantization", "gptq",
        "--vllm-arg=--max-num-seqs=8", "--vllm-arg", "--swap-space", "--vllm-arg", "4",
        "--time", "03:00:00", "--partition", "big", "--job-dir", "/p/jobs/x",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("#!/bin/bash\n")
    for needle in (
        "#SBATCH --time=03:00:00",
        "#SBATCH --partition=big",
        "--enable-chunked-prefill\n",
        "--no-enable-prefix-caching\n",
        "--max-num-seqs=8\n",
        "--swap-space\n            4\n",
        "JOBDIR=/p/jobs/x\n",
    ):
        assert needle in out


def test_render_refuses_api_key_on_command_line(cli: Cli, site_file: Callable[[Site], str]) -> None:
    code, out, err = cli(
        "render", "--site", site_file(venv_site()), "--model", "m", "--vllm-arg=--api-key=abc"
    )
    assert code == 2 and out == ""
    assert err.startswith("error:") and "VLLM_API_KEY" in err


def test_render_bad_layout_is_usage_error(cli: Cli, site_file: Callable[[Site], str]) -> None:
    code, _, err = cli("render", "--site", site_file(apptainer_site()), "--nodes", "2",
                       "--model", "m", "--tp", "8", "--pp", "2")  # fmt: skip
    assert code == 2 and "GPUs per node" in err


def test_offline_site_warns_when_model_not_cached(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    registry: Callable[[], Any], tmp_path: Path,
) -> None:  # fmt: skip
    cache = tmp_path / "hf"
    base = apptainer_site()
    site = apptainer_site(
        storage=dataclasses.replace(
            base.storage, hf_cache=str(cache), workdir=str(tmp_path / "jobs")
        ),
        scheduler=dataclasses.replace(base.scheduler, submit="local"),  # this is its login node
    )
    path = site_file(site)
    code, _, err = cli("submit", "--site", path, "--nodes", "2", "--model", "org/big")
    assert code == 0
    assert "warning:" in err and "hpcserve download org/big" in err
    (cache / "hub" / "models--org--big").mkdir(parents=True)
    code, _, err = cli("submit", "--site", path, "--nodes", "2", "--model", "org/big")
    assert code == 0 and "warning" not in err, err


def test_download_passes_token_through_stdin(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", "hf_DLTOKEN")
    code, out, err = cli("download", "org/m", "--site", site_file(venv_site()), "--revision", "v2")
    assert code == 0, err
    assert read_nul(fake_path / "hf-argv") == ["download", "org/m", "--revision", "v2"]
    assert (fake_path / "hf-token").read_text() == "hf_DLTOKEN"
    assert (fake_path / "hf-home").read_text() == str(home / "hf-cache")
    assert "org/m is in ~/hf-cache" in out


def test_download_argv_never_holds_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcserve.launch.submit import download_argv

    monkeypatch.setenv("HF_TOKEN", "hf_DLTOKEN")
    argv = download_argv(venv_site(), "org/m; rm -rf ~")
    assert not any("hf_DLTOKEN" in a for a in argv)
    assert argv[-1] == "org/m; rm -rf ~"  # a positional argument of bash -c, never code


def test_executor_for_remote_site_without_login_host() -> None:
    site = venv_site(scheduler=Scheduler(submit="ssh"), login=[])
    with pytest.raises(UsageError, match="no login host"):
        executor_for(site)


def test_local_executor_for_local_site() -> None:
    from hpcserve.cluster.executor import LocalExecutor

    assert isinstance(executor_for(venv_site()), LocalExecutor)


def remote_site(**scheduler: Any) -> Site:
    from hpcserve.sites.schema import LoginHost

    return venv_site(
        login=[LoginHost(host="login.example.org", port=8822, user="u123")],
        scheduler=Scheduler(gpus_directive="none", exclusive=False, submit="auto", **scheduler),
    )


def test_auto_submits_through_the_login_host_even_with_sbatch_here(
    fake_path: Path, home: Path
) -> None:
    """A site with a login host is never submitted to whatever sbatch is on PATH here."""
    import shutil

    from hpcserve.cluster.connect import executor_for, submits_locally

    assert shutil.which("sbatch")  # the fake one
    site = remote_site()
    assert not submits_locally(site)
    assert executor_for(site).remote
    assert executor_for(site).describe() == "u123@login.example.org:8822"


def test_auto_submits_here_on_the_sites_login_node(fake_path: Path, home: Path) -> None:
    import socket

    from hpcserve.cluster.connect import executor_for, submits_locally

    here = socket.gethostname()
    site = remote_site(login_hostnames=[here[:1] + "*", "login*.example.org"])
    assert submits_locally(site) and not executor_for(site).remote
    assert executor_for(site).describe() == "local"
    assert not submits_locally(remote_site(login_hostnames=["login*.example.org"]))


def test_dry_run_json_says_where_and_what_it_would_run(
    cli: Cli, home: Path, fake_path: Path, site_file: Callable[[Site], str]
) -> None:
    site = site_file(venv_site())
    code, out, err = cli("submit", "--site", site, "--model", "m", "--dry-run", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["submit_to"] == "local"
    assert data["command"] == ["sbatch", "--parsable", data["launcher"]]


def test_local_write_into_an_unusable_job_directory_is_one_line(tmp_path):
    from hpcserve.cluster.executor import LocalExecutor
    from hpcserve.errors import RemoteError

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    ex = LocalExecutor()
    why = "(Not a directory|File exists)$"
    with pytest.raises(RemoteError, match=f"cannot write .*launcher.sbatch: {why}"):
        ex.write_text(str(blocker / "launcher.sbatch"), "#!/bin/bash\n")
    with pytest.raises(RemoteError, match=f"cannot create .*job: {why}"):
        ex.makedirs(str(blocker / "job"))
