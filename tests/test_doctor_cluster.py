"""`hpcserve doctor --site local` on the real lab (tests/conftest.py's lab_cluster), and one
broken set-up per check, each made with a user-site override of `local` ($HPCSERVE_SITES) or,
for the blocked port, a firewall rule inside the head node's namespace: each must fail at its
own check with the fix named. Run by the lead on the lab; never by helpers.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cliutil import REPO, run_hpcserve

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HEAD_NS = "hpcs-node1"  # the batch step (the head) runs on the allocation's first node


def doctor(*args: str, timeout: float = 600) -> tuple[int, dict[str, Any], str]:
    p = run_hpcserve("doctor", "--site", "local", "--json", *args, timeout=timeout)
    try:
        data: dict[str, Any] = json.loads(p.stdout)
    except ValueError:
        pytest.fail(f"doctor printed no JSON (exit {p.returncode}): {p.stdout}{p.stderr}")
    return p.returncode, data, p.stderr


def checks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["checks"]}


def first_failure(data: dict[str, Any]) -> dict[str, Any]:
    failed = [c for c in data["checks"] if c["status"] == "fail"]
    assert failed, json.dumps(data, indent=2)
    return failed[0]


def probe_job_gone(data: dict[str, Any]) -> None:
    """The probe job, if one ran, is no longer in the queue."""
    alloc = data.get("allocation")
    if not alloc:
        return
    out = subprocess.run(
        ["squeue", "-h", "-j", alloc["job_id"], "-o", "%T"], capture_output=True, text=True
    ).stdout.split()
    assert not set(out) & {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING"}, out


@pytest.fixture
def override(
    lab_cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[dict[str, Any]], None]:
    """Lay a user file for site `local` over the shipped one (fields given replace theirs)."""

    def write(fields: dict[str, Any]) -> None:
        path = tmp_path / "sites" / "local.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump({"name": "local", **fields}))
        monkeypatch.setenv("HPCSERVE_SITES", str(path.parent))

    return write


def test_doctor_local_passes_with_gloo_between_the_node_namespaces(
    lab_cluster: dict[str, Any],
) -> None:
    code, data, err = doctor("--model", lab_cluster["model"])
    assert code == 0, json.dumps(data, indent=2) + err
    c = checks(data)
    assert all(ch["status"] in ("pass", "skip") for ch in data["checks"])
    assert c["login node"]["status"] == "pass" and "127.0.0.1:2222" in c["login node"]["detail"]
    assert c["vLLM runtime"]["detail"].startswith("vLLM 0.32.0")
    assert c["HF cache"]["status"] == "pass"
    assert c["head interface"]["detail"] == "eth0: node 0 10.77.0.11, node 1 10.77.0.12"
    assert c["shared job directory"]["status"] == "pass"
    assert c["TCP to the head"]["detail"].startswith("1 worker(s) reached 10.77.0.11")
    assert c["collective"]["detail"].startswith("gloo all_reduce across 2 node(s) is correct")
    assert c["NCCL transport"]["status"] == "skip"
    assert c["all_reduce bandwidth"]["detail"].startswith("gloo busbw: ")
    assert data["allocation"]["nodes"] == 2 and data["allocation"]["state"] == "COMPLETED"
    # the target is under 2 minutes; printed for the lead, not asserted (no timing asserts)
    print(f"doctor --site local took {data['wall_s']} s")
    probe_job_gone(data)


def test_venv_that_does_not_exist(override: Callable[[dict[str, Any]], None]) -> None:
    override({"container": {"venv": "/var/cache/hpcserve-lab/no-such-venv"}})
    code, data, _ = doctor()
    fail = first_failure(data)
    assert code == 1 and fail["name"] == "vLLM runtime"
    assert "no-such-venv does not exist" in fail["detail"] and "--venv" in fail["fix"]
    assert checks(data)["probe job"]["status"] == "skip"
    probe_job_gone(data)


def test_module_that_does_not_load(override: Callable[[dict[str, Any]], None]) -> None:
    override({"modules": ["hpcserve-no-such-module/1.0"]})
    code, data, _ = doctor()
    fail = first_failure(data)
    assert code == 1 and fail["name"] == "module lines"
    assert "hpcserve-no-such-module/1.0" in fail["detail"] and "module" in fail["fix"]
    probe_job_gone(data)


def test_head_interface_that_the_nodes_do_not_have(
    override: Callable[[dict[str, Any]], None],
) -> None:
    override({"network": {"head_interface": "hpcs-eth9"}})
    code, data, _ = doctor()
    fail = first_failure(data)
    assert code == 1 and fail["name"] == "head interface"
    assert "hpcs-eth9 has no IPv4 address on node 0" in fail["detail"]
    assert "eth0 10.77.0.11" in fail["detail"] and "network.head_interface" in fail["fix"]
    probe_job_gone(data)


def _firewall() -> tuple[list[str], list[str]]:
    """(add, remove) argv of a rule rejecting TCP to the launcher's ports (8000-8099 API,
    9000-9099 master for the lab's engine.port 8000) inside the head node's namespace."""
    ns = ["ip", "netns", "exec", HEAD_NS]
    if shutil.which("iptables"):
        rule = [
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "8000:9099",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
        return [*ns, "iptables", "-I", *rule], [*ns, "iptables", "-D", *rule]
    if shutil.which("nft"):
        script = (
            "add table inet hpcserve_doctor_test\n"
            "add chain inet hpcserve_doctor_test input { type filter hook input priority 0 ; }\n"
            "add rule inet hpcserve_doctor_test input tcp dport 8000-9099 reject with tcp reset\n"
        )
        return [*ns, "sh", "-c", f"printf '{script}' | nft -f -"], [
            *ns, "nft", "delete", "table", "inet", "hpcserve_doctor_test",
        ]  # fmt: skip
    pytest.fail("neither iptables nor nft is installed: the port test needs one")


@pytest.fixture
def blocked_ports(lab_cluster: dict[str, Any]) -> Iterator[None]:
    add, remove = _firewall()
    subprocess.run(add, check=True, capture_output=True, text=True)
    try:
        yield
    finally:
        subprocess.run(remove, check=False)


def test_launcher_ports_blocked_between_the_nodes(blocked_ports: None) -> None:
    code, data, _ = doctor()
    fail = first_failure(data)
    assert code == 1 and fail["name"] == "TCP to the head"
    assert re.match(
        r"node 1 cannot connect to the head 10\.77\.0\.11:\d+ \(api port\)", fail["detail"]
    )
    assert "API 8000-8099, master 9000-9099" in fail["fix"]
    assert checks(data)["collective"]["status"] == "skip"
    probe_job_gone(data)


def test_partition_the_scheduler_rejects(override: Callable[[dict[str, Any]], None]) -> None:
    override({"scheduler": {"partition": "hpcserve-no-such-partition"}})
    code, data, _ = doctor()
    fail = first_failure(data)
    assert code == 1 and fail["name"] == "sbatch --test-only"
    assert "invalid partition" in fail["detail"].lower() and "sinfo -s" in fail["fix"]
    assert data["allocation"] is None  # no probe job submitted


def test_account_the_scheduler_rejects(override: Callable[[dict[str, Any]], None]) -> None:
    # needs the lab's slurmdbd with AccountingStorageEnforce=associations
    override({"scheduler": {"account": "hpcserve-no-such-account"}})
    code, data, _ = doctor()
    fail = first_failure(data)
    assert code == 1 and fail["name"] == "sbatch --test-only"
    assert "account" in fail["detail"].lower() and "sacctmgr" in fail["fix"]


def test_ctrl_c_cancels_the_probe_job(lab_cluster: dict[str, Any]) -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "hpcserve", "doctor", "--site", "local"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    job_id = None
    deadline = time.monotonic() + 300
    while job_id is None and time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        m = re.search(r"probe job (\d+) submitted", line)
        job_id = m.group(1) if m else None
    assert job_id, "doctor never submitted its probe job"
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    assert p.returncode == 130
    probe_job_gone({"allocation": {"job_id": job_id}})
