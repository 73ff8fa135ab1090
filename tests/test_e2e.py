"""The whole user path on the local lab, with real slurmctld/slurmd/sshd/vLLM processes.

`hpcserve submit --site local` (through the login node's sshd) -> the product's launcher starts
the head API server and a headless worker on two nodes -> `wait` -> `tunnel` -> `query` through
the tunnel -> `cancel` ends every vLLM process on both nodes. Also: a second job at the same
time gets other ports; a worker killed mid-run ends its job (no hang) and `status` names the
node; the planner's KV-cache prediction against the line vLLM printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliutil import hpcserve_ok, status_json

from hpcserve.plan.modelinfo import load_model_info
from hpcserve.plan.sizing import parse_vllm_kv_log, predict_kv_cache_tokens

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


hpcserve = hpcserve_ok


status = status_json


def vllm_processes(job_id: str, node: int | None = None) -> list[int]:
    """PIDs of vLLM processes that belong to SLURM job ``job_id`` (optionally one node's)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() not in env or b"vllm" not in cmd:
            continue
        if node is not None and f"SLURM_NODEID={node}".encode() not in env:
            continue
        pids.append(int(d.name))
    return pids


def node_log(job_dir: str, node: int) -> str:
    return Path(job_dir, f"node-{node}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def job(lab_cluster: dict[str, Any], lab_state_dir: Path) -> Iterator[dict[str, Any]]:
    """A job submitted like a user does, waited until ready; cancelled at the end if still up."""
    model = lab_cluster["model"]
    sub = json.loads(
        hpcserve(
            "submit", "--site", "local", "--nodes", "2", "--model", model, "--name", "e2e", "--json"
        ).stdout
    )
    info = {"job_id": str(sub["job_id"]), "job_dir": sub["job_dir"], "model": model}
    w = hpcserve("wait", info["job_id"], "--timeout", "900", timeout=960, check=False)
    info["wait"] = w
    yield info
    hpcserve("cancel", info["job_id"], check=False)


def test_submit_went_through_the_login_node_and_starts_head_and_headless_worker(
    job: dict[str, Any],
) -> None:
    assert job["wait"].returncode == 0, job["wait"].stderr
    st = status(job["job_id"])
    rec = st["record"]
    assert rec["remote"] is True  # sbatch ran on the login node, through SSH
    assert (rec["nodes"], rec["tp"], rec["pp"]) == (2, 2, 1)  # the lab spans nodes with TP
    assert rec["head_addr"] == "10.77.0.11"  # node 0's own address in its namespace
    assert job["wait"].stdout.strip() == f"http://10.77.0.11:{rec['api_port']}"
    launcher = Path(job["job_dir"], "launcher.sbatch").read_text()
    assert "--headless" in launcher and "--node-rank" in launcher
    head, worker = node_log(job["job_dir"], 0), node_log(job["job_dir"], 1)
    assert "Application startup complete" in head
    assert "Application startup complete" not in worker  # headless: no API server there
    endpoint = json.loads(Path(job["job_dir"], "endpoint.json").read_text())
    assert endpoint["head_addr"] == "10.77.0.11" and endpoint["api_port"] == rec["api_port"]
    assert endpoint["head_host"] == "node1"  # the node's own hostname (UTS namespace)


def test_each_node_step_gets_the_cpus_the_launcher_asks(job: dict[str, Any]) -> None:
    """sbatch --cpus-per-task=2 (the lab node's cores for its one GPU) reaches each node's srun
    task through SRUN_CPUS_PER_TASK (SLURM >= 22.05 does not pass it on by itself), and each
    node's vLLM is bound to its own core of the two (VLLM_CPU_OMP_THREADS_BIND)."""
    launcher = Path(job["job_dir"], "launcher.sbatch").read_text()
    assert "#SBATCH --cpus-per-task=2" in launcher
    assert "#SBATCH --gpus-per-node=1" in launcher
    for rank, host, core in ((0, "node1", "0"), (1, "node2", "1")):
        log = node_log(job["job_dir"], rank)
        assert f"node {rank} of 2 on {host} (10.77.0.1{rank + 1}, 2 CPUs)" in log
        assert f"VLLM_CPU_OMP_THREADS_BIND='{core}'" in log


def test_tunnel_then_query_returns_a_completion(job: dict[str, Any]) -> None:
    jid = job["job_id"]
    up = hpcserve("tunnel", jid, "--background", timeout=120)
    m = re.search(r"OpenAI base URL: (http://127\.0\.0\.1:(\d+)/v1)", up.stdout + up.stderr)
    assert m, up.stdout + up.stderr
    try:
        q = hpcserve("query", jid, "Hello", "--max-tokens", "8", "--json", timeout=300)
        answer = json.loads(q.stdout)
        assert answer["choices"][0]["message"]["content"] or answer["usage"]["completion_tokens"]
        assert answer["usage"]["completion_tokens"] > 0
    finally:
        hpcserve("tunnel", "--stop", jid, check=False)
    # With no tunnel running (the head is reachable from here in the lab, as from a login
    # node), query finds its own way.
    q = hpcserve("query", jid, "Hello again", "--max-tokens", "4", timeout=300)
    assert q.stdout.strip()


def test_api_key_is_enforced(job: dict[str, Any]) -> None:
    import requests

    rec = status(job["job_id"])["record"]
    url = f"http://{rec['head_addr']}:{rec['api_port']}/v1/models"
    assert requests.get(url, timeout=30).status_code == 401
    key = Path(rec["api_key_file"]).read_text().strip()
    assert oct(Path(rec["api_key_file"]).stat().st_mode & 0o777) == "0o600"
    ok = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert ok.status_code == 200
    # The key is in no process's arguments.
    for pid in vllm_processes(job["job_id"]):
        assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_api_errors_read_as_sentences_against_real_vllm(job: dict[str, Any]) -> None:
    from hpcserve.net.api import ApiError, Client

    rec = status(job["job_id"])["record"]
    url = f"http://{rec['head_addr']}:{rec['api_port']}"
    with pytest.raises(ApiError, match="refused the API key"):
        Client(url, api_key="wrong").models()
    c = Client(url, api_key=Path(rec["api_key_file"]).read_text().strip())
    assert "".join(c.chat_stream([{"role": "user", "content": "hi"}], max_tokens=4))
    with pytest.raises(ApiError, match="context is"):  # the lab serves 2048 tokens
        c.chat([{"role": "user", "content": "word " * 5000}], max_tokens=4)


def test_planner_predicts_the_kv_cache_that_vllm_printed(job: dict[str, Any]) -> None:
    seen = parse_vllm_kv_log(node_log(job["job_dir"], 0))
    assert {"available_bytes", "tokens"} <= set(seen), seen
    info = load_model_info(job["model"])
    pred = predict_kv_cache_tokens(
        info, seen["available_bytes"], tp=2, pp=1,
        max_model_len=int(seen.get("max_model_len", 2048)), device="cpu",
    )  # fmt: skip
    assert abs(pred.tokens - seen["tokens"]) <= 0.10 * seen["tokens"], (pred.tokens, seen)


def test_second_job_gets_other_ports_and_a_killed_worker_ends_it(
    job: dict[str, Any], lab_cluster: dict[str, Any]
) -> None:
    first = status(job["job_id"])["record"]
    sub = json.loads(
        hpcserve(
            "submit", "--site", "local", "--nodes", "2", "--model", lab_cluster["model"], "--json"
        ).stdout
    )
    second = str(sub["job_id"])
    endpoint = Path(sub["job_dir"], "endpoint.json")
    deadline = time.monotonic() + 300
    while not endpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    ep = json.loads(endpoint.read_text())
    assert ep["head_addr"] == first["head_addr"]  # same head node...
    assert ep["api_port"] != first["api_port"]  # ...other ports
    assert ep["master_port"] != first["master_port"]

    # Kill node 1's vLLM once it runs: the job must end, not hang, and say which node.
    deadline = time.monotonic() + 300
    while not (pids := vllm_processes(second, node=1)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pids, "node 1's vLLM never started"
    time.sleep(5)  # let it get going
    for pid in vllm_processes(second, node=1):
        os.kill(pid, signal.SIGKILL)
    w = hpcserve("wait", second, "--timeout", "300", timeout=360, check=False)
    assert w.returncode == 1, w.stdout + w.stderr
    st = status(second)
    assert st["failure"]["node"] == 1, st["failure"]
    assert st["failure"]["cause"] == "process_died", st["failure"]
    deadline = time.monotonic() + 120
    while vllm_processes(second) and time.monotonic() < deadline:
        time.sleep(1)
    assert not vllm_processes(second), "processes of the failed job are left"
    # The first job is unharmed.
    assert status(job["job_id"])["ready"] is True


def test_cancel_ends_every_vllm_process_on_both_nodes(job: dict[str, Any]) -> None:
    jid = job["job_id"]
    assert vllm_processes(jid, node=0) and vllm_processes(jid, node=1)
    c = hpcserve("cancel", jid, timeout=300)
    assert "CANCELLED" in c.stdout
    deadline = time.monotonic() + 60
    while vllm_processes(jid) and time.monotonic() < deadline:
        time.sleep(1)
    assert vllm_processes(jid) == []
    assert status(jid)["state"] == "CANCELLED"
