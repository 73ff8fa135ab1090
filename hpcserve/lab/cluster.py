"""The lab's thin adapter to the machine: runs the shipped shell scripts, reads the cluster state.

Shell does the shell work (``scripts/install.sh``, ``up.sh PHASE``, ``down.sh``); this module
decides what runs, writes the config files rendered by :mod:`hpcserve.lab.config`, times each
step, and reports status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcserve.errors import HpcserveError, UsageError
from hpcserve.lab.config import (
    MAX_JOB_ID,
    LabLayout,
    job_id_sequence,
    render_cgroup_conf,
    render_gres_conf,
    render_hosts,
    render_slurm_conf,
    render_slurmdbd_conf,
    render_sshd_config,
)

SCRIPTS = Path(__file__).resolve().parent / "scripts"
UP_PHASES = ("network", "munge", "accounting", "slurm", "login", "wait")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class StepTime:
    """How long one step took."""

    name: str
    seconds: float


def require_root() -> None:
    """The lab makes namespaces, bridges and daemons: only root can."""
    if os.geteuid() != 0:
        raise UsageError(
            "the lab needs root (network namespaces, a bridge, SLURM daemons): run it with sudo"
        )


def _run_script(
    lay: LabLayout, args: list[str], echo: Echo, extra_env: dict[str, str] | None = None
) -> None:
    env = {**os.environ, **lay.script_env(), "LAB_SCRIPTS": str(SCRIPTS), **(extra_env or {})}
    env.pop("SLURM_CONF", None)
    proc = subprocess.Popen(
        ["bash", str(SCRIPTS / args[0]), *args[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("WARNING: Location"):  # pip noise about absent local indexes
            continue
        echo(line)
        tail = (tail + [line])[-5:]
    if proc.wait() != 0:
        last = next((t for t in reversed(tail) if t.strip()), "no output")
        raise HpcserveError(
            f"lab: {' '.join(args)} failed (exit {proc.returncode}): {last.strip()}"
        )


def _timed(name: str, fn: Callable[[], None], echo: Echo, times: list[StepTime]) -> None:
    echo(f"==> {name}")
    t0 = time.monotonic()
    fn()
    dt = time.monotonic() - t0
    times.append(StepTime(name, dt))
    echo(f"    done in {dt:.1f}s")


def _phase_runner(lay: LabLayout, phase: str, echo: Echo) -> Callable[[], None]:
    return lambda: _run_script(lay, ["up.sh", phase], echo)


def write_configs(lay: LabLayout) -> None:
    """Write slurm.conf, cgroup.conf and sshd_config into the state dir."""
    lay.etc.mkdir(parents=True, exist_ok=True)
    for d in ("run", "log"):
        (lay.state_dir / d).mkdir(exist_ok=True)
    os.chmod(lay.state_dir, 0o755)
    files = {
        "slurm.conf": render_slurm_conf(lay, saved_next_job_id(lay)),
        "cgroup.conf": render_cgroup_conf(),
        "sshd_config": render_sshd_config(lay),
        "plugstack.conf": "",
        "gres.conf": render_gres_conf(lay),
        "hosts": render_hosts(lay),
    }
    for name, text in files.items():
        (lay.etc / name).write_text(text)
    dbd = lay.etc / "slurmdbd.conf"
    if lay.accounting:
        fd = os.open(dbd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render_slurmdbd_conf(lay))
        os.chmod(dbd, 0o600)
    else:
        dbd.unlink(missing_ok=True)
    (lay.state_dir / "nodes").write_text(str(lay.nodes) + "\n")


def saved_next_job_id(lay: LabLayout) -> int:
    """The job id the last lab would have given next (1 when none was kept)."""
    try:
        n = int(lay.next_job_id_file.read_text().strip())
    except (OSError, ValueError):
        return 1
    return n if 0 < n < MAX_JOB_ID else 1


def keep_job_id_counter(lay: LabLayout) -> int | None:
    """Keep the next job id from the copy of slurmctld's job_state that ``down.sh`` left in the
    cache, then remove the copy; returns the id kept (None when there was no readable copy)."""
    try:
        data = lay.kept_job_state.read_bytes()
    except OSError:
        return None
    lay.kept_job_state.unlink()
    seq = job_id_sequence(data)
    if seq is not None:
        lay.next_job_id_file.write_text(f"{seq}\n")
    return seq


def up(lay: LabLayout, *, vllm: bool = True, echo: Echo = print) -> list[StepTime]:
    """Install what is missing, then bring up network, munge, SLURM, login node; wait idle."""
    require_root()
    current = running_nodes(lay.state_dir)
    if current is not None and current != lay.nodes and is_up(lay):
        raise UsageError(
            f"the lab is up with {current} nodes; run `hpcserve lab down` first to change it"
        )
    times: list[StepTime] = []
    skip = {"LAB_SKIP_VLLM": "0" if vllm else "1"}
    what = "packages, vLLM venv, tiny model" if vllm else "packages"
    _timed(f"install ({what})", lambda: _run_script(lay, ["install.sh"], echo, skip), echo, times)
    _timed("config", lambda: write_configs(lay), echo, times)
    for phase in UP_PHASES:
        _timed(phase, _phase_runner(lay, phase, echo), echo, times)
    total = sum(t.seconds for t in times)
    echo(
        f"lab up in {total:.1f}s: {lay.nodes} nodes, "
        f"login {lay.ssh_user}@{lay.ssh_host}:{lay.ssh_port}"
    )
    if vllm:
        echo(f"tiny model: {lay.model}")
        echo(f"vLLM venv:  {lay.venv}")
    echo(f"export SLURM_CONF={lay.slurm_conf}")
    return times


def down(lay: LabLayout, *, purge: bool = False, echo: Echo = print) -> list[StepTime]:
    """Stop everything the lab started and remove its state; with purge, the cache too."""
    require_root()
    times: list[StepTime] = []
    _timed("down", lambda: _run_script(lay, ["down.sh"], echo), echo, times)
    kept = keep_job_id_counter(lay)
    if kept is not None:
        echo(f"    next job id {kept}: kept in {lay.next_job_id_file}")
    if purge and lay.cache_dir.exists():
        _timed(f"purge {lay.cache_dir}", lambda: shutil.rmtree(lay.cache_dir), echo, times)
    elif lay.cache_dir.exists():
        echo(
            f"kept the cache {lay.cache_dir} (vLLM venv, tiny model, job-id counter); "
            "--purge removes it"
        )
    return times


def running_nodes(state_dir: Path) -> int | None:
    """The node count the lab was brought up with, or None."""
    try:
        return int((state_dir / "nodes").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def is_up(lay: LabLayout) -> bool:
    """True when slurmctld and sshd of the lab run."""
    run = lay.state_dir / "run"
    return _alive(run / "slurmctld.pid") and _alive(run / "sshd.pid")


def parse_sinfo_nodes(text: str) -> dict[str, str]:
    """``sinfo -h -N -o '%N %T'`` output -> {node: state}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


def status(lay: LabLayout) -> dict[str, Any]:
    """The lab's state as the JSON of `lab status --json`."""
    n = running_nodes(lay.state_dir)
    if n is not None and n != lay.nodes:
        lay = LabLayout(nodes=n, state_dir=lay.state_dir, cache_dir=lay.cache_dir)
    up_now = is_up(lay)
    states: dict[str, str] = {}
    if up_now:
        try:
            p = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %T"],
                env={**os.environ, "SLURM_CONF": str(lay.slurm_conf)},
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            states = parse_sinfo_nodes(p.stdout)
        except (OSError, subprocess.TimeoutExpired):
            states = {}
    nodes = [
        {
            "name": nd.name,
            "addr": nd.addr,
            "netns": nd.netns,
            "state": states.get(nd.name, "absent"),
        }
        for nd in (lay.node_list if n is not None else [])
    ]
    return {
        "up": up_now,
        "nodes": nodes,
        "partition": lay.partition,
        "model": str(lay.model) if (lay.model / "config.json").exists() else None,
        "venv": str(lay.venv) if (lay.venv / "bin" / "vllm").exists() else None,
        "slurm_conf": str(lay.slurm_conf) if up_now else None,
        "state_dir": str(lay.state_dir),
        "cache_dir": str(lay.cache_dir),
        "jobs_dir": str(lay.jobs_dir),
        "login": {
            "host": lay.ssh_host,
            "port": lay.ssh_port,
            "user": lay.ssh_user,
            "identity_file": str(lay.identity_file),
            "known_hosts": str(lay.known_hosts),
        },
    }
