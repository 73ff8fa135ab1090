"""``hpcserve lab`` where it needs neither root nor a running lab: ``lab status`` of a lab
that is down, its state and cache directories in tmp_path, and ``lab up``'s argument check.
Nothing here starts, stops or looks at the real lab (see tests/test_lab.py for that)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cliutil import run_main

from hpcserve.lab import config


@pytest.fixture
def lab_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The lab's layout, as the CLI makes it, rooted in tmp_path: (state dir, cache dir)."""
    state, cache = tmp_path / "state", tmp_path / "cache"
    real = config.LabLayout

    def layout(**kw: object) -> config.LabLayout:
        where: dict[str, object] = {"state_dir": state, "cache_dir": cache, "hostname": "labhost"}
        return real(**{**where, **kw})  # type: ignore[arg-type]

    monkeypatch.setattr(config, "LabLayout", layout)
    return state, cache


def test_status_of_a_lab_never_brought_up(lab_dirs, capsys):
    state, _cache = lab_dirs
    code, out, err = run_main(capsys, "lab", "status")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "lab: down",
        f"login: root@127.0.0.1:2222 -i {state / 'login' / 'id_ed25519'}",
        f"       known_hosts {state / 'login' / 'known_hosts'}",
        "model: (not made yet: hpcserve lab up)",
        "venv:  (not installed yet: hpcserve lab up)",
    ]


def test_status_of_a_stopped_lab_lists_its_nodes_as_absent(lab_dirs, capsys):
    state, cache = lab_dirs
    state.mkdir()
    (state / "nodes").write_text("3\n")  # brought up with 3 nodes, nothing running now
    (cache / "models" / "tiny-llama").mkdir(parents=True)
    (cache / "models" / "tiny-llama" / "config.json").write_text("{}")
    (cache / "vllm-venv" / "bin").mkdir(parents=True)
    (cache / "vllm-venv" / "bin" / "vllm").write_text("")
    code, out, _ = run_main(capsys, "lab", "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "lab: down"
    assert [ln.split() for ln in lines[1:4]] == [
        ["node1", "10.77.0.11", "absent"],
        ["node2", "10.77.0.12", "absent"],
        ["node3", "10.77.0.13", "absent"],
    ]
    assert f"model: {cache / 'models' / 'tiny-llama'}" in lines
    assert f"venv:  {cache / 'vllm-venv'}" in lines
    assert not any(ln.startswith("export SLURM_CONF=") for ln in lines)  # only when up


def test_status_json(lab_dirs, capsys):
    state, cache = lab_dirs
    code, out, _ = run_main(capsys, "lab", "status", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["up"] is False and d["nodes"] == [] and d["slurm_conf"] is None
    assert d["state_dir"] == str(state) and d["cache_dir"] == str(cache)
    assert d["jobs_dir"] == str(state / "jobs")


@pytest.mark.parametrize("nodes", ["0", "51"])
def test_up_refuses_a_node_count_out_of_bounds_before_doing_anything(lab_dirs, capsys, nodes):
    state, cache = lab_dirs
    code, out, err = run_main(capsys, "lab", "up", "--nodes", nodes)
    assert (code, out) == (2, "")
    assert err == f"error: --nodes must be between 1 and 50, got {nodes}\n"
    assert not state.exists() and not cache.exists()


def test_lab_without_a_subcommand_shows_its_commands(capsys):
    code, _out, err = run_main(capsys, "lab")
    assert code == 2
    for name in ("up", "down", "status"):
        assert f"  {name} " in err
