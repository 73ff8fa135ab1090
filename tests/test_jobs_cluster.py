"""Job lifecycle on the real local SLURM lab (`hpcserve lab up`; tests/conftest.py's lab_cluster).

Scheduler states with small batch jobs (pending on an impossible request, pending on a begin
time, running, cancelled, timeout with a 1-minute limit, failed), and real vLLM (CPU) failures
from jobs the product's `hpcserve submit` started (missing model path, an oversized KV cache;
a killed worker is in tests/test_e2e.py) plus one a hand launcher makes (a TP that does not
divide the heads, which `submit` refuses before queueing), each checked through
`hpcserve status` / `wait` / `cancel`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from cliutil import run_hpcserve, run_main
from labjobs import sleep_script, vllm_launcher

from hpcserve.cluster.executor import LocalExecutor
from hpcserve.cluster.slurm import Slurm
from hpcserve.errors import RemoteError
from hpcserve.jobs.handle import Jobs
from hpcserve.jobs.record import LAUNCHER, JobRecord
from hpcserve.jobs.registry import Registry
from hpcserve.sites.loader import load_site

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]


def _here(site_name: str) -> tuple[object, LocalExecutor]:
    """The job client's site opener for these tests: the lab's scheduler from this machine."""
    return load_site(site_name), LocalExecutor()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``hpcserve ARGS`` in-process; the job commands reach the lab from this machine."""
    return run_main(capsys, *args, obj=Jobs(connect=_here))


def lab_status() -> tuple[dict | None, str]:
    saved = os.environ.get("HPCSERVE_LAB_STATUS")  # a saved `lab status --json`, before merge
    if saved:
        return json.loads(Path(saved).read_text()), ""
    try:
        p = run_hpcserve("lab", "status", "--json", timeout=60)
    except subprocess.TimeoutExpired:
        return None, "`hpcserve lab status --json` did not answer in 60 s"
    if p.returncode != 0:
        last = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"`hpcserve lab status --json` failed: {last[0]}"
    try:
        return json.loads(p.stdout), ""
    except ValueError:
        return None, "`hpcserve lab status --json` printed no JSON"


@pytest.fixture(scope="module")
def lab(lab_cluster) -> dict:
    """The session's lab (tests/conftest.py brings it up when it is down)."""
    if not shutil.which("sbatch") or not lab_cluster.get("slurm_conf"):
        pytest.skip("SLURM client commands or the lab's slurm.conf are missing")
    return lab_cluster


class Lab:
    """Submits test jobs to the lab, registers them, and cancels what it started."""

    def __init__(self, status: dict, base: Path) -> None:
        self.status = status
        self.base = base
        self.slurm = Slurm(LocalExecutor())
        self.submitted: list[str] = []

    def submit(
        self,
        script: str,
        *sbatch_args: str,
        nodes: int = 1,
        name: str | None = None,
        model: str = "test",
    ) -> JobRecord:
        jobdir = self.base / uuid.uuid4().hex[:8]
        jobdir.mkdir(parents=True)
        (jobdir / LAUNCHER).write_text(script)
        return self.submit_dir(jobdir, *sbatch_args, nodes=nodes, name=name, model=model)

    def submit_dir(
        self, jobdir: Path, *sbatch_args: str, nodes: int, name: str | None, model: str
    ) -> JobRecord:
        args = [
            f"--nodes={nodes}",
            "--ntasks-per-node=1",
            "--job-name=hpcserve-test",
            f"--output={jobdir}/slurm-%j.out",
            *sbatch_args,
        ]
        try:
            job_id, _ = self.slurm.submit(str(jobdir / LAUNCHER), args)
        except RemoteError as e:
            st, _why = lab_status()
            if not Path(self.status["slurm_conf"]).exists() or not (st or {}).get("up"):
                pytest.skip(f"the lab went down during the test: {e}")
            raise
        self.submitted.append(job_id)
        rec = JobRecord(
            job_id, "local", model, nodes, 1, nodes, str(jobdir), time.time(), False, name=name
        )
        Registry().add(rec)
        return rec

    def vllm(self, nodes: int, **kw) -> JobRecord:
        jobdir = self.base / uuid.uuid4().hex[:8]
        jobdir.mkdir(parents=True)
        model = kw.pop("model", self.status["model"])
        (jobdir / LAUNCHER).write_text(
            vllm_launcher(str(jobdir), venv=self.status["venv"], model=model, nodes=nodes, **kw)
        )
        return self.submit_dir(jobdir, "--cpus-per-task=1", nodes=nodes, name=None, model=model)

    def state(self, rec: JobRecord) -> str:
        return self.slurm.query([rec.job_id])[rec.job_id].state

    def wait_state(self, rec: JobRecord, states: set[str], timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while True:
            s = self.state(rec)
            if s in states or time.monotonic() > end:
                return s
            time.sleep(1)


@pytest.fixture
def cluster(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", lab["slurm_conf"])
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    # on the lab's shared filesystem: every node has its own /tmp, as on a real cluster
    base = Path(lab["jobs_dir"]) / "tests" / uuid.uuid4().hex[:8]
    base.mkdir(parents=True)
    os.chmod(base, 0o755)
    lab_jobs = Lab(lab, base)
    yield lab_jobs
    for job_id in lab_jobs.submitted:  # only the jobs this test started, by id
        subprocess.run(["scancel", job_id], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def status_json(capsys, ref: str) -> dict:
    _code, out, _err = cli(capsys, "status", ref, "--json")
    st = json.loads(out)
    if st["state"] == "UNKNOWN":  # gone within MinJobAge (300 s): slurmctld was reset
        pytest.skip(f"job {ref} vanished from the lab's controller (lab restarted during the test)")
    return st


def wait_cli(capsys, rec: JobRecord, timeout: int) -> tuple[int, str]:
    code, _out, err = cli(capsys, "wait", rec.job_id, "--timeout", str(timeout))
    if "no longer knows this job" in err:
        pytest.skip(f"job {rec.job_id} vanished from the lab's controller (lab restarted)")
    return code, err


# -- scheduler states -----------------------------------------------------------------------------
def test_pending_on_impossible_request_fails_fast_and_cancels(cluster, capsys):
    rec = cluster.submit(sleep_script(60), nodes=3)  # the lab partition has 2 nodes
    for _ in range(30):  # until the scheduler has looked at it
        st = status_json(capsys, rec.job_id)
        if st["reason"] not in (None, "None", "Priority"):
            break
        time.sleep(1)
    assert st["state"] == "PENDING"
    assert st["reason"] in ("PartitionConfig", "PartitionNodeLimit")
    assert st["phase"] == "failed" and st["failure"]["cause"] == "unschedulable"
    code, _out, err = cli(capsys, "wait", rec.job_id, "--timeout", "60")
    assert code == 1 and "cannot ever start" in err
    code, out, _err = cli(capsys, "cancel", rec.job_id)
    assert code == 0 and "scheduler state CANCELLED" in out


def test_pending_with_begin_time_then_wait_timeout(cluster, capsys):
    rec = cluster.submit(sleep_script(60), "--begin=now+3600")
    st = status_json(capsys, rec.job_id)
    assert (st["state"], st["phase"], st["reason"]) == ("PENDING", "pending", "BeginTime")
    assert "expected start" in st["detail"]
    code, _out, err = cli(capsys, "wait", rec.job_id, "--timeout", "3")
    assert code == 3 and "not ready after 3 s" in err


def test_running_then_cancel_confirms(cluster, capsys):
    rec = cluster.submit(sleep_script(300), "--time=10")
    assert cluster.wait_state(rec, {"RUNNING"}) == "RUNNING"
    st = status_json(capsys, rec.job_id)
    assert st["state"] == "RUNNING" and st["nodelist"]
    assert 0 < st["time_left_s"] <= 600
    code, out, _err = cli(capsys, "cancel", rec.job_id)
    assert code == 0, out
    assert "scheduler state CANCELLED" in out and "no job steps left" in out
    assert "CANCELLED AT" in out  # slurmstepd's line at the end of the batch log
    st = status_json(capsys, rec.job_id)
    assert st["state"] == "CANCELLED" and st["phase"] == "ended"


@pytest.mark.slow
def test_timeout_with_one_minute_limit(cluster, capsys):
    rec = cluster.submit(sleep_script(600), "--time=1")
    code, err = wait_cli(capsys, rec, 240)
    assert code == 1, err
    assert "reached its wall-time limit" in err and "DUE TO TIME LIMIT" in err
    st = status_json(capsys, rec.job_id)
    # `wait` may see slurmstepd's line while SLURM still kills the step (KillWait)
    assert st["state"] in ("TIMEOUT", "COMPLETING")
    assert st["failure"]["cause"] == "time_limit"


def test_failed_batch_job(cluster, capsys):
    rec = cluster.submit(sleep_script(1, exit_code=3))
    assert cluster.wait_state(rec, {"FAILED"}) == "FAILED"
    st = status_json(capsys, rec.job_id)
    assert st["phase"] == "failed" and st["failure"]["cause"] == "job_failed"
    assert "3:0" in st["failure"]["line"]


# -- real vLLM failures ------------------------------------------------------------------------
def submit(cluster, capsys, *args: str, site: str = "local") -> dict:
    """`hpcserve submit --site SITE ... --json`: the product's launcher, through the login node."""
    code, out, err = cli(capsys, "submit", "--site", site, "--json", *args)
    assert code == 0, err
    sub = json.loads(out)
    cluster.submitted.append(str(sub["job_id"]))
    return sub


@pytest.fixture
def big_kv_site(lab, tmp_path, monkeypatch) -> str:
    """The site `local` with a KV cache far larger than the machine's memory."""
    import yaml

    data = yaml.safe_load((REPO / "site_configs" / "local.yaml").read_text())
    data["name"] = "local-bigkv"
    data["engine"]["env"]["VLLM_CPU_KVCACHE_SPACE"] = "64"
    path = tmp_path / "local-bigkv.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("HPCSERVE_SITES", str(path))
    return "local-bigkv"


@pytest.mark.slow
def test_vllm_missing_model_path(cluster, capsys):
    sub = submit(
        cluster, capsys, "--nodes", "1", "--model", "/var/cache/hpcserve-lab/models/no-such-model"
    )
    code, err = wait_cli(capsys, JobRecordRef(sub["job_id"]), 400)
    assert code == 1, err
    st = status_json(capsys, sub["job_id"])
    assert st["failure"]["cause"] in ("model_not_found", "offline_download"), st["failure"]
    assert st["failure"]["node"] == 0


def test_layout_tp_not_dividing_heads_is_refused_before_queueing(cluster, capsys, tmp_path):
    import yaml

    data = yaml.safe_load((REPO / "site_configs" / "local.yaml").read_text())
    data["name"] = "local-3"
    data["node"]["gpus"] = 3
    path = tmp_path / "local-3.yaml"
    path.write_text(yaml.safe_dump(data))
    os.environ["HPCSERVE_SITES"] = str(path)
    try:
        code, _out, err = cli(
            capsys,
            "submit",
            "--site",
            "local-3",
            "--nodes",
            "1",
            "--model",
            cluster.status["model"],
        )
    finally:
        del os.environ["HPCSERVE_SITES"]
    assert code == 2
    assert "attention heads (4) are not divisible by TP=3" in err
    assert "a layout that works: --tp 2 --pp 1 (2 of 3 GPUs per node)" in err


@pytest.mark.slow
def test_vllm_tp_not_dividing_heads(cluster, capsys):
    # hpcserve refuses this layout before queueing when it can read the model's config (above);
    # a model only in the cluster's cache gets it from vLLM. A hand launcher (tests/labjobs.py)
    # makes vLLM itself fail that way, to check the cause read from its real line.
    rec = cluster.vllm(1, tp=3, pp=1)  # the lab's tiny model has 4 attention heads
    code, err = wait_cli(capsys, rec, 400)
    assert code == 1, err
    assert "tensor-parallel size does not divide the attention heads" in err
    assert "(4) must be divisible by tensor parallel size (3)" in err


@pytest.mark.slow
def test_vllm_oversized_kv_cache(cluster, capsys, big_kv_site):
    sub = submit(
        cluster, capsys, "--nodes", "1", "--model", cluster.status["model"], site=big_kv_site
    )
    code, err = wait_cli(capsys, JobRecordRef(sub["job_id"]), 400)
    assert code == 1, err
    st = status_json(capsys, sub["job_id"])
    assert st["failure"]["cause"] in ("kv_cache_too_small", "cpu_oom", "gpu_oom"), st["failure"]


class JobRecordRef:
    """What wait_cli needs of a job: its id."""

    def __init__(self, job_id: object) -> None:
        self.job_id = str(job_id)
