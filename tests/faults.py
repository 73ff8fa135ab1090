"""Fault injection on the local lab (`hpcserve lab up`), for tests/test_faults.py.

Every fault is a context manager that puts the lab back in its ``finally``: daemons are started
again by the lab's own phase script (``up.sh munge|slurm|login``: idempotent, it starts only what
is not running; a whole ``hpcserve lab up`` would also wait for idle nodes, which a running job
never gives), firewall rules are deleted, mounts unmounted. Processes are found by the lab's pid
files and by network namespace (``ip netns pids hpcs-nodeK``), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from hpcserve.lab.cluster import SCRIPTS
from hpcserve.lab.config import LabLayout

LAB = LabLayout()
RUN = LAB.state_dir / "run"
PIDFILES = {
    "slurmctld": RUN / "slurmctld.pid",
    "sshd": RUN / "sshd.pid",
    "slurmdbd": RUN / "slurmdbd.pid",
    "mysqld": RUN / "mysqld.pid",
    "munged": LAB.state_dir / "munge" / "munged.pid",
    **{f"slurmd-{n.name}": RUN / f"slurmd-{n.name}.pid" for n in LAB.node_list},
}
# The up.sh phase that starts each daemon again.
PHASE = {"slurmctld": "slurm", "sshd": "login", "munged": "munge", "slurmdbd": "accounting"}
PHASE.update({f"slurmd-{n.name}": "slurm" for n in LAB.node_list})
FIREWALL_TAG = "hpcserve-faults"


def log(msg: str) -> None:
    """What a fault did or showed, on the test's output (run with -s to see it live)."""
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes ----------------------------------------------------------------------------------
def pid_of(daemon: str) -> int | None:
    try:
        return int(PIDFILES[daemon].read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []

    def walk(p: int) -> None:
        for c in children.get(p, []):
            walk(c)
            out.append(c)

    walk(pid)
    return out


def kill(pids: list[int], sig: int = signal.SIGTERM, wait_s: float = 15.0) -> None:
    """Signal ``pids`` and wait until they are gone (SIGKILL what is left after ``wait_s``)."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    deadline = time.monotonic() + wait_s
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.1)


def stop_daemon(daemon: str, *, sessions: bool = False, sig: int = signal.SIGTERM) -> int:
    """Stop one lab daemon by its pid file; with ``sessions`` its children too (sshd's
    per-connection processes: every open SSH connection drops). Returns the pid stopped."""
    pid = pid_of(daemon)
    assert pid is not None and running(pid), f"{daemon} is not running ({PIDFILES[daemon]})"
    kill(([*descendants(pid)] if sessions else []) + [pid], sig)
    log(f"stopped {daemon} (pid {pid}{', with its sessions' if sessions else ''})")
    return pid


def start_daemon(daemon: str) -> None:
    """Start a stopped daemon again with the lab's own phase script (idempotent)."""
    env = {**os.environ, **LAB.script_env(), "LAB_SCRIPTS": str(SCRIPTS)}
    env.pop("SLURM_CONF", None)
    p = subprocess.run(
        ["bash", str(SCRIPTS / "up.sh"), PHASE[daemon]],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, f"up.sh {PHASE[daemon]}: {p.stdout}{p.stderr}"
    log(f"started {daemon} again (pid {pid_of(daemon)})")


@contextlib.contextmanager
def daemon_down(daemon: str, *, sessions: bool = False, sig: int = signal.SIGTERM) -> Iterator[int]:
    """``daemon`` stopped for the block, started again after it (always)."""
    pid = stop_daemon(daemon, sessions=sessions, sig=sig)
    try:
        yield pid
    finally:
        start_daemon(daemon)


def restart(daemon: str, *, down_s: float = 3.0, sessions: bool = False) -> tuple[float, float]:
    """Stop ``daemon``, leave it down ``down_s``, start it again: the (start, end) times."""
    t0 = time.monotonic()
    with daemon_down(daemon, sessions=sessions):
        time.sleep(down_s)
    return t0, time.monotonic()


def node_pids(k: int) -> list[int]:
    """Every process in node ``k``'s network namespace (``ip netns pids hpcs-nodeK``)."""
    p = subprocess.run(
        ["ip", "netns", "pids", f"{LAB.ns_prefix}{k}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(x) for x in p.stdout.split()]


def vllm_pids(k: int, job_id: str) -> list[int]:
    """vLLM processes of SLURM job ``job_id`` on lab node ``k`` (1-based): ``vllm serve`` and
    the processes it started (EngineCore, workers), found by namespace and SLURM_JOB_ID."""
    out = []
    for pid in node_pids(k):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env and b"vllm" in cmd:
            out.append(pid)
    return out


def kill_vllm(k: int, job_id: str, wait_s: float = 300) -> list[int]:
    """SIGKILL every vLLM process of ``job_id`` on node ``k`` once it runs (an OOM kill)."""
    deadline = time.monotonic() + wait_s
    while not (pids := vllm_pids(k, job_id)):
        assert time.monotonic() < deadline, f"no vLLM of job {job_id} on node{k} in {wait_s} s"
        time.sleep(0.5)
    kill(pids, signal.SIGKILL)
    log(f"killed vLLM of job {job_id} on node{k}: pids {pids}")
    return pids


# -- the network --------------------------------------------------------------------------------
def _rules(port: int) -> list[list[str]]:
    """INPUT rules that drop the login port's traffic both ways: packets still leave, nothing
    arrives (a lost network: timeouts, no refusals). OUTPUT rules would fail the sender's
    own send() with EPERM at once, which no real outage does."""
    base = ["INPUT", "-i", "lo", "-p", "tcp"]
    tag = ["-m", "comment", "--comment", FIREWALL_TAG, "-j", "DROP"]
    return [[*base, "--dport", str(port), *tag], [*base, "--sport", str(port), *tag]]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", *args], capture_output=True, text=True, timeout=30, check=False
    )


def unblock_login(port: int = LAB.ssh_port) -> None:
    """Delete this module's rules (every copy)."""
    for rule in _rules(port):
        while _iptables("-D", *rule).returncode == 0:
            pass


@contextlib.contextmanager
def login_blocked(port: int = LAB.ssh_port) -> Iterator[None]:
    """The laptop loses the login node: its port dropped both ways for the block."""
    try:
        for rule in _rules(port):
            p = _iptables("-I", *rule)
            assert p.returncode == 0, f"iptables -I {' '.join(rule)}: {p.stderr}"
        log(f"login port {port} blocked")
        yield
    finally:
        unblock_login(port)
        log(f"login port {port} open again")


# -- the job directory --------------------------------------------------------------------------
def _mount(*args: str) -> None:
    p = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 0, f"mount {' '.join(args)}: {p.stderr}"


def _umount(path: Path) -> None:
    p = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:  # busy: detach it now, it goes when the last user does
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for the block (a bind mount remounted ro: root too is refused, which
    chmod would not do). Only the host's (= the login node's) view: the lab's nodes have
    their own mount namespaces."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        log(f"{path} read-only")
        yield
    finally:
        _umount(path)
        log(f"{path} writable again")


@contextlib.contextmanager
def full(path: Path, size_kb: int = 64) -> Iterator[None]:
    """``path`` on a tiny tmpfs filled to the last block for the block (what was in ``path`` is
    hidden meanwhile, and whatever is written there goes with the tmpfs)."""
    _mount("-t", "tmpfs", "-o", f"size={size_kb}k,mode=755", "tmpfs", str(path))
    try:
        with contextlib.suppress(OSError), open(path / ".filler", "wb") as f:
            while True:  # until ENOSPC (from a write, a flush or the close)
                f.write(b"\0" * 4096)
                f.flush()
        log(f"{path} full (tmpfs of {size_kb} KiB)")
        yield
    finally:
        _umount(path)
        log(f"{path} back on its own filesystem")


# -- the registry -------------------------------------------------------------------------------
def damage(path: Path, how: str) -> bytes:
    """Damage one registry record: ``truncate`` (empty, as a full disk leaves it) or
    ``garbage`` (cut mid-way); returns the original bytes (to put back)."""
    original = path.read_bytes()
    path.write_bytes(b"" if how == "truncate" else original[: len(original) // 2])
    log(f"registry record {path} damaged ({how})")
    return original


def slurm(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A SLURM command on the lab, from this host (as root: the test's own view)."""
    env = {**os.environ, "SLURM_CONF": str(LAB.slurm_conf)}
    return subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@contextlib.contextmanager
def nodes_held() -> Iterator[str]:
    """A job holding every GPU of both lab nodes, so that a job submitted meanwhile waits
    PENDING (Resources) until the block ends; yields the blocker's job id."""
    p = slurm(
        "sbatch", "--parsable", "-N2", "--gpus-per-node", str(LAB.gpus_per_node),
        "-o", "/dev/null", "--job-name", "faults-blocker", "--wrap", "sleep 900",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip().split(";")[0]
    try:
        for _ in range(120):
            if slurm("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING":
                break
            time.sleep(0.5)
        yield job
    finally:
        slurm("scancel", job)
