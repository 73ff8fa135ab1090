"""doctor's probe job: the launcher it renders, the node answers, the bandwidth arithmetic,
the checks on what the nodes saw (real answers from an H200 run and from the node script run
here), and the job's lifetime (cancelled on a timeout, not when it ended by itself)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import apptainer_site, venv_site
from doctorfakes import FakeCluster, gloo_answers
from fakes import FakeClock, data

from hpcserve.cluster.slurm import SchedJob
from hpcserve.doctor import probe_checks as pc
from hpcserve.doctor.probe import (
    NodeResult,
    ProbeJob,
    ProbeResult,
    bus_bandwidth,
    parse_node,
    probe_launcher,
    probe_time,
)
from hpcserve.launch.render import render
from hpcserve.launch.request import build_request
from hpcserve.nccl import scan_lines
from hpcserve.sites.schema import Network, Scheduler

H200 = "doctor/gpu-h200-1node"
SITE = venv_site(
    container=dataclasses.replace(venv_site().container, venv="/opt/vllm-venv"),
    network=Network(head_interface="eth0", gloo_socket_ifname="eth0"),
)


def result_of(answers: list[dict], nodes: int | None = None, **kw: object) -> ProbeResult:
    n = len(answers) if nodes is None else nodes
    res = ProbeResult(job_dir="/jobs/doctor-1", nodes=n, **kw)  # type: ignore[arg-type]
    for k in range(n):
        res.answers[k] = parse_node(json.dumps(answers[k]), k) if k < len(answers) else None
    return res


# -- arithmetic and parsing --------------------------------------------------------------------
def test_bus_bandwidth_is_nccl_tests_allreduce_formula() -> None:
    assert bus_bandwidth(1000, 0.5, 2) == (2000.0, 2000.0)  # 2(n-1)/n = 1
    assert bus_bandwidth(1000, 1.0, 4) == (1000.0, 1500.0)  # 2*3/4 = 1.5
    assert bus_bandwidth(1000, 1.0, 1) == (1000.0, 0.0)  # one rank moves nothing
    with pytest.raises(ValueError):
        bus_bandwidth(1000, 0.0, 2)


def test_parse_node_reads_the_h200_answer() -> None:
    a = parse_node(data(H200, "node-0.json"), 0)
    assert a.hostname == "vm" and a.cpus == 16
    assert a.gpus["count"] == 1 and a.gpus["names"] == ["NVIDIA H200"]
    assert a.collective["backend"] == "nccl" and a.collective["correct"] is True


@pytest.mark.parametrize("text", ["[]", '{"cpus": "two"}', "not json"])
def test_parse_node_refuses_what_is_not_an_answer(text: str) -> None:
    with pytest.raises(ValueError):
        parse_node(text, 0)


def test_probe_time_is_five_minutes_or_the_sites_shorter_limit() -> None:
    assert probe_time(SITE) == "00:05:00"  # the site's default is an hour
    short = dataclasses.replace(SITE, scheduler=Scheduler(time="00:02:00"))
    assert probe_time(short) == "00:02:00"


# -- the launcher it renders -------------------------------------------------------------------
def _argv_block(script: str) -> tuple[list[str], list[str]]:
    """(lines outside the per-role argv arrays and the header comment, lines inside them)."""
    outside, inside, in_argv = [], [], False
    for line in script.splitlines():
        if line.strip() == "argv=(":
            in_argv = True
        elif in_argv and line.strip() == ")":
            in_argv = False
        elif in_argv:
            inside.append(line.strip())
        elif not line.startswith("# hpcserve launcher:") and not line.startswith("#SBATCH --time"):
            outside.append(line)
    return outside, inside


def test_probe_launcher_is_the_launcher_with_the_probe_in_vllms_place() -> None:
    job_dir = "/jobs/doctor-1"
    req = build_request(
        SITE, model="hpcserve-doctor-probe", nodes=2, name="hpcserve-doctor", job_dir=job_dir
    )
    vllm_outside, vllm_argv = _argv_block(render(SITE, req))
    probe_outside, probe_argv = _argv_block(probe_launcher(SITE, 2, None, job_dir))
    # modules, environment, address choice, port claim, srun line: the same lines
    assert probe_outside == vllm_outside
    assert vllm_argv[0] == "/opt/vllm-venv/bin/vllm" and "serve" in vllm_argv
    assert probe_argv[:2] == ["/opt/vllm-venv/bin/python3", '"${JOBDIR}"/doctor/node_probe.py']
    assert "serve" not in probe_argv and "--interface" in probe_argv and "eth0" in probe_argv


def test_probe_in_a_container_uses_the_launchers_container_command_line() -> None:
    script = probe_launcher(apptainer_site(), 2, None, "/project/jobs/doctor-1")
    _, argv = _argv_block(script)
    assert argv[:3] == ["apptainer", "exec", "--nvccli"]
    assert "--env-file" in argv and "/project/vllm.sif" in argv
    assert argv[argv.index("/project/vllm.sif") + 1] == "python3"
    assert "#SBATCH --gres=gpu:4" in script  # the GPUs a launch asks for


# -- the checks on the answers -----------------------------------------------------------------
def test_working_gloo_answers_pass() -> None:
    res = result_of(gloo_answers())
    assert pc.probe_job_check(res).status == "pass"
    assert pc.nodes_check(SITE, res).detail.startswith("node 0 node1: 2 CPU(s), 0 GPU(s)")
    assert pc.interface_check(SITE, res).detail == "eth0: node 0 10.77.0.11, node 1 10.77.0.12"
    assert pc.tcp_check(SITE, res).status == "pass"
    col = pc.collective_check(res)
    assert col.status == "pass" and "gloo" in col.detail and "NCCL is not tried" in col.detail
    assert pc.nccl_check(res).status == "skip"
    bw = pc.bandwidth_check(res)
    # 1 MiB in 2 ms over 2 ranks: algbw = busbw = 0.52 GB/s
    assert bw.detail.startswith("gloo busbw: 1 MiB 0.52 GB/s, 8 MiB 0.52 GB/s")


def test_a_node_without_an_answer_fails_the_probe_job_with_its_log() -> None:
    res = result_of(gloo_answers()[:1], nodes=2)
    res.log_tails = {
        "node-1.log": "exec: /opt/venv/bin/python3\n"
        "bash: /opt/venv/bin/python3: No such file or directory"
    }
    check = pc.probe_job_check(res)
    assert check.failed and "node(s) 1 wrote no answer" in check.detail
    assert "No such file or directory" in check.detail and "python3" in (check.fix or "")


def test_head_interface_missing_names_the_nodes_interfaces() -> None:
    answers = gloo_answers()
    for a in answers:
        a["interface"] = {"name": "eth9", "addr": None}
    site = dataclasses.replace(SITE, network=Network(head_interface="eth9"))
    check = pc.interface_check(site, result_of(answers))
    assert check.failed
    assert check.detail == (
        "eth9 has no IPv4 address on node 0 (node1); its interfaces: lo 127.0.0.1, eth0 10.77.0.11"
    )
    assert "network.head_interface" in (check.fix or "")


def test_launcher_fallback_address_is_caught_on_the_h200_run() -> None:
    # the H200 machine has no `ip`: the launcher published hostname -I's address, not lo's
    res = result_of([json.loads(data(H200, "node-0.json"))])
    site = dataclasses.replace(SITE, network=Network(head_interface="lo"))
    check = pc.interface_check(site, res)
    assert (
        check.failed and "published 192.0.2.2" in check.detail and "iproute2" in (check.fix or "")
    )


def test_blocked_port_fails_tcp_with_the_launchers_port_ranges() -> None:
    answers = gloo_answers()
    answers[1]["tcp"]["connect"]["api"] = "ConnectionRefusedError: [Errno 111] Connection refused"
    answers[0]["tcp"]["accepted"]["api"] = []
    check = pc.tcp_check(SITE, result_of(answers))
    assert check.failed
    assert check.detail.startswith("node 1 cannot connect to the head 10.77.0.11:8042 (api port)")
    assert "API 18000-18099, master 19000-19099" in (check.fix or "")


def test_shared_directory_not_seen() -> None:
    answers = gloo_answers()
    answers[0]["shared"] = {"seen": [0], "missing": [1]}
    check = pc.shared_check(result_of(answers))
    assert check.failed and "did not see node(s) [1]'s files" in check.detail
    assert "storage.workdir" in (check.fix or "")


def test_tmp_not_writable() -> None:
    answers = gloo_answers()
    answers[1]["tmp"] = {
        "path": "/tmp",
        "writable": False,
        "error": "[Errno 30] Read-only file system",
    }
    check = pc.tmp_check(result_of(answers))
    assert check.failed and "node 1" in check.detail and "TMPDIR" in (check.fix or "")


def test_gpus_not_visible_in_the_runtime() -> None:
    site = apptainer_site()
    answers = gloo_answers()
    answers[1]["gpus"] = {
        "cuda_visible_devices": "0,1,2,3",
        "torch": "2.5",
        "count": 0,
        "names": [],
    }
    for a in answers[:1]:
        a["gpus"] = {"count": 4, "names": ["NVIDIA A100-SXM4-40GB"] * 4}
    check = pc.nodes_check(site, result_of(answers))
    assert check.failed and check.detail.startswith("node 1 sees 0 GPU(s), the site has 4 per node")
    assert "gpu_flag" in (check.fix or "")


def test_infiniband_states() -> None:
    answers = gloo_answers()
    assert pc.infiniband_check(result_of(answers)).status == "skip"
    up = [{"device": "mlx5_0", "port": "1", "state": "ACTIVE", "link_layer": "InfiniBand"}]
    down = [{"device": "mlx5_0", "port": "1", "state": "DOWN", "link_layer": "InfiniBand"}]
    answers[0]["infiniband"], answers[1]["infiniband"] = up, copy.deepcopy(up)
    ok = pc.infiniband_check(result_of(answers))
    assert ok.status == "pass" and ok.detail == "mlx5_0:1 ACTIVE (InfiniBand)"
    answers[1]["infiniband"] = down
    bad = pc.infiniband_check(result_of(answers))
    assert bad.failed and bad.detail == "node 1 has no ACTIVE port (mlx5_0:1 DOWN)"


def test_collective_error_fails_with_the_socket_interface_fix() -> None:
    answers = gloo_answers()
    answers[1]["collective"] = {
        "backend": "gloo",
        "ok": False,
        "error": "RuntimeError: Connection reset by peer",
    }
    answers[0]["collective"]["ok"] = False
    check = pc.collective_check(result_of(answers))
    assert check.failed and "gloo all_reduce failed on node 1" in check.detail
    assert "gloo_socket_ifname" in (check.fix or "")


def test_h200_run_nccl_initialised_and_judged() -> None:
    res = result_of([json.loads(data(H200, "node-0.json"))])
    res.nccl = scan_lines(data(H200, "node-0.vm.734.log").splitlines())
    assert pc.collective_check(res).status == "pass"
    nccl = pc.nccl_check(res)
    assert nccl.status == "pass" and nccl.detail.startswith("NCCL 2.28.9")
    bw = pc.bandwidth_check(res)
    assert bw.status == "pass" and bw.detail.startswith("one rank, no bus traffic")
    assert pc.tcp_check(SITE, res).status == "skip"


# -- the job's lifetime ------------------------------------------------------------------------
def test_probe_job_writes_the_job_dir_submits_and_reads_the_answers() -> None:
    c = FakeCluster()
    job = ProbeJob(SITE, c.ex, nodes=2, sleep=lambda _s: None)
    res = job.run()
    assert res.job_dir.startswith("/home/u/hpcserve-jobs/doctor-")
    assert c.ex.files[f"{res.job_dir}/doctor/node_probe.py"].startswith('"""What one node')
    assert "node_probe.py" in c.ex.files[f"{res.job_dir}/launcher.sbatch"]
    assert c.ex.commands("sbatch") == [["sbatch", "--parsable", f"{res.job_dir}/launcher.sbatch"]]
    assert [a.rank for a in res.present()] == [0, 1]
    assert res.allocation is not None and res.allocation.state == "COMPLETED"
    assert c.ex.commands("scancel") == []


def test_probe_job_still_queued_at_the_timeout_is_cancelled() -> None:
    c = FakeCluster()
    c.states = ["PENDING"]
    clock = FakeClock()
    seen: list[str] = []
    job = ProbeJob(
        SITE, c.ex, nodes=2, timeout_s=60, sleep=clock.sleep, clock=clock, progress=seen.append
    )
    res = job.run()
    assert c.ex.commands("scancel") == [["scancel", "77"]]
    assert res.problem == "probe job 77 was still PENDING after 60 s"
    assert pc.probe_job_check(res).failed
    assert "probe job 77 PENDING" in seen and "probe job 77 cancelled" in seen


def test_sbatch_refusing_the_probe_cancels_nothing() -> None:
    from hpcserve.errors import RemoteError

    c = FakeCluster()
    c.ex.responders.insert(
        0,
        lambda argv: (
            (_ for _ in ()).throw(RemoteError("sbatch: error: no"))
            if argv[:2] == ["sbatch", "--parsable"]
            else None
        ),
    )
    with pytest.raises(RemoteError):
        ProbeJob(SITE, c.ex, nodes=2).run()
    assert c.ex.commands("scancel") == []


# -- the node script, for real, as two processes here -----------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_node_script_two_processes_share_a_dir_and_reach_the_head(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "hpcserve" / "doctor" / "node_probe.py"
    env = {
        **os.environ,
        "HPCSERVE_HEAD_ADDR": "127.0.0.1",
        "HPCSERVE_API_PORT": str(_free_port()),
        "HPCSERVE_MASTER_PORT": str(_free_port()),
        "VLLM_HOST_IP": "127.0.0.1",
    }
    argv = [
        sys.executable,
        str(script),
        "--nodes",
        "2",
        "--out",
        str(tmp_path),
        "--interface",
        "lo",
        "--wait",
        "20",
    ]
    procs = [
        subprocess.Popen(
            argv,
            env={**env, "SLURM_NODEID": str(k)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for k in (0, 1)
    ]
    for p in procs:
        p.wait(timeout=120)
        assert p.returncode == 0, p.stdout.read() if p.stdout else ""
    res = ProbeResult(job_dir=str(tmp_path), nodes=2)
    for k in (0, 1):
        res.answers[k] = parse_node((tmp_path / f"node-{k}.json").read_text(), k)
    site = dataclasses.replace(SITE, network=Network(head_interface="lo"))
    assert pc.probe_job_check(res).status == "pass"
    assert pc.shared_check(res).status == "pass"
    assert pc.interface_check(site, res).detail == "lo: node 0 127.0.0.1, node 1 127.0.0.1"
    assert pc.tcp_check(site, res).status == "pass"
    assert pc.tmp_check(res).status == "pass"
    col = pc.collective_check(res)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert col.failed and "torch.distributed is not importable" in col.detail
    else:
        assert col.status == "pass" and "gloo" in col.detail


def test_node_result_defaults() -> None:
    assert NodeResult(rank=3).hostname == "?"
    assert SchedJob("1", "COMPLETED").ended
