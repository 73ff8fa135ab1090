"""status/logs/wait/cancel/list against a fake SLURM (FakeCluster, named as such) and a
stand-in HTTP server for /health. No real scheduler is involved here; see
tests/test_jobs_cluster.py for the real one."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from pathlib import Path

import pytest
from cliutil import run_main
from conftest import venv_site
from fakes import FakeExecutor, data, result

from hpcserve.errors import RemoteError
from hpcserve.jobs.handle import Jobs
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.registry import Registry
from hpcserve.jobs.watch import WaitTiming

STARTUP = data("vllm-lines", "startup-gpu.log")


class FakeCluster:
    """A fake SLURM: job states change when the test says so; squeue/scontrol/scancel answer
    from them in SLURM's output formats."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.steps: dict[str, list[str]] = {}
        self.script: dict[str, list[str]] = {}  # job id -> states to go through, one per squeue
        self.ex = FakeExecutor(self.respond)
        self.opened: list[str] = []  # site names the commands connected to

    def connect(self, site_name: str):
        """The site opener the job client gets: every site is this fake cluster."""
        self.opened.append(site_name)
        return venv_site(name=site_name), self.ex

    def client(self) -> Jobs:
        return Jobs(connect=self.connect, timing=FAST)

    def run(self, capsys, *args: str):
        """``hpcserve ARGS`` in-process, the job commands reaching this fake cluster."""
        return run_main(capsys, *args, obj=self.client())

    def add(self, job_id: str, state: str, **kw) -> None:
        self.jobs[job_id] = {
            "state": state,
            "reason": "None",
            "nodes": 2,
            "left": "4:31",
            "limit": "5:00",
            **kw,
        }

    def row(self, jid: str) -> str:
        j = self.jobs[jid]
        return (
            f"{jid}|{j['state']}|{j['reason']}|{j['nodes']}|lab-n[1-2]|{j['left']}|"
            f"{j['limit']}|N/A|0:29"
        )

    def respond(self, argv: list[str]):
        if argv[0] == "squeue":
            return self._steps(argv) if "-s" in argv else self._squeue(argv)
        if argv[0] == "scontrol":
            return result(argv, "", "slurm_load_jobs error: Invalid job id specified", 1)
        if argv[0] == "sacct":
            return result(argv, "")
        if argv[0] == "scancel":
            jid = argv[-1]
            self.jobs[jid]["state"] = "CANCELLED"
            self.steps[jid] = []
            return result(argv)
        if argv[0] == "find":
            return self._find(argv)
        return None

    def _steps(self, argv: list[str]):
        jid = argv[argv.index("-j") + 1]
        return result(argv, "".join(f"{s}\n" for s in self.steps.get(jid, [])))

    def _squeue(self, argv: list[str]):
        ids = argv[argv.index("-j") + 1].split(",")
        for jid in ids:
            if self.script.get(jid):
                self.jobs[jid]["state"] = self.script[jid].pop(0)
        rows = [self.row(j) for j in ids if j in self.jobs]
        if not rows:
            return result(argv, "", "slurm_load_jobs error: Invalid job id specified", 1)
        return result(argv, "\n".join(rows) + "\n")

    def _find(self, argv: list[str]):
        found = [p for p in self.ex.files if p.startswith(argv[1] + "/")]
        if not found:
            return result(argv, "", f"find: '{argv[1]}': No such file or directory", 1)
        return result(argv, "\n".join(found) + "\n")


FAST = WaitTiming(
    health_every=0.02,
    logs_every=0.02,
    sched_running_every=0.05,
    sched_pending_first=0.02,
    sched_pending_max=0.05,
)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    return FakeCluster()


def add_job(job_id: str, name: str | None = None, nodes: int = 2, age_days: float = 0) -> JobRecord:
    rec = JobRecord(
        job_id,
        "lab",
        "Qwen/Qwen3-8B",
        nodes,
        1,
        nodes,
        f"/jobs/{job_id}",
        time.time() - age_days * 86400,
        False,
        name=name,
    )
    Registry().add(rec)
    return rec


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def health_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def endpoint(job_id: str, port: int) -> str:
    return json.dumps(
        {
            "job_id": job_id,
            "head_addr": "127.0.0.1",
            "head_host": "lab-n1",
            "api_port": port,
            "master_port": 29500,
        }
    )


def test_wait_goes_through_phases_and_returns_url(env, capsys, health_server):
    add_job("42", name="qwen")
    env.add("42", "PENDING", reason="Resources")
    env.script["42"] = ["PENDING", "PENDING", "RUNNING"]
    env.ex.files["/jobs/42/node-0.log"] = STARTUP
    env.ex.files["/jobs/42/node-1.log"] = "INFO started\n"
    env.ex.files["/jobs/42/endpoint.json"] = endpoint("42", health_server)
    code, out, err = env.run(capsys, "wait", "qwen", "--timeout", "30")
    assert code == 0, err
    assert out.strip() == f"http://127.0.0.1:{health_server}"
    assert "waiting for nodes (Resources: waiting for free nodes)" in err
    assert "ready at" in err
    rec = Registry().get("qwen")
    assert rec.api_port == health_server and rec.head_host == "lab-n1"  # endpoint.json saved


def test_wait_reports_the_cause_and_node(env, capsys):
    add_job("43")
    env.add("43", "RUNNING")
    env.ex.files["/jobs/43/node-0.log"] = "INFO Starting to load model x...\n"
    env.ex.files["/jobs/43/node-1.log"] = (
        "(EngineCore_DP0 pid=412) ValueError: No available memory for the cache blocks. "
        "Try increasing `gpu_memory_utilization`.\n"
    )
    code, _out, err = env.run(capsys, "wait", "43", "--timeout", "30")
    assert code == 1
    assert "failed: not enough GPU memory left for the KV cache on node 1" in err
    assert "No available memory for the cache blocks" in err
    assert "hint: lower --max-model-len" in err


def test_wait_timeout_exits_3_and_backs_off_squeue(env, capsys):
    add_job("44")
    env.add("44", "PENDING", reason="Priority")
    code, _out, err = env.run(capsys, "wait", "44", "--timeout", "0.4")
    assert code == 3
    assert "not ready after 0.4 s" in err
    squeues = env.ex.commands("squeue")
    assert 1 <= len(squeues) < 15  # backed off, not one call per loop


def test_wait_on_timed_out_job(env, capsys):
    add_job("45")
    env.add("45", "TIMEOUT", reason="TimeLimit")
    env.ex.files["/jobs/45/slurm-45.out"] = (
        "slurmstepd: error: *** JOB 45 ON lab-n1 CANCELLED AT 2026-11-22T19:30:01 DUE TO TIME "
        "LIMIT ***\n"
    )
    code, _out, err = env.run(capsys, "wait", "45")
    assert code == 1
    assert "reached its wall-time limit" in err and "DUE TO TIME LIMIT" in err


def test_status_json_for_one_job(env, capsys):
    add_job("46")
    env.add("46", "RUNNING")
    lines = STARTUP.splitlines()
    cut = next(i for i, ln in enumerate(lines) if "Maximum concurrency" in ln)
    env.ex.files["/jobs/46/node-0.log"] = "\n".join(lines[: cut + 1]) + "\n"
    env.ex.files["/jobs/46/node-1.log"] = "\n".join(lines[: cut + 1]) + "\n"
    code, out, _err = env.run(capsys, "status", "46", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["state"] == "RUNNING" and d["phase"] == "kv_cache"
    assert d["progress"]["kv_cache_tokens"] == 100752
    assert d["time_left_s"] == 271


def test_status_text_shows_failure_line(env, capsys):
    add_job("47")
    env.add("47", "FAILED")
    env.ex.files["/jobs/47/node-0.log"] = (
        "ValueError: Total number of attention heads (32) must be divisible by tensor "
        "parallel size (3).\n"
    )
    code, out, _ = env.run(capsys, "status", "47")
    assert code == 1
    assert "cause:     tensor-parallel size does not divide the attention heads" in out
    assert "[node-0.log]" in out


def test_status_table_uses_one_squeue_call(env, capsys):
    add_job("50", name="a")
    add_job("51", name="b")
    env.add("50", "RUNNING")
    env.add("51", "PENDING", reason="Resources")
    code, out, _ = env.run(capsys, "status")
    assert code == 0
    assert len(env.ex.commands("squeue")) == 1
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["JOB", "NAME", "SITE", "STATE", "PHASE"]
    assert any(ln.split()[:5] == ["51", "b", "lab", "PENDING", "pending"] for ln in lines)


def test_logs_separates_head_and_workers(env, capsys):
    add_job("60")
    env.ex.files["/jobs/60/node-0.log"] = "head line\n"
    env.ex.files["/jobs/60/node-1.log"] = "worker line 1\nworker line 2\n"
    code, out, _ = env.run(capsys, "logs", "60")
    assert code == 0
    assert "==> node-0.log (head)" in out and "==> node-1.log (worker 1)" in out
    assert out.index("head line") < out.index("==> node-1.log") < out.index("worker line 1")
    code, out, _ = env.run(capsys, "logs", "60", "--node", "1", "-n", "1")
    assert out.strip() == "worker line 2"
    code, _out, err = env.run(capsys, "logs", "60", "--node", "5")
    assert code == 2 and "--node must be between 0 and 1" in err


def test_logs_follow_stops_when_job_ends(env, capsys):
    add_job("61", nodes=1)
    env.add("61", "RUNNING")
    env.script["61"] = ["RUNNING", "COMPLETED"]
    env.ex.files["/jobs/61/node-0.log"] = "first\n"
    code, out, err = env.run(capsys, "logs", "61", "--node", "0", "-f")
    assert code == 0 and "first" in out and "is COMPLETED" in err


def test_cancel_confirms_and_forgets(env, capsys):
    add_job("70", name="big")
    env.add("70", "RUNNING")
    env.steps["70"] = ["70.0", "70.batch"]
    env.ex.files["/jobs/70/slurm-70.out"] = (
        "slurmstepd: error: *** JOB 70 ON lab-n1 CANCELLED AT 2026-11-22T19:40:00 ***\n"
    )
    code, out, _ = env.run(capsys, "cancel", "big", "--forget")
    assert code == 0, out
    assert ["scancel", "70"] in env.ex.calls
    assert "scheduler state CANCELLED" in out and "no job steps left" in out
    assert "CANCELLED AT 2026-11-22T19:40:00" in out
    assert "forgot job big (70)" in out
    assert Registry().list() == []


def test_cancel_of_finished_job_does_not_scancel(env, capsys):
    add_job("71")
    env.add("71", "COMPLETED")
    code, out, _ = env.run(capsys, "cancel", "71")
    assert code == 0 and "nothing to cancel" in out
    assert env.ex.commands("scancel") == []


def test_list_and_prune(env, capsys):
    add_job("80", name="old-done", age_days=10)
    add_job("81", name="old-running", age_days=10)
    add_job("82", name="new", age_days=0)
    env.add("80", "COMPLETED")
    env.add("81", "RUNNING")
    code, out, _ = env.run(capsys, "list")
    assert code == 0 and "old-done" in out and "new" in out
    assert env.ex.calls == []  # list does not call the scheduler
    code, out, _ = env.run(capsys, "list", "--prune", "--older-than", "7")
    assert "forgot lab:80 (old-done)" in out
    assert sorted(r.job_id for r in Registry().list()) == ["81", "82"]


def test_unknown_job_is_a_one_line_error(env, capsys):
    code, _out, err = env.run(capsys, "status", "nope")
    assert code == 2
    assert err.startswith("error: no job 'nope' in the registry")
    assert "Traceback" not in err


def test_wait_rejects_bad_timeout(env, capsys):
    add_job("90")
    code, _out, err = env.run(capsys, "wait", "90", "--timeout", "-1")
    assert code == 2 and "--timeout must be a positive" in err


def test_no_heavy_imports_at_module_level():
    import subprocess
    import sys

    code = (
        "import sys, hpcserve.cli.jobs, hpcserve.jobs.watch, hpcserve.cluster.slurm; "
        "print('requests' in sys.modules, 'paramiko' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    ).stdout
    assert out.split() == ["False", "False"]


def test_status_shows_the_nccl_verdict_of_the_job_s_nccl_logs(env, capsys):
    from hpcserve.nccl import nccl_summary_for_status

    log = Path(__file__).parent / "data" / "nccl" / "h200x4-socket.log"
    text = log.read_text()
    verdict = nccl_summary_for_status(text.splitlines())
    assert verdict is not None and "degraded" in verdict
    add_job("48")
    env.add("48", "RUNNING")
    env.ex.files["/jobs/48/nccl/node-0.n1.123.log"] = text
    code, out, _ = env.run(capsys, "status", "48")
    assert code == 0
    assert f"NCCL:      {verdict.removeprefix('NCCL: ')}" in out


def test_status_without_nccl_module_or_files(env, capsys):
    add_job("49")
    env.add("49", "RUNNING")
    code, out, _ = env.run(capsys, "status", "49")
    assert code == 0 and "NCCL" not in out


# -- status details, the table, list and logs edge cases ---------------------------------------
def _cut_after(marker: str) -> str:
    lines = STARTUP.splitlines()
    return "\n".join(lines[: next(i for i, ln in enumerate(lines) if marker in ln) + 1]) + "\n"


def test_status_text_of_a_ready_job_shows_kv_cache_version_and_endpoint(env, capsys, health_server):
    add_job("52", name="srv")
    env.add("52", "RUNNING")
    env.ex.files["/jobs/52/node-0.log"] = STARTUP
    env.ex.files["/jobs/52/node-1.log"] = STARTUP
    env.ex.files["/jobs/52/endpoint.json"] = endpoint("52", health_server)
    code, out, err = env.run(capsys, "status", "srv")
    assert code == 0, err
    url = f"http://127.0.0.1:{health_server}"
    assert out.splitlines() == [
        f"job srv (52) on lab: RUNNING - ready at {url}",
        "  model:     Qwen/Qwen3-8B (TP 1 x PP 2, 2 node(s))",
        "  nodes:     lab-n[1-2]",
        "  time left: 00:04:31 of 00:05:00",
        "  KV cache:  100,752 tokens, max concurrency 1.54x at 65,536 tokens",
        "  vLLM:      0.11.0",
        f"  endpoint:  {url} (answering)",
    ]


def test_status_text_of_the_kv_cache_size_before_the_concurrency_line(env, capsys):
    add_job("53")
    env.add("53", "RUNNING")
    env.ex.files["/jobs/53/node-0.log"] = _cut_after("GPU KV cache size")
    code, out, _ = env.run(capsys, "status", "53")
    assert code == 0
    assert "  KV cache:  100,752 tokens" in out.splitlines()
    assert "max concurrency" not in out and "endpoint:" not in out


def test_status_text_names_the_failing_node(env, capsys):
    add_job("54")
    env.add("54", "FAILED")
    env.ex.files["/jobs/54/node-1.log"] = (
        "(EngineCore_DP0 pid=412) ValueError: No available memory for the cache blocks. "
        "Try increasing `gpu_memory_utilization`.\n"
    )
    code, out, _ = env.run(capsys, "status", "54")
    assert code == 1
    lines = out.splitlines()
    assert "  cause:     not enough GPU memory left for the KV cache (node 1)" in lines
    assert (
        "  line [node-1.log]: ValueError: No available memory for the cache blocks. "
        "Try increasing `gpu_memory_utilization`." in lines
    )
    assert any(ln.startswith("  hint:      lower --max-model-len") for ln in lines)


def test_status_watch_prints_each_change_under_a_time_line(env, capsys):
    add_job("55", nodes=1)
    env.add("55", "PENDING", reason="Resources")
    env.script["55"] = ["PENDING", "COMPLETED"]
    code, out, _ = env.run(capsys, "status", "55", "--watch", "--interval", "0.1")
    assert code == 0
    heads = [ln for ln in out.splitlines() if ln.startswith("job 55 on lab: ")]
    assert [h.split(" - ")[0] for h in heads] == [
        "job 55 on lab: PENDING",
        "job 55 on lab: COMPLETED",
    ]
    between = out.split(heads[0], 1)[1].split(heads[1], 1)[0].splitlines()
    assert re.fullmatch(r"--- \d\d:\d\d:\d\d", between[-1])


def _unreachable(env: FakeCluster, site_name: str) -> Jobs:
    """The fake cluster's client, except that ``site_name`` cannot be reached."""

    def connect(name: str):
        if name == site_name:
            raise RemoteError(f"cannot connect to {name}: timed out")
        return env.connect(name)

    return Jobs(connect=connect, timing=FAST)


def test_status_table_marks_the_jobs_of_an_unreachable_site(env, capsys):
    add_job("56", name="here")
    Registry().add(JobRecord("7", "far", "m", 1, 1, 1, "/jobs/7", time.time(), True, name="there"))
    env.add("56", "RUNNING")
    code, out, err = run_main(capsys, "status", obj=_unreachable(env, "far"))
    assert code == 0
    rows = [ln.split() for ln in out.splitlines()]
    assert ["7", "there", "far", "?", "?", "-", "m"] in rows
    assert any(r[:4] == ["56", "here", "lab", "RUNNING"] for r in rows)
    assert err == "warning: far: cannot connect to far: timed out\n"


def test_status_table_json(env, capsys):
    add_job("57", name="here")
    Registry().add(JobRecord("8", "far", "m", 1, 1, 1, "/jobs/8", time.time(), True))
    env.add("57", "PENDING", reason="Priority")
    code, out, _ = run_main(capsys, "status", "--json", obj=_unreachable(env, "far"))
    assert code == 0
    by_id = {d["record"]["job_id"]: d for d in json.loads(out)}
    assert by_id["57"]["state"] == "PENDING" and by_id["57"]["record"]["name"] == "here"
    assert by_id["8"]["error"] == "cannot connect to far: timed out"
    assert "state" not in by_id["8"]


def test_status_table_of_an_empty_registry(env, capsys):
    code, out, _ = env.run(capsys, "status")
    assert (code, out) == (0, "no jobs in the registry (`hpcserve submit` adds them)\n")
    code, out, _ = env.run(capsys, "status", "--json")
    assert (code, json.loads(out)) == (0, [])
    assert env.ex.calls == []


def test_wait_on_a_job_that_ended_without_a_failure(env, capsys):
    add_job("58")
    env.add("58", "COMPLETED")
    code, out, err = env.run(capsys, "wait", "58", "-q")
    assert (code, out) == (1, "")
    assert err == "error: job 58 the server exited (job COMPLETED)\n"


def test_list_json_and_an_empty_list(env, capsys):
    code, out, _ = env.run(capsys, "list")
    assert (code, out) == (0, "no jobs in the registry\n")
    rec = add_job("83", name="x")
    code, out, _ = env.run(capsys, "list", "--json")
    assert code == 0
    assert json.loads(out) == [rec.to_dict()]
    assert env.ex.calls == []


def test_prune_json_keeps_the_jobs_of_an_unreachable_site(env, capsys):
    add_job("84", name="done", age_days=10)
    old = time.time() - 10 * 86400
    Registry().add(JobRecord("9", "far", "m", 1, 1, 1, "/jobs/9", old, True, name="kept"))
    env.add("84", "COMPLETED")
    code, out, err = run_main(capsys, "list", "--prune", "--json", obj=_unreachable(env, "far"))
    assert code == 0
    d = json.loads(out)
    assert [r["job_id"] for r in d["removed"]] == ["84"]
    assert d["kept_unreachable"] == ["far: cannot connect to far: timed out"]
    assert err == "warning: kept jobs of far: cannot connect to far: timed out\n"
    assert [r.job_id for r in Registry().list()] == ["9"]


def test_prune_text_counts_what_it_kept(env, capsys):
    add_job("85", name="running", age_days=10)
    env.add("85", "RUNNING")
    code, out, _ = env.run(capsys, "list", "--prune")
    assert code == 0
    assert out == (
        "pruned 0 job(s) older than 7 day(s); kept 1 still queued or on unreachable sites\n"
    )


def test_logs_of_a_job_with_nothing_written_yet(env, capsys):
    add_job("63", nodes=1)
    code, out, _ = env.run(capsys, "logs", "63")
    assert code == 0
    assert out.splitlines() == [
        "==> node-0.log (head): /jobs/63/node-0.log <==",
        "(no output yet)",
        "==> batch step: /jobs/63/slurm-63.out <==",
        "(no output yet)",
    ]
    code, out, _ = env.run(capsys, "logs", "63", "--batch")
    assert out == "(no output yet in /jobs/63/slurm-63.out)\n"
    code, out, _ = env.run(capsys, "logs", "63", "--node", "0", "-n", "0")
    assert out == "(no output yet in /jobs/63/node-0.log)\n"


def test_logs_follow_of_every_node_heads_each_log_as_it_speaks(env, capsys):
    add_job("64")
    env.add("64", "COMPLETED")  # the first scheduler look while following: the job ended
    env.ex.files["/jobs/64/node-0.log"] = "head 1\n"
    env.ex.files["/jobs/64/node-1.log"] = "worker 1\n"
    run = env.ex.run

    def growing(argv, **kw):
        res = run(argv, **kw)
        if (
            argv[0] == "tail"
            and argv[-1] == "/jobs/64/slurm-64.out"
            and "head 2" not in (env.ex.files["/jobs/64/node-0.log"])
        ):  # every log read once: then both nodes write a line, node 1 an unfinished one
            env.ex.files["/jobs/64/node-0.log"] += "head 2\n"
            env.ex.files["/jobs/64/node-1.log"] += "worker 2\nworker 3 cut"
        return res

    env.ex.run = growing
    code, out, err = env.run(capsys, "logs", "64", "-f")
    assert code == 0
    followed = out.split("(no output yet)\n", 1)[1].splitlines()
    assert followed == [
        "==> node-0.log (head) <==",
        "head 2",
        "==> node-1.log (worker 1) <==",
        "worker 2",
        "worker 3 cut",  # the last line, shown once the job ended
    ]
    assert err == "(job 64 is COMPLETED)\n"


def test_status_reads_only_the_first_8_files_of_the_nccl_dir(env, capsys):
    text = (Path(__file__).parent / "data" / "nccl" / "h200x4-socket.log").read_text()
    add_job("59")
    env.add("59", "RUNNING")
    for k in range(8):
        env.ex.files[f"/jobs/59/nccl/node-0.h.{k}.log"] = "INFO nothing from NCCL here\n"
    env.ex.files["/jobs/59/nccl/node-0.h.8.log"] = text  # the 9th file
    env.ex.files["/jobs/59/node-0.log"] = text  # a node log: not status's to read
    code, out, _ = env.run(capsys, "status", "59")
    assert code == 0 and "NCCL:" not in out
    env.ex.files["/jobs/59/nccl/node-0.h.0.log"] = text
    code, out, _ = env.run(capsys, "status", "59")
    assert code == 0 and "  NCCL:      degraded" in out
