"""Site configs: loading, validation messages, search order, and the `hpcserve sites` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cliutil import run_main

from hpcserve.errors import ConfigError, UsageError
from hpcserve.sites import docs as sitedocs
from hpcserve.sites import loader as sites
from hpcserve.sites.schema import Site
from hpcserve.sites.walk import dotted_names

REPO = Path(__file__).resolve().parent.parent
DATA = Path("tests/data/sites")  # relative: messages name files as the user typed them
SHIPPED = sorted((REPO / "site_configs").glob("*.yaml"))

MINIMAL = """\
name: {name}
description: {description}
login: {{host: login.example.org}}
node: {{gpus: 4, gpu_model: A100-40GB, gpu_memory_gb: 40}}
container: {{image: /images/vllm.sif}}
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the repo root with a fake HOME and no $HPCSERVE_SITES."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(sites.ENV_VAR, raising=False)
    monkeypatch.chdir(REPO)
    return home


def problems_of(path: Path | str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        sites.load_site_file(path)
    return e.value.problems


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `hpcserve ARGS` in-process through the real entry point; (exit code, out, err)."""
    return run_main(capsys, *args)


def write_site(directory: Path, file: str, name: str, description: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file
    path.write_text(MINIMAL.format(name=name, description=description))
    return path


# ---------------------------------------------------------------- shipped sites


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_site_validates(path: Path) -> None:
    site = sites.load_site_file(path)
    assert site.name == path.stem  # one file per site, named after it
    if site.name != "local":  # the lab's own cluster has no public facts to cite
        assert site.sources, "a shipped site says where its facts come from"
    assert site.node.gpus >= 1 and site.description


def test_at_least_four_shipped_gpu_sites() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"meluxina", "leonardo", "juwels-booster", "perlmutter", "snellius"} <= names


def test_meluxina_facts() -> None:
    site = sites.load_site("meluxina")
    assert (site.node.gpus, site.node.gpu_model) == (4, "A100-40GB")
    from hpcserve.plan.planner import node_shape

    assert node_shape(site).gpu_memory_mib == 40 * 1024  # from the GPU table
    assert (site.login[0].host, site.login[0].port) == ("login.lxp.lu", 8822)
    assert site.container.runtime == "apptainer" and site.container.gpu_flag == "--nvccli"
    assert site.modules == ["Apptainer"]
    assert site.scheduler.partition == "gpu"


def test_scan_sites_has_shipped_sites_and_paths() -> None:
    scan = sites.scan_sites()
    found = scan.sites
    assert not scan.problems
    assert set(found) == {p.stem for p in SHIPPED}
    assert all(Path(s.path or "").is_file() for s in found.values())


# ---------------------------------------------------------------- one message per problem


def test_unknown_key_did_you_mean_and_missing_field() -> None:
    assert problems_of(DATA / "unknown_key.yaml") == [
        "tests/data/sites/unknown_key.yaml:4: node.gpus: required field is missing "
        "(expected an integer >= 1)",
        "tests/data/sites/unknown_key.yaml:5: node.gpu: unknown key (did you mean 'gpus'?)",
    ]


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    text = MINIMAL.format(name="x", description="y") + "flavour: vanilla\n"
    with pytest.raises(ConfigError) as e:
        sites.parse_site(text, "x.yaml")
    (line,) = e.value.problems
    assert line.startswith("x.yaml:6: flavour: unknown key (valid keys: name, node, description,")


def test_top_level_did_you_mean() -> None:
    text = MINIMAL.format(name="x", description="y") + "scheduller: {partition: gpu}\n"
    with pytest.raises(ConfigError) as e:
        sites.parse_site(text, "x.yaml")
    assert e.value.problems == ["x.yaml:6: scheduller: unknown key (did you mean 'scheduler'?)"]


def test_wrong_types() -> None:
    f = "tests/data/sites/wrong_types.yaml"
    assert problems_of(DATA / "wrong_types.yaml") == [
        f"{f}:4: login[0].port: expected an integer, found a list",
        f"{f}:6: node.gpus: expected an integer, found text 'four'",
        f"{f}:8: node.gpu_memory_gb: expected a number, found text '40'",
        f"{f}:10: scheduler.exclusive: expected true/false, found integer 1",
        f"{f}:12: modules: expected a list of text, found a mapping",
    ]


def test_choices_and_min() -> None:
    f = "tests/data/sites/choices_min.yaml"
    assert problems_of(DATA / "choices_min.yaml") == [
        f"{f}:5: node.gpus: expected a value >= 1, found 0",
        f"{f}:9: scheduler.submit: expected one of 'auto', 'local', 'ssh', found 'sssh' "
        "(did you mean 'ssh'?)",
        f"{f}:12: container.gpu_flag: expected one of '--nv', '--nvccli', '--rocm', '', "
        "found '--nvcli' (did you mean '--nvccli'?)",
    ]


def test_missing_required_fields() -> None:
    f = "tests/data/sites/missing_required.yaml"
    assert problems_of(DATA / "missing_required.yaml") == [
        f"{f}:1: name: required field is missing (expected text)",
        f"{f}:4: node.gpu_model: required field is missing (expected text)",
    ]


def test_cross_field_rules() -> None:
    f = "tests/data/sites/cross_field.yaml"
    assert problems_of(DATA / "cross_field.yaml") == [
        f"{f}:1: login: at least one login host is needed unless scheduler.submit is 'local'",
        f"{f}:7: scheduler.time: expected a Slurm time such as 01:00:00 or 2-00:00:00, "
        "found '1 hour'",
        f"{f}:9: scheduler.extra_sbatch[0]: expected an sbatch option such as "
        "'--hint=nomultithread' (without '#SBATCH'), found '#SBATCH --hint=nomultithread'",
        f"{f}:10: container.image: required when container.runtime is 'apptainer' "
        "(the .sif image on the cluster)",
        f"{f}:12: container.venv: only used when container.runtime is 'none', not 'apptainer'",
        f"{f}:15: network.nccl_env.IB_HCA: expected an environment variable name "
        "starting with NCCL_",
        f"{f}:17: unconfirmed[0]: 'node.gpu_memory' is not a site field "
        "(did you mean 'node.gpu_memory_gb'?)",
    ]


def test_cross_field_rules_run_alongside_type_errors() -> None:
    f = "tests/data/sites/mixed.yaml"
    assert problems_of(DATA / "mixed.yaml") == [
        f"{f}:1: name: expected letters, digits, '.', '_' or '-', found 'x y'",
        f"{f}:2: node.gpus: expected an integer, found text 'four'",
        f"{f}:3: container.image: not used when container.runtime is 'none' "
        "(remove it, or set a runtime)",
        f"{f}:4: login[1]: expected a mapping, found integer 5",
    ]


def test_runtime_none_image_is_an_error() -> None:
    text = MINIMAL.format(name="x", description="y").replace(
        "container: {image: /images/vllm.sif}", "container: {runtime: none, image: /i.sif}"
    )
    with pytest.raises(ConfigError) as e:
        sites.parse_site(text, "x.yaml")
    assert e.value.problems == [
        "x.yaml:5: container.image: not used when container.runtime is 'none' "
        "(remove it, or set a runtime)"
    ]


def test_yaml_syntax_error_is_one_line_with_line_and_column() -> None:
    assert problems_of(DATA / "syntax_error.yaml") == [
        "tests/data/sites/syntax_error.yaml:5:1: YAML syntax error: did not find expected "
        "',' or ']' (while parsing a flow sequence at line 4, column 14)"
    ]


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("empty.yaml", "1: the file is empty (expected a mapping with 'name' and 'node')"),
        (
            "not_a_mapping.yaml",
            "1: expected a mapping of site settings at the top level, found a list",
        ),
        ("duplicate_key.yaml", "8: node.gpus: duplicate key (first given on line 5)"),
    ],
)
def test_file_level_problems(file: str, expected: str) -> None:
    assert problems_of(DATA / file) == [f"tests/data/sites/{file}:{expected}"]


def test_valid_fixtures_load() -> None:
    local = sites.load_site_file(DATA / "local_venv.yaml")
    assert local.container.venv == "/opt/vllm-venv" and local.login == []
    # Text fields keep numbers as written: YAML 1.1 would read 01:00:00 as 3600.
    assert local.scheduler.time == "01:00:00" and local.scheduler.account == "12345"
    single = sites.load_site_file(DATA / "single_login.yaml")
    assert [(h.host, h.port) for h in single.login] == [("login.example.org", 8822)]
    assert single.path == str((REPO / DATA / "single_login.yaml").resolve())


def test_defaults_are_filled() -> None:
    site = sites.parse_site(MINIMAL.format(name="x", description="y"), "x.yaml")
    assert site.scheduler.time == "01:00:00" and site.scheduler.submit == "auto"
    assert site.container.runtime == "apptainer" and site.engine.port == 8000
    assert site.login[0].port == 22


def test_missing_file_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="nope.yaml: no such site file"):
        sites.load_site_file("nope.yaml")


# ---------------------------------------------------------------- lookup and search order


def test_unknown_site_name_lists_known_sites() -> None:
    with pytest.raises(UsageError) as e:
        sites.load_site("meluxia")
    message = str(e.value)
    assert "unknown site 'meluxia' (did you mean 'meluxina'?)" in message
    assert "known sites: " + ", ".join(sorted(p.stem for p in SHIPPED)) in message


def test_load_site_accepts_a_path() -> None:
    assert sites.load_site(str(DATA / "single_login.yaml")).name == "single-login"


def test_user_dir_overrides_shipped_and_env_overrides_user(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_dir = isolated / ".config" / "hpcserve" / "sites"
    write_site(user_dir, "mine.yaml", "meluxina", "from the user dir")
    write_site(user_dir, "extra.yaml", "extra", "only in the user dir")
    assert sites.load_site("meluxina").description == "from the user dir"
    assert sites.load_site("leonardo").description.startswith("Leonardo")  # untouched

    env_a = write_site(tmp_path / "a", "x.yaml", "meluxina", "from env dir a")
    env_b = write_site(tmp_path / "b", "y.yaml", "meluxina", "from env file b")
    monkeypatch.setenv(sites.ENV_VAR, os.pathsep.join([str(env_a.parent), str(env_b)]))
    assert sites.load_site("meluxina").description == "from env file b"  # last entry wins
    assert sites.load_site("extra").description == "only in the user dir"

    monkeypatch.setenv(sites.ENV_VAR, str(env_a.parent))
    found = sites.scan_sites().sites
    assert found["meluxina"].description == "from env dir a"
    assert found["meluxina"].path == str(env_a.resolve())


def test_missing_env_entry_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(sites.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=r"\$HPCSERVE_SITES names .*missing.*does not exist"):
        sites.scan_sites()


def test_broken_user_file_is_reported_by_file(isolated: Path) -> None:
    user_dir = isolated / ".config" / "hpcserve" / "sites"
    user_dir.mkdir(parents=True)
    (user_dir / "bad.yaml").write_text("name: bad\nnode: {gpus: 4}\n")
    problems = sites.scan_sites().problems
    assert [p.split(": ", 2)[1] for p in problems] == [
        "container.image",
        "login",
        "node.gpu_model",
    ]
    assert all(p.startswith(str(user_dir / "bad.yaml")) for p in problems)


def test_broken_file_blocks_only_the_site_it_defines(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_dir = isolated / ".config" / "hpcserve" / "sites"
    user_dir.mkdir(parents=True)
    (user_dir / "mine.yaml").write_text("name: mine\nnode: {gpus: many}\n")
    with pytest.warns(sites.SiteWarning, match=r"site 'mine' is skipped: .*mine\.yaml"):
        assert sites.load_site("meluxina").name == "meluxina"  # unaffected, with a warning
    with pytest.raises(ConfigError) as e:
        sites.load_site("mine")
    assert any(
        p.endswith("mine.yaml:2: node.gpus: expected an integer, found text 'many'")
        for p in e.value.problems
    )

    # A broken override of a shipped site blocks that site (the user meant to change it) ...
    (user_dir / "meluxina.yaml").write_text("name: meluxina\nnode: {gpus: 0}\n")
    with pytest.raises(ConfigError, match="node.gpus: expected a value >= 1, found 0"):
        sites.load_site("meluxina")
    # ... until a later valid file of that name replaces it.
    write_site(tmp_path / "env", "m.yaml", "meluxina", "fixed in env")
    monkeypatch.setenv(sites.ENV_VAR, str(tmp_path / "env"))
    with pytest.warns(sites.SiteWarning, match="site 'mine' is skipped"):
        assert sites.load_site("meluxina").description == "fixed in env"


def test_file_whose_name_is_unreadable_breaks_the_site_of_its_file_name(isolated: Path) -> None:
    user_dir = isolated / ".config" / "hpcserve" / "sites"
    user_dir.mkdir(parents=True)
    (user_dir / "broken.yaml").write_text("name: [oops\n")
    with pytest.warns(sites.SiteWarning, match="site 'broken' is skipped: .*broken.yaml:2:1"):
        assert sites.load_site("leonardo").name == "leonardo"
    with pytest.raises(ConfigError, match="broken.yaml:2:1: YAML syntax error"):
        sites.load_site("broken")


def test_same_name_twice_in_one_directory_is_an_error(tmp_path: Path, monkeypatch) -> None:
    write_site(tmp_path / "d", "one.yaml", "twin", "first")
    write_site(tmp_path / "d", "two.yaml", "twin", "second")
    monkeypatch.setenv(sites.ENV_VAR, str(tmp_path / "d"))
    assert any("site 'twin' is also defined in" in p for p in sites.scan_sites().problems)


# ---------------------------------------------------------------- CLI


def test_cli_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["sites", "validate", "site_configs/meluxina.yaml"], capsys)
    assert (code, out, err) == (0, "OK site_configs/meluxina.yaml\n", "")


def test_cli_validate_bad_exits_2_with_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        ["sites", "validate", "site_configs/leonardo.yaml", str(DATA / "wrong_types.yaml")],
        capsys,
    )
    assert code == 2
    assert out == "OK site_configs/leonardo.yaml\n"
    lines = err.splitlines()
    assert len(lines) == 5 and all(
        x.startswith("error: tests/data/sites/wrong_types.yaml:") for x in lines
    )
    assert "Traceback" not in err


def test_cli_validate_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["sites", "validate", "site_configs"], capsys)
    assert code == 0 and out.count("OK ") == len(SHIPPED)


def test_cli_validate_subprocess_no_traceback() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "hpcserve", "sites", "validate", str(DATA / "syntax_error.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert p.returncode == 2
    assert p.stderr.startswith("error: tests/data/sites/syntax_error.yaml:5:1: YAML syntax error")
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_cli_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["sites", "list", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {p.stem for p in SHIPPED}
    mel = by_name["meluxina"]
    assert (mel["gpus_per_node"], mel["gpu_model"], mel["origin"]) == (4, "A100-40GB", "shipped")
    assert mel["path"].endswith("meluxina.yaml") and mel["description"]


def test_cli_list_shows_good_sites_and_fails_on_broken(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_dir = isolated / ".config" / "hpcserve" / "sites"
    user_dir.mkdir(parents=True)
    (user_dir / "bad.yaml").write_text("name: bad\n")
    code, out, err = run_cli(["sites", "list"], capsys)
    assert code == 2 and "meluxina" in out
    assert "bad.yaml:1: node: required field is missing" in err and "Traceback" not in err


def test_cli_show_marks_unconfirmed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["sites", "show", "juwels-booster"], capsys)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("node.memory_gb "))
    assert line.endswith("# unconfirmed")
    gpus = next(x for x in out.splitlines() if x.startswith("node.gpus "))
    assert "unconfirmed" not in gpus
    assert any(x.startswith("engine.port ") and "8000" in x for x in out.splitlines())  # default


def test_cli_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["sites", "show", "meluxina", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["container"]["gpu_flag"] == "--nvccli"
    assert data["scheduler"]["submit"] == "auto"  # default filled in
    assert "container.image" in data["must_set"]  # no guessed path: each user supplies it
    assert any("container.image is not set" in m for m in data["missing"])


def test_cli_show_unknown_site_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sites", "show", "nowhere"], capsys)
    assert code == 2
    assert err.startswith("error: unknown site 'nowhere'") and "known sites:" in err


# ---------------------------------------------------------------- schema reference


def test_committed_docs_match_generated_reference() -> None:
    committed = (REPO / "docs" / "site-config.md").read_text()
    assert committed == sitedocs.markdown(), (
        "run: hpcserve sites schema --markdown > docs/site-config.md"
    )


def test_reference_covers_every_schema_field(capsys: pytest.CaptureFixture[str]) -> None:
    markdown = sitedocs.markdown()
    for dotted in dotted_names(Site):
        assert f"| `{dotted}` |" in markdown
    code, out, _ = run_cli(["sites", "schema"], capsys)
    assert code == 0 and "node.gpus  (integer, >= 1; default required)" in out
    assert "`path`" not in markdown  # the loader's own field is not for site files


def test_sites_cli_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from hpcserve.cli import main\n"
        "main(['sites', 'list', '--json'])\n"
        "bad = [m for m in ('paramiko', 'requests') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert p.returncode == 0, p.stderr
