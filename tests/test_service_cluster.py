"""Serving past the walltime on the local lab (real slurmctld/slurmd/sshd/vLLM): a service of
1-node jobs with a 3-minute limit behind one `hpcserve tunnel`, a client sending a request
every 0.5 s across two handovers; the same client against a plain job reaching its limit;
`scontrol requeue` of a service's job; `--idle-stop 1m`.

Run alone: sudo python -m pytest -p no:cacheprovider -ra tests/test_service_cluster.py -s
(about 20 minutes; -s shows the handovers, coverage and latencies each test prints). What may
need adjusting on the lab: SERVICE_TIME (the jobs' --time, minutes) if vLLM loads slower than
about a minute there, and MAX_MINUTES.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliutil import REPO, hpcserve_ok, status_json

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SERVICE_TIME = "3"  # minutes: short, so handovers come fast
MAX_MINUTES = 14.0  # the longest a test waits for its handovers


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "service_handover", REPO / "bench/service_handover.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


hpcserve = hpcserve_ok


status = status_json


def chain_of(name: str) -> dict[str, Any]:
    found: dict[str, Any] = status(name).get("service", {}).get("chain", {})
    return found


@pytest.fixture
def named(lab_cluster: dict[str, Any], lab_state_dir: Path) -> Iterator[list[str]]:
    """Names this test submits; each is cancelled (a service: its whole chain) at the end."""
    names: list[str] = []
    yield names
    for name in names:
        hpcserve("tunnel", "--stop", name, check=False)
        hpcserve("cancel", name, check=False)


def submit(model: str, name: str, *options: str) -> None:
    hpcserve("submit", "--site", "local", "--model", model, "--name", name, *options)
    w = hpcserve("wait", name, "--timeout", "900", timeout=960, check=False)
    assert w.returncode == 0, w.stderr


def tunnel_env(name: str) -> dict[str, Any]:
    hpcserve("tunnel", name, "--background", timeout=120)
    env: dict[str, Any] = json.loads(hpcserve("env", name, "--json").stdout)
    return env


def test_a_service_serves_across_two_handovers_without_a_failed_request(
    lab_cluster: dict[str, Any], named: list[str]
) -> None:
    model = lab_cluster["model"]
    named.append("keep")
    submit(model, "keep", "--keep-alive", "--time", SERVICE_TIME)
    env = tunnel_env("keep")
    prober = bench.Prober(env["base_url"], env["api_key"], model).start()
    deadline = time.monotonic() + MAX_MINUTES * 60
    try:
        while len(chain_of("keep").get("handovers", [])) < 2 and time.monotonic() < deadline:
            time.sleep(10)
        time.sleep(20)  # requests after the second handover too
    finally:
        probes = prober.stop()
    chain = chain_of("keep")
    seen = bench.summary(probes)
    print(f"\nhandovers: {[(h['from_job'], h['to_job']) for h in chain['handovers']]}")
    print(f"gaps: {chain['gaps']}")
    print(f"client: {json.dumps(seen)}")
    assert len(chain["handovers"]) >= 2, chain
    assert seen["failed"] == 0, seen
    assert chain["gaps"] == []
    ended = [j for j in chain["jobs"].values() if j["end_cause"]]
    assert ended and all(j["end_cause"] == "handover" for j in ended)  # none hit its limit
    cancel = hpcserve("cancel", "keep")
    assert "every job of its chain left the queue" in cancel.stdout
    named.remove("keep")


def test_a_plain_job_reaching_its_time_limit_loses_requests(
    lab_cluster: dict[str, Any], named: list[str]
) -> None:
    model = lab_cluster["model"]
    named.append("plain")
    submit(model, "plain", "--time", SERVICE_TIME)
    env = tunnel_env("plain")
    prober = bench.Prober(env["base_url"], env["api_key"], model, timeout_s=10).start()
    deadline = time.monotonic() + MAX_MINUTES * 60
    try:
        while status("plain")["state"] in ("RUNNING", "COMPLETING") and time.monotonic() < deadline:
            time.sleep(5)
        time.sleep(30)  # what a user sees after the end
    finally:
        probes = prober.stop()
    seen = bench.summary(probes)
    print(f"\nplain job: {json.dumps(seen)}; state {status('plain')['state']}")
    assert seen["failed"] > 0  # what a user loses today without --keep-alive


def test_scontrol_requeue_of_a_service_job_and_the_tunnel_follows(
    lab_cluster: dict[str, Any], named: list[str]
) -> None:
    model = lab_cluster["model"]
    named.append("requeue")
    submit(model, "requeue", "--keep-alive", "--time", "20")
    env = tunnel_env("requeue")
    first = status("requeue")["job_id"]
    prober = bench.Prober(env["base_url"], env["api_key"], model, timeout_s=10).start()
    try:
        time.sleep(5)
        conf = {
            **os.environ,
            **({"SLURM_CONF": lab_cluster["slurm_conf"]} if lab_cluster.get("slurm_conf") else {}),
        }
        req = subprocess.run(
            ["scontrol", "requeue", first], env=conf, capture_output=True, text=True, check=False
        )
        assert req.returncode == 0, req.stderr
        requeued_at = time.time()
        deadline = time.monotonic() + MAX_MINUTES * 60
        while time.monotonic() < deadline:
            job = chain_of("requeue").get("jobs", {}).get(first, {})
            if job.get("restarts", 0) >= 1 and (job.get("last_ready_at") or 0) > requeued_at:
                break
            time.sleep(5)
        time.sleep(15)
    finally:
        probes = prober.stop()
    chain = chain_of("requeue")
    job = chain["jobs"][first]
    assert job["restarts"] >= 1 and chain["current"] == first, chain
    after = [p for p in probes if p.start > (job["last_ready_at"] or 0) + 5]
    print(f"\nrequeue: gaps {chain['gaps']}; client {json.dumps(bench.summary(probes))}")
    assert after and all(p.ok for p in after)  # the tunnel follows the job to its new start
    assert chain["gaps"] and "requeued" in chain["gaps"][-1]["cause"]


def test_idle_stop_ends_a_lab_job_a_minute_after_the_last_request(
    lab_cluster: dict[str, Any], named: list[str]
) -> None:
    model = lab_cluster["model"]
    named.append("idle")
    submit(model, "idle", "--idle-stop", "1m", "--time", "15")
    hpcserve("query", "idle", "Hello", "--max-tokens", "4", timeout=300)
    last = time.time()
    deadline = time.monotonic() + 300
    while status("idle")["state"] in ("RUNNING", "COMPLETING") and time.monotonic() < deadline:
        time.sleep(5)
    st = status("idle")
    print(
        f"\nidle stop: {st['state']} - {st['detail']} ({time.time() - last:.0f} s after the query)"
    )
    assert st["detail"].startswith("stopped: idle for 1m"), st
    assert st["phase"] == "ended" and st["failure"] is None
