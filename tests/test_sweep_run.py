"""`hpcserve sweep` on this machine's side, with a fake scheduler and a local job directory:
each layout is waited for, benchmarked through the API it publishes, stopped; one that fails
is a row with its cause from the logs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import venv_site
from fakes import FakeClock

from hpcserve.cluster.executor import LocalExecutor
from hpcserve.cluster.slurm import SchedJob
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.watch import JobWatch
from hpcserve.net.bench import BenchSpec, Metrics
from hpcserve.sweep.job import EXIT, STOP, SweepJob, plan_sweep
from hpcserve.sweep.layouts import sweep_layouts
from hpcserve.sweep.run import SweepRun, wait_layout

CPU = Path(__file__).parent / "data" / "vllm-cpu"
HEADS_LINE = (
    "ValueError: Total number of attention heads (6) must be divisible by tensor parallel size (4)."
)


class FakeSlurm:
    """The sweep job keeps running (or has ended) whatever the layouts do."""

    def __init__(self, state: str = "RUNNING") -> None:
        self.state = state
        self.cancelled: list[str] = []

    def query(self, ids: list[str]) -> dict[str, SchedJob]:
        return {i: SchedJob(i, self.state, exit_code="0:0" if self.state != "RUNNING" else None)
                for i in ids}  # fmt: skip

    def scontrol(self, job_id: str) -> None:
        return None

    def cancel(self, job_id: str, signal: str | None = None) -> None:
        self.cancelled.append(job_id)


@pytest.fixture
def api_port() -> Iterator[int]:
    """Something listening on 127.0.0.1, as a head's API port (reached directly, no tunnel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SweepJob:
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    site = venv_site()
    lays = sweep_layouts(site, None, 2, "auto")  # TP=2, PP=2, DP=2
    job = plan_sweep(site, "m", 2, lays, home=str(tmp_path), sweep_dir=str(tmp_path / "sw"))
    for lj in job.layouts:
        Path(lj.job_dir).mkdir(parents=True)
    return job


def publish(job_dir: str, port: int) -> None:
    endpoint = {"job_id": "77", "head_addr": "127.0.0.1", "head_host": "n1", "api_port": port,
                "master_port": port + 1}  # fmt: skip
    Path(job_dir, "endpoint.json").write_text(json.dumps(endpoint))


def metrics(conc: int, failed: int = 0) -> Metrics:
    return Metrics(
        completed=4 - failed, failed=failed, duration=1.0, total_input_tokens=4,
        total_output_tokens=8, request_throughput=4.0, output_throughput=8.0 * conc,
        total_token_throughput=12.0, max_output_tokens_per_s=8.0, max_concurrent_requests=conc,
        stats_ms={"p95_ttft_ms": 10.0}, max_concurrency=conc,
    )  # fmt: skip


def test_each_layout_is_benched_or_reported_with_its_cause(sweep: SweepJob, api_port: int) -> None:
    tp, pp, dp = sweep.layouts
    publish(tp.job_dir, api_port)  # TP across nodes answers
    publish(pp.job_dir, api_port)  # PP answers /health, then the CPU engine dies under load
    Path(pp.job_dir, "node-0.log").write_text((CPU / "pp2-head-fails.log").read_text())
    Path(dp.job_dir, "node-0.log").write_text(f"(EngineCore pid=1) ERROR {HEADS_LINE}\n")
    Path(dp.job_dir, EXIT).write_text("1\n")  # DP never answered: its launcher exited
    benched: list[tuple[str, str | None]] = []

    def bench(url: str, key: str | None, spec: BenchSpec) -> tuple[list[Metrics], list[str]]:
        benched.append((url, key))
        failed = 4 if len(benched) == 2 else 0  # the PP layout's requests fail
        return [metrics(c, failed) for c in spec.concurrencies], []

    clock = FakeClock()
    run = SweepRun(
        sweep, "77", LocalExecutor(), BenchSpec(concurrencies=(1, 8)), bench=bench,
        probe=lambda url: True, slurm=FakeSlurm(), clock=clock, sleep=clock.sleep,  # type: ignore[arg-type]
    )  # fmt: skip
    results = list(run.results())
    assert benched == [(f"http://127.0.0.1:{api_port}", sweep.api_key)] * 2
    ok, pp_row, dp_row = results
    assert ok.ok and [m.max_concurrency for m in ok.runs] == [1, 8] and ok.label == "dp1-tp2-pp1"
    assert not pp_row.ok and pp_row.failure is not None
    assert pp_row.failure.cause == "process_died"
    assert "EngineCore encountered a fatal error" in pp_row.reason
    assert not dp_row.ok and dp_row.failure is not None and dp_row.failure.cause == "layout_heads"
    assert dp_row.runs == []
    for lj in sweep.layouts:  # every layout was told to stop, so the sweep job moves on
        assert Path(lj.job_dir, STOP).exists()


def test_a_layout_that_never_answers_times_out_with_the_reason(sweep: SweepJob) -> None:
    lj = sweep.layouts[0]
    rec = JobRecord("77", "cpu-venv", "m", 2, 2, 1, lj.job_dir, 0.0, False)
    clock = FakeClock()
    watch = JobWatch(rec, LocalExecutor(), slurm=FakeSlurm(), probe=lambda url: False)  # type: ignore[arg-type]
    why = wait_layout(watch, lj.path(EXIT), 30, clock=clock, sleep=clock.sleep)
    assert why == "the API did not answer within 30 s"


def test_the_sweep_job_ending_ends_the_wait(sweep: SweepJob) -> None:
    lj = sweep.layouts[0]
    rec = JobRecord("77", "cpu-venv", "m", 2, 2, 1, lj.job_dir, 0.0, False)
    clock = FakeClock()
    watch = JobWatch(rec, LocalExecutor(), slurm=FakeSlurm("TIMEOUT"), probe=lambda url: True)  # type: ignore[arg-type]
    why = wait_layout(watch, lj.path(EXIT), 300, clock=clock, sleep=clock.sleep)
    assert why == "the sweep job ended (TIMEOUT) before this layout answered"
