"""Every fault a user meets mid-job, injected into the local lab during real jobs.

Each test is a row of docs/reliability.md: what the user sees, whether service and records
recover, what is lost. Jobs are submitted with the product (`hpcserve submit --site local`,
through the login node's sshd), as in tests/test_e2e.py. To keep CI short, one job (A) lives
through every fault that does not kill it:

* while A starts (`wait` and `logs --follow` running): slurmctld restarted, the login node's
  sshd restarted with its connections dropped, the login port blocked for OUTAGE_S seconds;
* once A serves: sshd restarted and the port blocked under a `tunnel`, munge stopped, the job
  directory read-only or full, registry records damaged;
* then the faults that end jobs: the head's vLLM killed (job B, started beside A), a worker's
  vLLM killed (A), a worker node's slurmd killed (job C).

Run alone (root, the lab up or brought up by the session fixture):
``sudo python -m pytest -ra -s tests/test_faults.py``; ``-s`` shows what each fault showed
(``[faults ...]`` lines), the text of docs/reliability.md's rows. HPCSERVE_FAULT_OUTAGE_S sets
the login outage (default 35 s: longer than the 30 s a command over SSH may take, so the
retry path is met; 60 s is the full minute of the issue).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faults
import pytest
from cliutil import REPO, hpcserve_ok, status_json
from faults import LAB, log

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OUTAGE_S = float(os.environ.get("HPCSERVE_FAULT_OUTAGE_S", "35"))
NOT_ANSWERING = "the cluster is not answering"


hpcserve = hpcserve_ok


status = status_json


def clean(p: subprocess.CompletedProcess[str]) -> None:
    """What every fault must not show: a traceback or an internal error."""
    text = p.stdout + p.stderr
    assert "Traceback" not in text and "internal error" not in text, text


def one_line_error(p: subprocess.CompletedProcess[str], *words: str) -> str:
    clean(p)
    assert p.returncode != 0, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def records() -> dict[str, dict[str, Any]]:
    """The registry as `list --json` shows it, by job id."""
    p = hpcserve("list", "--json")
    return {r["job_id"]: r for r in json.loads(p.stdout)}


def assert_records_intact(before: dict[str, dict[str, Any]]) -> None:
    """Nothing lost: every record still listed, with the same job directory and model."""
    now = records()
    for jid, r in before.items():
        assert jid in now, f"job {jid} is no longer in the registry"
        assert (now[jid]["job_dir"], now[jid]["model"]) == (r["job_dir"], r["model"])


def until(what: str, check: Any, timeout: float, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(every)


@dataclass
class Background:
    """`hpcserve ARGS` running in the background; each output line with when it came."""

    args: tuple[str, ...]
    out: list[tuple[float, str]] = field(default_factory=list)
    err: list[tuple[float, str]] = field(default_factory=list)
    ended_at: float | None = None

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpcserve", *self.args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._reap, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, pipe: Any, into: list[tuple[float, str]]) -> None:
        for line in pipe:
            into.append((time.monotonic(), line.rstrip("\n")))

    def _reap(self) -> None:
        self.proc.wait()
        self.ended_at = time.monotonic()

    def running_at(self, t: float) -> bool:
        return self.ended_at is None or self.ended_at > t

    def lines(self, which: str = "err", since: float = 0.0, until: float = 1e18) -> list[str]:
        return [ln for t, ln in (self.err if which == "err" else self.out) if since <= t <= until]

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for t in self._threads:
            t.join(10)


def submit(model: str, name: str) -> dict[str, Any]:
    sub = json.loads(
        hpcserve(
            "submit", "--site", "local", "--nodes", "2", "--model", model, "--name", name, "--json"
        ).stdout
    )
    log(f"submitted {name}: job {sub['job_id']} in {sub['job_dir']}")
    return {"job_id": str(sub["job_id"]), "job_dir": sub["job_dir"], "name": name}


def head_and_worker(job_id: str) -> tuple[int, int]:
    """Lab node numbers (1-based) of the job's head (rank 0) and its worker (rank 1)."""
    rec = until(
        f"job {job_id}'s endpoint.json",
        lambda: (r := status(job_id)["record"]).get("head_host") and r,
        300,
    )
    head = int(str(rec["head_host"]).removeprefix("node"))
    return head, 3 - head


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def lab_restored(lab_cluster: dict[str, Any], lab_state_dir: Path) -> Iterator[None]:
    """Whatever a test left: the login port open, every daemon running, no job of ours left."""
    yield
    faults.unblock_login()
    for jid in records():
        hpcserve("cancel", jid, check=False)
    for daemon in ("munged", "slurmctld", *(f"slurmd-{n.name}" for n in LAB.node_list), "sshd"):
        pid = faults.pid_of(daemon)
        if pid is None or not faults.running(pid):
            faults.start_daemon(daemon)


@dataclass
class Startup:
    """Job A, and what `wait` and `logs --follow` showed while faults hit its start."""

    job: dict[str, Any]
    wait: Background
    follow: Background
    windows: dict[str, tuple[float, float]]
    wait_rc: int


@pytest.fixture(scope="module")
def startup(lab_cluster: dict[str, Any], lab_state_dir: Path) -> Iterator[Startup]:
    """Submit A while another job holds the nodes, so that `wait` polls a PENDING job (the
    lab starts vLLM in well under a minute, too soon for every fault): restart slurmctld, then
    block the login port; release the nodes, and while A's vLLM starts restart sshd, dropping
    every connection (`wait` and `logs --follow` both ride it out)."""
    windows: dict[str, tuple[float, float]] = {}
    with faults.nodes_held() as blocker:
        job = submit(lab_cluster["model"], "faults")
        jid = job["job_id"]
        wait = Background(("wait", jid, "--timeout", "900"))
        follow = Background(("logs", jid, "--node", "0", "--follow"))
        try:
            time.sleep(5)  # `wait` polls the pending job
            windows["slurmctld"] = faults.restart("slurmctld", down_s=5)
            time.sleep(5)
            t0 = time.monotonic()
            with faults.login_blocked():
                time.sleep(OUTAGE_S)
            windows["outage"] = (t0, time.monotonic())
            time.sleep(5)
        except BaseException:
            follow.stop()
            wait.stop()
            raise
        log(f"nodes released (blocker {blocker} cancelled)")
    try:
        until("node-0.log", lambda: Path(job["job_dir"], "node-0.log").exists(), 300, 0.5)
        time.sleep(3)  # `logs --follow` has read the first lines
        windows["sshd"] = faults.restart("sshd", down_s=5, sessions=True)
        rc = wait.finish(900)
        time.sleep(3)  # a last round of `logs --follow`
    finally:
        faults.unblock_login()
        follow.stop()
        wait.stop()
    log(f"wait ended {rc}: {wait.lines('out')} / stderr:\n  " + "\n  ".join(wait.lines()))
    yield Startup(job, wait, follow, windows, rc)
    hpcserve("cancel", jid, check=False)


@pytest.fixture(scope="module")
def second_job(lab_cluster: dict[str, Any], startup: Startup) -> dict[str, Any]:
    """Job B, started beside A (the lab runs two jobs on the same nodes) for the head kill."""
    return submit(lab_cluster["model"], "faults-b")


def _during_wait(s: Startup, fault: str) -> list[str]:
    t0, t1 = s.windows[fault]
    assert s.wait.running_at(t1), (
        f"`wait` ended before the {fault} fault was over: the job started faster than the "
        "faults could be injected (no fault met `wait`)"
    )
    seen = s.wait.lines(since=t0, until=t1 + 4)  # the next fault starts 5 s after
    log(f"{fault} during `wait` showed: {seen or 'nothing'}")
    return seen


def _wait_succeeded(s: Startup) -> None:
    text = "\n".join(s.wait.lines())
    assert "Traceback" not in text and "internal error" not in text, text
    assert s.wait_rc == 0, text
    assert s.wait.lines("out")[-1].startswith("http://"), s.wait.lines("out")


# -- 1, 2, 4: faults while `wait` polls ----------------------------------------------------------
def test_wait_rides_out_a_slurmctld_restart(startup: Startup) -> None:
    """Expected: no line, or one "the cluster is not answering (the SLURM controller did not
    answer ...); still trying"; then ready. Nothing lost."""
    _during_wait(startup, "slurmctld")
    _wait_succeeded(startup)
    assert_records_intact({startup.job["job_id"]: status(startup.job["job_id"])["record"]})
    assert status(startup.job["job_id"])["state"] == "RUNNING"


def test_wait_rides_out_an_sshd_restart_that_drops_connections(startup: Startup) -> None:
    """Expected: one "the cluster is not answering (cannot reach 127.0.0.1:2222: ...
    Connection refused); still trying" while sshd is down, then ready."""
    seen = _during_wait(startup, "sshd")
    assert any(NOT_ANSWERING in ln for ln in seen), seen
    _wait_succeeded(startup)


def test_wait_rides_out_the_login_node_gone_for_a_while(startup: Startup) -> None:
    """Seen on the lab (35 s, the job pending): nothing; the poll under way stalls until the
    port opens again (packets are dropped, TCP retransmits), then `wait` goes on. A poll that
    stalls past its 30 s limit says the one "the cluster is not answering ...; still trying"
    line instead. Either way: no other line, then ready."""
    seen = _during_wait(startup, "outage")
    assert all(NOT_ANSWERING in ln for ln in seen), seen
    _wait_succeeded(startup)


def test_logs_follow_resumes_after_an_sshd_restart_without_losing_or_repeating(
    startup: Startup,
) -> None:
    """Expected: "(the connection ... dropped ...; still following)" on stderr, and every line
    of node-0.log exactly once, in order."""
    notes = [ln for ln in startup.follow.lines() if "still following" in ln]
    log(f"`logs --follow` said: {notes}")
    assert notes, startup.follow.lines()
    assert not any("Traceback" in ln or "internal error" in ln for ln in startup.follow.lines())
    shown = [ln for ln in startup.follow.lines("out") if not ln.startswith("(no output yet")]
    text = Path(startup.job["job_dir"], "node-0.log").read_text(errors="replace")
    written = [
        ln for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()
    ]
    assert shown == written[: len(shown)], "lines lost or repeated"
    assert len(shown) > 10


# -- 2, 4: under a tunnel ------------------------------------------------------------------------
@contextlib.contextmanager
def background_tunnel(job_id: str) -> Iterator[tuple[str, dict[str, str]]]:
    up = hpcserve("tunnel", job_id, "--background", timeout=120)
    m = re.search(r"OpenAI base URL: (http://127\.0\.0\.1:\d+)/v1", up.stdout + up.stderr)
    assert m, up.stdout + up.stderr
    rec = status(job_id)["record"]
    key = Path(rec["api_key_file"]).read_text().strip()
    try:
        yield m.group(1), {"Authorization": f"Bearer {key}"}
    finally:
        hpcserve("tunnel", "--stop", job_id, check=False)


def models_ok(url: str, headers: dict[str, str], timeout: float = 10) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v1/models", headers=headers, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def tunnel_log(lab_state_dir: Path) -> list[str]:
    return [
        ln
        for f in sorted((lab_state_dir / "tunnels").glob("*.log"))
        for ln in f.read_text().splitlines()
    ]


def test_tunnel_reconnects_after_an_sshd_restart(
    startup: Startup, second_job: dict[str, Any], lab_state_dir: Path
) -> None:
    """Expected: the tunnel logs "SSH connection lost; reconnecting", "reconnect failed
    (cannot reach ...)" while sshd is down, "SSH connection re-established; still on
    127.0.0.1:PORT"; the same URL answers again within seconds; nothing lost."""
    jid = startup.job["job_id"]
    with background_tunnel(jid) as (url, headers):
        assert models_ok(url, headers)
        t0 = time.monotonic()
        faults.restart("sshd", down_s=3, sessions=True)
        until("the tunnel answering again", lambda: models_ok(url, headers), 90, 1)
        log(f"tunnel answered again {time.monotonic() - t0:.1f} s after the sshd restart began")
        lines = tunnel_log(lab_state_dir)
        log(f"tunnel log: {lines}")
        assert any("re-established" in ln for ln in lines), lines
    q = hpcserve("query", jid, "Hello", "--max-tokens", "4", timeout=300)
    clean(q)


def test_tunnel_rides_out_the_login_node_gone_for_a_while(
    startup: Startup, lab_state_dir: Path
) -> None:
    """Expected: a request sent during the outage waits; it answers once the link is back
    (TCP retransmits) for outages under the tunnel's 45 s keepalive, else the tunnel
    reconnects and the next request answers. The same URL answers after it."""
    import requests

    jid = startup.job["job_id"]
    with background_tunnel(jid) as (url, headers):
        assert models_ok(url, headers)
        outcome: dict[str, Any] = {}

        def during() -> None:
            t = time.monotonic()
            try:
                r = requests.get(f"{url}/v1/models", headers=headers, timeout=OUTAGE_S + 90)
                outcome["during"] = f"HTTP {r.status_code} after {time.monotonic() - t:.1f} s"
            except requests.RequestException as e:
                outcome["during"] = f"{type(e).__name__} after {time.monotonic() - t:.1f} s"

        th = threading.Thread(target=during)
        with faults.login_blocked():
            time.sleep(2)
            th.start()
            time.sleep(OUTAGE_S)
        t1 = time.monotonic()
        until("the tunnel answering again", lambda: models_ok(url, headers), 120, 1)
        th.join(OUTAGE_S + 120)
        log(
            f"request during the outage: {outcome.get('during')}; the tunnel answered "
            f"{time.monotonic() - t1:.1f} s after the port opened; log: {tunnel_log(lab_state_dir)}"
        )


# -- 5: munge ------------------------------------------------------------------------------------
def test_munge_stopped_status_names_munge_then_recovers(startup: Startup) -> None:
    """Expected: `status` exits 1 with one line "error: SLURM's authentication (munge) failed
    on root@127.0.0.1:2222: ..."; `list` still works (no SLURM call); once munged is back,
    `status` says ready again. Nothing lost."""
    jid = startup.job["job_id"]
    before = records()
    with faults.daemon_down("munged"):
        p = hpcserve("status", jid, check=False)
        line = one_line_error(p, "munge")
        log(f"status with munged stopped: {line}")
        assert jid in records()
    until("status ready after munged is back", lambda: status(jid).get("ready"), 90, 3)
    assert_records_intact(before)


# -- 6: the job directory ------------------------------------------------------------------------
def test_submit_into_a_read_only_job_directory_fails_in_one_line(
    startup: Startup, lab_cluster: dict[str, Any]
) -> None:
    """Expected: exit 1, "error: cannot create /var/lib/hpcserve-lab/jobs/ro-... on the login
    node: Failure (sh: 1: cannot create ...: Read-only file system)"; nothing submitted or
    recorded."""
    before = records()
    with faults.read_only(LAB.jobs_dir):
        p = hpcserve(
            "submit", "--site", "local", "--nodes", "2", "--model", lab_cluster["model"],
            "--name", "ro", check=False,
        )  # fmt: skip
    log(f"submit into a read-only job directory: {p.stderr.strip()}")
    one_line_error(p, "Read-only file system")
    assert records().keys() == before.keys()


def test_submit_into_a_full_job_directory_fails_in_one_line(
    startup: Startup, lab_cluster: dict[str, Any]
) -> None:
    """Expected: exit 1, "error: cannot write .../launcher.sbatch on the login node: Failure
    (head: error writing 'standard output': No space left on device)"; nothing submitted or
    recorded."""
    before = records()
    with faults.full(LAB.jobs_dir):
        p = hpcserve(
            "submit", "--site", "local", "--nodes", "2", "--model", lab_cluster["model"],
            "--name", "full", check=False,
        )  # fmt: skip
    log(f"submit into a full job directory: {p.stderr.strip()}")
    one_line_error(p, "No space left on device")
    assert records().keys() == before.keys()


def test_running_job_carries_on_when_its_directory_turns_read_only(startup: Startup) -> None:
    """Expected: status, logs and query work as before (after submit the product only reads
    the job directory; the lab's nodes keep their own view of it)."""
    jid = startup.job["job_id"]
    with faults.read_only(Path(startup.job["job_dir"])):
        assert status(jid)["ready"] is True
        lg = hpcserve("logs", jid, "--tail", "3")
        clean(lg)
        q = hpcserve("query", jid, "Hello", "--max-tokens", "4", timeout=300)
        clean(q)
        log(f"with the job directory read-only: logs {lg.stdout.splitlines()[-1:]}, query ok")


# -- 7: the registry -----------------------------------------------------------------------------
def test_damaged_registry_records_are_set_aside_and_the_rest_survive(
    startup: Startup, lab_state_dir: Path
) -> None:
    """Expected: `list` warns in one line ("warning: the registry record of job local:999999
    ... is unreadable (...): kept as ....damaged-TIME; the other records are intact") and
    lists the others; `status ID` of a truncated record exits 1 with one line naming the kept
    copy; with the record put back, `status` works again. Two writers at once:
    tests/test_registry.py::test_twenty_parallel_submits_lose_nothing."""
    from hpcserve.jobs.record import JobRecord
    from hpcserve.jobs.registry import Registry

    jid = startup.job["job_id"]
    reg = Registry(lab_state_dir)
    decoy = JobRecord("999999", "local", "m", 2, 2, 1, "/nowhere", time.time(), True, name="decoy")
    reg.add(decoy)
    before = records()
    folder = lab_state_dir / "jobs" / "local"
    faults.damage(folder / "999999.json", "garbage")
    p = hpcserve("list")
    clean(p)
    warn = [ln for ln in p.stderr.splitlines() if ln.startswith("warning:")]
    log(f"list with a damaged record: {warn}")
    assert len(warn) == 1 and "local:999999" in warn[0] and "kept as" in warn[0], p.stderr
    assert jid in p.stdout and "decoy" not in p.stdout
    assert status(jid)["ready"] is True

    record = folder / f"{jid}.json"
    original = faults.damage(record, "truncate")
    try:
        p = hpcserve("status", jid, check=False)
        line = one_line_error(p, "unreadable", "kept as")
        log(f"status of a job whose record was truncated: {line}")
    finally:
        record.write_bytes(original)  # the user puts it back (a truncated copy holds nothing)
        for kept in folder.glob(f"{jid}.json.damaged-*"):
            kept.unlink()
    assert status(jid)["ready"] is True
    del before["999999"]
    assert_records_intact(before)


# -- 3: processes and nodes die ------------------------------------------------------------------
def test_head_vllm_killed_fails_the_job_naming_node_0(second_job: dict[str, Any]) -> None:
    """Expected: `wait` exits 1, "error: job faults-b (ID) failed: a node's vLLM process died
    on node 0"; no vLLM of the job left; its record stays."""
    jid = second_job["job_id"]
    head, _worker = head_and_worker(jid)
    faults.kill_vllm(head, jid)
    w = hpcserve("wait", jid, "--timeout", "300", timeout=360, check=False)
    log(f"wait after the head's vLLM was killed: {w.returncode} {w.stderr.strip()}")
    one_line_error(w, "on node 0")
    st = status(jid)
    assert (st["failure"]["cause"], st["failure"]["node"]) == ("process_died", 0), st["failure"]
    until("no vLLM of the job left", lambda: not faults.vllm_pids(head, jid), 120)
    assert jid in records()


def test_worker_vllm_killed_fails_the_serving_job_naming_node_1(startup: Startup) -> None:
    """Expected: `status` turns failed within seconds: "cause: a node's vLLM process died
    (node 1)", line "srun: error: nodeK: task 1: Killed"; the record stays."""
    jid = startup.job["job_id"]
    _head, worker = head_and_worker(jid)
    faults.kill_vllm(worker, jid)
    st = until("the job failed", lambda: (s := status(jid))["finished"] and s, 120)
    log(f"status after a worker's vLLM was killed: {st['detail']} / {st['failure']}")
    assert (st["failure"]["cause"], st["failure"]["node"]) == ("process_died", 1), st["failure"]
    p = hpcserve("status", jid, check=False)
    clean(p)
    assert "(node 1)" in p.stdout
    assert jid in records()


def test_worker_slurmd_killed_status_names_the_lost_node(
    lab_cluster: dict[str, Any], startup: Startup
) -> None:
    """Expected: after SlurmdTimeout (30 s) the controller sets the node DOWN; the batch log
    says "srun: error: Node failure on nodeK": `status` shows "failed: SLURM lost a node" or,
    as SLURM requeues a batch job by default, "requeued after a node failure on nodeK;
    waiting ...", naming the node either way. The node serves again once slurmd is back."""
    job = submit(lab_cluster["model"], "faults-c")
    jid = job["job_id"]
    _head, worker = head_and_worker(jid)
    until("the worker's vLLM", lambda: faults.vllm_pids(worker, jid), 300, 1)
    node = f"node{worker}"
    try:
        with faults.daemon_down(f"slurmd-{node}", sig=signal.SIGKILL):

            def node_named() -> dict[str, Any] | None:
                st = status(jid)
                f = st.get("failure") or {}
                return st if f.get("cause") == "node_failure" else None

            st = until("status naming the node failure", node_named, 180, 5)
            log(f"status with slurmd of {node} killed: {st['state']}: {st['detail']}")
            p = hpcserve("status", jid, check=False)
            clean(p)
            log("status printed:\n  " + "\n  ".join(p.stdout.splitlines()))
            assert st["failure"]["host"] == node or node in st["detail"], st
        until(
            f"{node} back in service",
            lambda: subprocess.run(
                ["sinfo", "-h", "-n", node, "-o", "%T"],
                capture_output=True, text=True, check=False,
                env={**os.environ, "SLURM_CONF": str(LAB.slurm_conf)},
            ).stdout.strip() in ("idle", "mixed", "allocated"),
            120, 3,
        )  # fmt: skip
    finally:
        hpcserve("cancel", jid, check=False)
    assert jid in records()
