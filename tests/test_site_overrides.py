"""Issue 11, defects 6 and 7: user files override shipped sites field by field, CLI options for
the per-user values, where each value came from, and must-have values named before submitting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from cliutil import run_main

from hpcserve.errors import ConfigError, UsageError
from hpcserve.sites import loader as sites

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "site_configs").glob("*.yaml"))
PIN = "docker://vllm/vllm-openai:v0.33.0"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake HOME with an empty user site directory, no $HPCSERVE_SITES, cwd = repo root."""
    h = tmp_path / "home"
    (h / ".config" / "hpcserve" / "sites").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv(sites.ENV_VAR, raising=False)
    monkeypatch.chdir(REPO)
    return h


def user_file(home: Path, text: str, name: str = "meluxina.yaml") -> Path:
    path = home / ".config" / "hpcserve" / "sites" / name
    path.write_text(text)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `hpcserve ARGS` in-process through the real entry point; (exit code, out, err)."""
    return run_main(capsys, *args)


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to reach a cluster."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cluster was contacted")

    monkeypatch.setattr("hpcserve.cluster.connect.executor_for", refuse)


# ---------------------------------------------------------------- defect 6: field-by-field


def test_user_file_overrides_only_the_fields_it_sets(home: Path) -> None:
    user_file(home, "name: meluxina\nscheduler: {account: p200123}\n")
    site = sites.load_site("meluxina")
    assert site.scheduler.account == "p200123"
    assert (site.node.gpus, site.node.gpu_model) == (4, "A100-40GB")  # the node shape stays
    assert (site.scheduler.partition, site.scheduler.qos) == ("gpu", "default")
    assert site.login[0].host == "login.lxp.lu" and site.container.gpu_flag == "--nvccli"


def test_mappings_merge_and_lists_are_replaced(home: Path) -> None:
    user_file(home, "name: meluxina\nmodules: [Apptainer/1.3.1]\nengine: {env: {X_Y: '1'}}\n")
    site = sites.load_site("meluxina")
    assert site.modules == ["Apptainer/1.3.1"]
    assert site.engine.env == {"PMIX_MCA_psec": "native", "X_Y": "1"}


def test_env_file_overrides_after_the_user_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_file(home, "name: meluxina\nscheduler: {account: p1}\n")
    env = tmp_path / "m.yaml"
    env.write_text("name: meluxina\nscheduler: {qos: urgent}\n")
    monkeypatch.setenv(sites.ENV_VAR, str(env))
    site = sites.load_site("meluxina")
    assert (site.scheduler.account, site.scheduler.qos, site.node.gpus) == ("p1", "urgent", 4)


def test_merged_site_is_validated_with_the_file_that_set_the_value(home: Path) -> None:
    path = user_file(home, "name: meluxina\n\ncontainer: {venv: /opt/vllm}\n")
    with pytest.raises(ConfigError) as e:
        sites.load_site("meluxina")
    assert e.value.problems == [
        f"{path}:3: container.venv: only used when container.runtime is 'none', not 'apptainer'"
    ]


def test_broken_user_file_breaks_only_its_own_site_with_a_warning(home: Path) -> None:
    path = user_file(home, "name: [oops\n")
    with pytest.warns(sites.SiteWarning, match=re.escape(str(path))):
        assert sites.load_site("leonardo").name == "leonardo"
    with pytest.raises(ConfigError, match="meluxina.yaml:2:1: YAML syntax error"):
        sites.load_site("meluxina")


def test_sites_list_warns_about_a_broken_file_and_lists_the_rest(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_file(home, "name: meluxina\nnode: {gpus: 0}\n")
    code, out, err = run_cli(["sites", "list"], capsys)
    assert "leonardo" in out and "meluxina" not in out.split("\n", 1)[1]
    assert "meluxina.yaml:2: node.gpus: expected a value >= 1, found 0" in err
    assert code == 2


def test_overrides_are_one_function_checked_like_the_file() -> None:
    site = sites.load_site("meluxina")
    out = sites.apply_overrides(site, account="p9", image="/p/v.sif", hf_cache="/p/hf", venv=None)
    assert (out.scheduler.account, out.container.image, out.storage.hf_cache) == (
        "p9",
        "/p/v.sif",
        "/p/hf",
    )
    assert site.scheduler.account is None  # the loaded site is not changed
    with pytest.raises(UsageError, match="--venv: .*container.runtime is 'apptainer'"):
        sites.apply_overrides(site, venv="/opt/venv")
    local = sites.load_site("local")
    with pytest.raises(UsageError, match="--image: .*container.runtime is 'none'"):
        sites.apply_overrides(local, image="/x.sif")


def test_render_takes_image_venv_and_hf_cache_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["render", "--site", "meluxina", "--model", "org/m", "--account", "p1"]
    code, out, err = run_cli(args + ["--image", "/p/v.sif", "--hf-cache", "/p/hf"], capsys)
    assert code == 0, err
    assert "/p/v.sif" in out and "HF_HOME=/p/hf" in out and "--account=p1" in out
    code, out, err = run_cli(
        ["render", "--site", "local", "--model", "org/m", "--venv", "/opt/v"], capsys
    )
    assert code == 0 and "/opt/v/bin/vllm" in out


def test_sites_show_says_where_each_value_came_from(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = user_file(home, "name: meluxina\nscheduler: {account: p200123}\n")
    code, out, err = run_cli(["sites", "show", "meluxina", "--image", "/p/v.sif"], capsys)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if not line.startswith("#")}
    assert lines["scheduler.account"].endswith(f"# user: {path}:2")
    assert re.search(r"# shipped: .*site_configs/meluxina.yaml:\d+$", lines["node.gpus"])
    assert lines["container.image"].endswith("# option: --image")
    assert lines["engine.port"].endswith("# default")


# ---------------------------------------------------------------- defect 7: must-have values


def test_submit_names_every_missing_value_before_contacting_the_cluster(
    no_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["submit", "--site", "meluxina", "--model", "org/m"], capsys)
    assert code == 2 and "Traceback" not in err and "cluster was contacted" not in err
    assert "scheduler.account is not set" in err and "--account" in err
    assert "scheduler: {account: " in err and "~/.config/hpcserve/sites/meluxina.yaml" in err
    assert "container.image is not set" in err and "apptainer pull " in err and PIN in err
    assert "--image" in err


def test_submit_dry_run_also_stops_before_the_cluster(
    no_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["submit", "--dry-run", "--site", "meluxina", "--model", "org/m", "--account", "p1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "container.image is not set" in err
    assert "scheduler.account" not in err  # --account supplied it


def test_an_account_given_as_sbatch_arg_counts_as_the_account(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["render", "--site", "meluxina", "--model", "org/m", "--image", "/p/v.sif"]
    code, out, err = run_cli([*args, "--sbatch-arg", "account=p200123"], capsys)
    assert code == 0 and "#SBATCH --account=p200123" in out
    assert "scheduler.account" not in err


def test_render_warns_about_missing_values(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["render", "--site", "meluxina", "--model", "org/m", "--image", "/p/v.sif"]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and out.startswith("#!")
    assert "warning: meluxina: scheduler.account is not set" in err and "--account" in err


def test_render_without_the_image_says_which_pull_to_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(["render", "--site", "leonardo", "--model", "org/m"], capsys)
    assert code == 2 and out == ""
    assert "error: leonardo: container.image is not set" in err
    assert f"singularity pull ~/hpcserve/vllm-openai-v0.33.0.sif {PIN}" in err


def test_missing_values_of_each_shipped_site() -> None:
    missing = {
        p.stem: [m.field for m in sites.missing_values(sites.load_site(p.stem))] for p in SHIPPED
    }
    assert missing["local"] == []
    assert missing["meluxina"][:2] == ["scheduler.account", "container.image"]
    assert "container.venv" in missing["perlmutter"]
    for name in ("leonardo", "juwels-booster", "snellius"):
        assert "container.image" in missing[name]


def test_one_pinned_image_everywhere() -> None:
    assert sites.PINNED_IMAGE == PIN
    assert f"From: {PIN.removeprefix('docker://')}" in (REPO / "apptainer/vllm.def").read_text()
    readme = (REPO / "apptainer/README.md").read_text()
    assert set(re.findall(r"docker://vllm/vllm-openai:\S+", readme)) == {PIN}
    for path in SHIPPED:
        data = yaml.safe_load(path.read_text())
        if data.get("container", {}).get("runtime", "apptainer") == "none":
            continue
        text = path.read_text()
        assert set(re.findall(r"docker://vllm/vllm-openai:\S+", text)) == {PIN}, path.name


def test_gpu_sites_state_whether_compute_nodes_are_offline() -> None:
    for path in SHIPPED:
        data = yaml.safe_load(path.read_text())
        storage = data.get("storage") or {}
        assert "offline" in storage or "storage.offline" in data.get("unconfirmed", []), path.name
