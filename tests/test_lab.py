"""The local lab: config rendering (no cluster) and the real cluster (marked ``cluster``).

The cluster tests bring the lab up with ``hpcserve lab up --no-vllm`` (idempotent: an already
running lab is reused), check nodes, addresses, shared nodes and the login node, and end by
``hpcserve lab down`` and checking that nothing is left; if the lab was up before, it is brought
back up so that other tests find it as they left it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml
from cliutil import run_hpcserve

from hpcserve.lab import cluster
from hpcserve.lab.config import (
    LabLayout,
    job_id_sequence,
    render_cgroup_conf,
    render_slurm_conf,
    render_sshd_config,
)

REPO = Path(__file__).resolve().parent.parent


def _lay(tmp_path: Path, nodes: int = 3) -> LabLayout:
    return LabLayout(
        nodes=nodes, state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", hostname="labhost"
    )


# --- pure parts ------------------------------------------------------------------------------


def test_slurm_conf_names_host_bridge_and_one_address_per_node(tmp_path: Path) -> None:
    text = render_slurm_conf(_lay(tmp_path))
    assert "SlurmctldHost=labhost(10.77.0.1)" in text
    addrs = [w.split("=")[1] for w in text.split() if w.startswith("NodeAddr=")]
    assert addrs == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert "SelectTypeParameters=CR_Core" in text
    assert "SelectType=select/cons_tres" in text
    assert "OverSubscribe=FORCE:2" in text
    # every path lives in the state dir
    for line in text.splitlines():
        if "File=" in line or "Location=" in line or "SpoolDir=" in line:
            assert str(tmp_path / "state") in line, line


def _job_state(next_id: int) -> bytes:
    """The head of a job_state file as slurmctld 22.05 writes it (checked against a real one)."""
    name = b"PROTOCOL_VERSION\0"
    return struct.pack(">I", len(name)) + name + struct.pack(">HQI", 0x2600, 1_796_000_000, next_id)


def test_job_id_sequence_is_read_from_the_job_state_header() -> None:
    assert job_id_sequence(_job_state(4) + b"\0" * 64) == 4
    assert job_id_sequence(_job_state(123456)) == 123456
    assert job_id_sequence(b"") is None
    assert job_id_sequence(b"\0\0\0\x05hello" + b"\0" * 20) is None
    assert job_id_sequence(_job_state(4)[:-2]) is None


def test_slurm_conf_starts_at_the_kept_job_id(tmp_path: Path) -> None:
    assert "FirstJobId=1\n" in render_slurm_conf(_lay(tmp_path))
    assert "FirstJobId=4242\n" in render_slurm_conf(_lay(tmp_path), 4242)


def test_down_keeps_the_next_job_id_and_up_starts_there(tmp_path: Path) -> None:
    lay = _lay(tmp_path)
    assert cluster.keep_job_id_counter(lay) is None  # nothing was copied: nothing changes
    assert cluster.saved_next_job_id(lay) == 1
    lay.kept_job_state.parent.mkdir(parents=True)
    lay.kept_job_state.write_bytes(_job_state(17) + b"jobs...")
    assert cluster.keep_job_id_counter(lay) == 17
    assert not lay.kept_job_state.exists()  # only the number is kept
    assert lay.next_job_id_file.read_text() == "17\n"
    cluster.write_configs(lay)
    assert "FirstJobId=17\n" in lay.slurm_conf.read_text()
    lay.next_job_id_file.write_text("garbage\n")
    assert cluster.saved_next_job_id(lay) == 1


def test_cgroup_conf_uses_v1_plugin() -> None:
    assert "CgroupPlugin=cgroup/v1" in render_cgroup_conf()


def test_sshd_config_is_key_only_on_loopback(tmp_path: Path) -> None:
    lay = _lay(tmp_path)
    text = render_sshd_config(lay)
    assert "ListenAddress 127.0.0.1:2222" in text
    assert "PasswordAuthentication no" in text
    assert "PermitRootLogin prohibit-password" in text
    assert f"SetEnv SLURM_CONF={lay.slurm_conf}" in text


def test_parse_sinfo_nodes() -> None:
    assert cluster.parse_sinfo_nodes("node1 idle\nnode2 mixed\n\n") == {
        "node1": "idle",
        "node2": "mixed",
    }


def test_status_when_down_says_down(tmp_path: Path) -> None:
    st = cluster.status(_lay(tmp_path))
    assert st["up"] is False
    assert st["nodes"] == []
    assert st["login"]["port"] == 2222
    assert st["slurm_conf"] is None


def test_lab_needs_root_one_line_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcserve.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as e:
        main(["lab", "down"])
    assert e.value.code == 2


def test_lab_needs_root_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpcserve.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit):
        main(["lab", "up", "--no-vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]


def _check_keys(obj: dict, cls: type) -> None:
    """Every key of ``obj`` is a field of the dataclass ``cls`` (recursively)."""
    from hpcserve.sites import schema as siteschema

    known = {f.name: str(f.type) for f in fields(cls)}
    for key, value in obj.items():
        assert key in known, f"{cls.__name__}.{key} is not in the schema"
        sub = getattr(siteschema, known[key].removeprefix("list[").removesuffix("]"), None)
        if isinstance(sub, type) and is_dataclass(sub):
            for item in value if isinstance(value, list) else [value]:
                _check_keys(item, sub)


def test_local_site_uses_only_schema_fields() -> None:
    from hpcserve.sites import schema as siteschema

    data = yaml.safe_load((REPO / "site_configs" / "local.yaml").read_text())
    _check_keys(data, siteschema.Site)
    assert data["engine"]["layout"] == "tp-across-nodes"
    assert data["container"]["runtime"] == "none"
    assert "venv" not in data["container"]
    assert data["modules"] == [LabLayout().vllm_module]
    assert data["storage"]["workdir"] == str(LabLayout().jobs_dir)
    assert data["network"]["head_interface"] == LabLayout().ifname


# --- the real cluster ------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


def _hpcserve(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run_hpcserve(*args, timeout=timeout)


def _slurm(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLURM_CONF": str(LabLayout().slurm_conf)}
    return subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/tmp",
    )


@pytest.fixture(scope="module")
def lab() -> dict:
    """The lab, up with 2 nodes; remembers whether it was up before."""
    before = cluster.is_up(LabLayout())
    p = _hpcserve("lab", "up", "--nodes", "2", "--no-vllm")
    assert p.returncode == 0, p.stdout + p.stderr
    # Nodes still finishing an earlier test's job (`completing`) become idle again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        nodes = cluster.parse_sinfo_nodes(_slurm("sinfo", "-h", "-N", "-o", "%N %T").stdout)
        if set(nodes.values()) == {"idle"}:
            break
        time.sleep(1)
    st = json.loads(_hpcserve("lab", "status", "--json").stdout)
    st["was_up"] = before
    return st


@pytest.mark.cluster
@needs_root
def test_nodes_idle_with_distinct_addresses(lab: dict) -> None:
    states = cluster.parse_sinfo_nodes(_slurm("sinfo", "-h", "-N", "-o", "%N %T").stdout)
    assert states == {"node1": "idle", "node2": "idle"}
    out = _slurm("scontrol", "show", "nodes").stdout
    addrs = [w.split("=")[1] for w in out.split() if w.startswith("NodeAddr=")]
    assert sorted(addrs) == ["10.77.0.11", "10.77.0.12"]


@pytest.mark.cluster
@needs_root
def test_two_node_step_runs_in_two_namespaces(lab: dict) -> None:
    p = _slurm("srun", "-N2", "--ntasks-per-node=1", "hostname", "-I", timeout=60)
    assert p.returncode == 0, p.stderr
    addrs = sorted(p.stdout.split())
    assert addrs == ["10.77.0.11", "10.77.0.12"]


@pytest.mark.cluster
@needs_root
def test_two_jobs_share_the_two_nodes(lab: dict) -> None:
    ids = []
    for _ in range(2):
        p = _slurm(
            "sbatch",
            "--parsable",
            "-N2",
            "--ntasks-per-node=1",
            "-c1",
            "-o",
            "/dev/null",
            "--wrap",
            "srun sleep 60",
        )
        assert p.returncode == 0, p.stderr
        ids.append(p.stdout.strip().split(";")[0])
    try:
        states: dict[str, str] = {}
        for _ in range(60):
            out = _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %N").stdout
            states = {ln.split()[0]: " ".join(ln.split()[1:]) for ln in out.splitlines() if ln}
            if len(states) == 2 and all(v.startswith("RUNNING") for v in states.values()):
                break
            time.sleep(0.5)
        assert states == {i: "RUNNING node[1-2]" for i in ids}
    finally:
        _slurm("scancel", *ids)
        for _ in range(120):  # leave the nodes idle for the next test
            if not _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i").stdout.strip():
                break
            time.sleep(0.5)


def _srun(*argv: str) -> list[str]:
    """``srun -N2 --ntasks-per-node=1 ARGV``: one line per node, sorted."""
    p = _slurm("srun", "-N2", "--ntasks-per-node=1", *argv, timeout=60)
    assert p.returncode == 0, p.stderr
    return sorted(p.stdout.splitlines())


@pytest.mark.cluster
@needs_root
def test_nodes_have_their_own_hostname_tmp_and_shm_and_share_the_job_dir(lab: dict) -> None:
    lay = LabLayout()
    mark = f"hpcserve-lab-test-{os.getpid()}"
    shared = lay.jobs_dir / mark
    script = (
        f'echo "$(hostname) $(getent hosts node1 | cut -d" " -f1)"; '
        f"touch /tmp/{mark}-$SLURM_NODEID /dev/shm/{mark}-$SLURM_NODEID {shared}-$SLURM_NODEID; "
        f"sleep 2; ls /tmp /dev/shm | grep -c {mark}; ls {lay.jobs_dir} | grep -c {mark}"
    )
    try:
        out = _srun("bash", "-c", script)
    finally:
        for k in (0, 1):
            Path(f"{shared}-{k}").unlink(missing_ok=True)
    # each node: its own name (node names resolve, as cluster DNS makes them), only its own
    # files in /tmp and /dev/shm (1 + 1), both nodes' files in the shared job directory
    assert sorted(out) == sorted(["node1 10.77.0.11", "node2 10.77.0.11", "2", "2", "2", "2"])


@pytest.mark.cluster
@needs_root
def test_gpus_are_gres_and_set_cuda_visible_devices_per_node(lab: dict) -> None:
    show = ["bash", "-c", 'echo "$(hostname) ${CUDA_VISIBLE_DEVICES:-none}"']
    assert _srun("--gpus-per-node=1", *show) == ["node1 0", "node2 0"]
    assert _srun("--gres=gpu:2", *show) == ["node1 0,1", "node2 0,1"]
    assert _srun("--gpus-per-task=1", *show) == ["node1 0", "node2 0"]
    assert _srun(*show) == ["node1 none", "node2 none"]
    too_many = _slurm("srun", "-N1", "--gpus-per-node=3", "true", timeout=30)
    assert too_many.returncode != 0
    assert "Requested node configuration is not available" in too_many.stderr


@pytest.mark.cluster
@needs_root
def test_steps_are_confined_to_the_cores_they_ask(lab: dict) -> None:
    assert _srun("-c1", "nproc") == ["1", "1"]
    assert _srun("-c2", "nproc") == ["2", "2"]


@pytest.mark.cluster
@needs_root
def test_sacct_lists_finished_jobs_with_their_exit_codes(lab: dict) -> None:
    ok = _slurm("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true")
    bad = _slurm("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 3")
    ids = [p.stdout.strip().split(";")[0] for p in (ok, bad)]
    rows: dict[str, str] = {}
    for _ in range(120):
        out = _slurm("sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode")
        rows = {r.split("|")[0]: "|".join(r.split("|")[1:]) for r in out.stdout.splitlines()}
        if all(rows.get(i, "").split("|")[0] in ("COMPLETED", "FAILED") for i in ids):
            break
        time.sleep(0.5)
    assert rows == {ids[0]: "COMPLETED|0:0", ids[1]: "FAILED|3:0"}


@pytest.mark.cluster
@needs_root
def test_an_account_the_database_does_not_know_is_refused(lab: dict) -> None:
    p = _slurm("sbatch", "-A", "no-such-account", "-o", "/dev/null", "--wrap", "true")
    assert p.returncode != 0
    assert "Invalid account" in p.stderr


def _ssh(
    known_hosts: str, *extra: str, command: str = "echo $SLURM_CONF; sinfo -h -N -o %N"
) -> subprocess.CompletedProcess[str]:
    login = LabLayout()
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-i",
            str(login.identity_file),
            "-p",
            str(login.ssh_port),
            *extra,
            f"{login.ssh_user}@{login.ssh_host}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.cluster
@needs_root
def test_login_node_with_pinned_host_key(lab: dict) -> None:
    p = _ssh(lab["login"]["known_hosts"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split()
    assert lines[0] == lab["slurm_conf"]
    assert lines[1:] == ["node1", "node2"]


@pytest.mark.cluster
@needs_root
def test_module_avail_in_a_job_shows_the_labs_vllm(lab: dict) -> None:
    """Through the login node, as a user's job gets its MODULEPATH (sshd sets it, like a site's
    login profile); the batch step sets up Lmod from /etc/profile.d as the launcher does."""
    p = _ssh(
        lab["login"]["known_hosts"],
        command="srun -N1 bash -c 'source /etc/profile.d/lmod.sh; module -t avail 2>&1; "
        "module load vllm && command -v vllm'",
    )
    assert p.returncode == 0, p.stderr
    assert LabLayout().vllm_module in p.stdout.split()
    assert str(LabLayout().venv / "bin" / "vllm") in p.stdout.split()


@pytest.mark.cluster
@needs_root
def test_login_node_refuses_unknown_host_key(lab: dict, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    p = _ssh(str(empty))
    assert p.returncode == 255
    assert "Host key verification failed" in p.stderr


@pytest.mark.cluster
@needs_root
def test_login_node_refuses_passwords(lab: dict) -> None:
    p = _ssh(lab["login"]["known_hosts"], "-o", "PubkeyAuthentication=no")
    assert p.returncode == 255
    assert "Permission denied (publickey)" in p.stderr


@pytest.mark.cluster
@needs_root
def test_status_json(lab: dict) -> None:
    assert lab["up"] is True
    assert [(n["name"], n["addr"], n["state"]) for n in lab["nodes"]] == [
        ("node1", "10.77.0.11", "idle"),
        ("node2", "10.77.0.12", "idle"),
    ]
    assert Path(lab["slurm_conf"]).is_file()
    assert Path(lab["login"]["identity_file"]).is_file()
    assert lab["login"]["host"] == "127.0.0.1" and lab["login"]["user"] == "root"
    assert {"model", "venv"} <= set(lab)


@pytest.mark.cluster
@needs_root
def test_up_again_keeps_the_running_daemons(lab: dict) -> None:
    pidfile = LabLayout().state_dir / "run" / "slurmctld.pid"
    before = pidfile.read_text()
    p = _hpcserve("lab", "up", "--nodes", "2", "--no-vllm")
    assert p.returncode == 0, p.stderr
    assert pidfile.read_text() == before


def _wait_idle(timeout: float = 60) -> dict[str, str]:
    """Node states once all are idle (jobs of earlier tests may still be completing)."""
    states: dict[str, str] = {}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = cluster.parse_sinfo_nodes(_slurm("sinfo", "-h", "-N", "-o", "%N %T").stdout)
        if states and set(states.values()) == {"idle"}:
            break
        time.sleep(0.5)
    return states


@pytest.mark.cluster
@needs_root
def test_up_again_restarts_a_dead_slurmd(lab: dict) -> None:
    lay = LabLayout()
    assert _wait_idle() == {"node1": "idle", "node2": "idle"}
    pidfile = lay.state_dir / "run" / "slurmd-node2.pid"
    old = int(pidfile.read_text())
    os.kill(old, 9)
    for _ in range(50):
        if not _alive(old):
            break
        time.sleep(0.1)
    p = _hpcserve("lab", "up", "--nodes", "2", "--no-vllm")
    assert p.returncode == 0, p.stdout + p.stderr
    assert int(pidfile.read_text()) != old
    assert _wait_idle() == {"node1": "idle", "node2": "idle"}


def _sbatch_id() -> int:
    p = _slurm("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true")
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip().split(";")[0])


@pytest.mark.cluster
@needs_root
def test_job_ids_keep_counting_after_down_and_up(lab: dict) -> None:
    """A real cluster's controller keeps its job-id counter across restarts; so does the lab,
    or a job submitted after `lab down`/`lab up` would get the id of a job in the registry."""
    before = _sbatch_id()
    p = _hpcserve("lab", "down")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"next job id {before + 1}" in p.stdout
    p = _hpcserve("lab", "up", "--nodes", "2", "--no-vllm")
    assert p.returncode == 0, p.stdout + p.stderr
    assert _wait_idle() == {"node1": "idle", "node2": "idle"}
    assert _sbatch_id() > before


def _lab_pids(lay: LabLayout) -> list[int]:
    pids = []
    for f in [*(lay.state_dir / "run").glob("*.pid"), lay.state_dir / "munge" / "munged.pid"]:
        pids.append(int(f.read_text().strip()))
    for n in lay.node_list:
        out = subprocess.run(
            ["ip", "netns", "pids", n.netns], capture_output=True, text=True, check=False
        ).stdout
        pids += [int(x) for x in out.split()]
    return pids


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.cluster
@needs_root
def test_down_leaves_nothing_behind(lab: dict, tmp_path: Path) -> None:
    lay = LabLayout()
    # a running job's processes must go too
    job = _slurm("sbatch", "--parsable", "-N2", "-o", "/dev/null", "--wrap", "srun sleep 300")
    assert job.returncode == 0, job.stderr
    for _ in range(60):
        if "RUNNING" in _slurm("squeue", "-h", "-o", "%T").stdout:
            break
        time.sleep(0.5)
    pids = _lab_pids(lay)
    assert len(pids) >= 6  # slurmctld, 2 slurmd, sshd, munged, job steps
    try:
        p = _hpcserve("lab", "down")
        assert p.returncode == 0, p.stdout + p.stderr
        assert [pid for pid in pids if _alive(pid)] == []
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lay.ns_prefix not in netns
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert lay.bridge not in links and f": {lay.veth_prefix}" not in links
        assert not lay.state_dir.exists()
        mounts = Path("/proc/self/mounts").read_text()
        assert lay.ns_prefix not in mounts
        # idempotent
        again = _hpcserve("lab", "down")
        assert again.returncode == 0, again.stderr
        st = json.loads(_hpcserve("lab", "status", "--json").stdout)
        assert st["up"] is False and st["nodes"] == []
        _check_down_purge_removes_the_cache(tmp_path)
    finally:
        if lab["was_up"]:
            _hpcserve("lab", "up", "--nodes", "2")


def _check_down_purge_removes_the_cache(tmp_path: Path) -> None:
    """`down` keeps the cache, `down --purge` removes it (run while the lab is down: a down of
    another state dir would still stop the lab's namespaces)."""
    cache = tmp_path / "cache"
    (cache / "models" / "tiny-llama").mkdir(parents=True)
    env = {
        **os.environ,
        "HPCSERVE_LAB_CACHE": str(cache),
        "HPCSERVE_LAB_STATE": str(tmp_path / "state"),
    }
    p = subprocess.run(
        [sys.executable, "-m", "hpcserve", "lab", "down"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert cache.is_dir() and "kept the cache" in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "hpcserve", "lab", "down", "--purge"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert not cache.exists()
