"""`hpcserve env NAME`: the local tunnel's base URL and the job's key for OpenAI clients."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time

import pytest
from cliutil import run_main

from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.registry import Registry
from hpcserve.net import tunnel as tn
from hpcserve.service.remote import mark_service


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("hpcserve.net.target.lookup_job", lambda ref: (Registry().get(ref), None))
    return tmp_path


def register(job_id: str, name: str, key: str | None, tmp_path, service: bool = False):
    rec = JobRecord(job_id, "lab", "m", 1, 1, 1, f"/jobs/{job_id}", time.time(), False, name=name)
    if key is not None:
        path = tmp_path / f"{job_id}.key"
        path.write_text(key + "\n")
        rec.api_key_file = str(path)
    Registry().add(mark_service(rec, "/jobs/svc") if service else rec)


def tunnel_up(key: str, port: int) -> None:
    tn.write_state(tn.TunnelState(
        job=key, pid=os.getpid(), local_port=port, remote="10.0.0.1:8000",
        url=f"http://127.0.0.1:{port}", via="paramiko", status="up", started_at=time.time(),
    ))  # fmt: skip


def test_env_prints_exports_a_shell_can_eval(state, capsys) -> None:
    register("61", "qwen", "k3y'with quote", state)
    tunnel_up("61", 18061)
    code, out, err = run_main(capsys, "env", "qwen")
    assert code == 0, err
    assert out.splitlines()[0] == "export OPENAI_BASE_URL=http://127.0.0.1:18061/v1"
    shown = subprocess.run(
        ["bash", "-c", out + 'printf "%s\\n%s" "$OPENAI_BASE_URL" "$OPENAI_API_KEY"'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert shown == "http://127.0.0.1:18061/v1\nk3y'with quote"


def test_env_json(state, capsys) -> None:
    register("62", "svc", "key62", state, service=True)
    tunnel_up("62", 18062)  # a service's tunnel is named by its first job, whatever serves now
    code, out, _ = run_main(capsys, "env", "svc", "--json")
    assert code == 0
    assert json.loads(out) == {"base_url": "http://127.0.0.1:18062/v1", "api_key": "key62"}


def test_env_without_a_key_gives_clients_a_placeholder(state, capsys) -> None:
    register("63", "open", None, state)
    tunnel_up("63", 18063)
    _code, out, _ = run_main(capsys, "env", "open")
    assert "export OPENAI_API_KEY=EMPTY" in out
    _code, out, _ = run_main(capsys, "env", "open", "--json")
    assert json.loads(out)["api_key"] is None


def test_env_without_a_tunnel_says_how_to_start_one(state, capsys) -> None:
    register("64", "down", "k", state)
    code, out, err = run_main(capsys, "env", "down")
    assert code == 1 and out == ""
    assert err.strip() == (
        "error: no tunnel runs for down: start one with `hpcserve tunnel down --background`, "
        "then ask again"
    )


def test_env_of_an_unknown_job_is_a_usage_error(state, capsys) -> None:
    code, _out, err = run_main(capsys, "env", "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert shlex.split(err)  # one readable line
