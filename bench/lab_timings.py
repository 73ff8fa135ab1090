"""Measure the local lab's phases once, end to end, and print a table.

Phases: `lab up` (cached), sbatch -> RUNNING, RUNNING -> vLLM ready (TP=2 head + headless worker
over the two nodes, the recipe in tests/data/vllm-cpu/hand-tp2.sbatch), first chat completion,
second chat completion, scancel -> no vLLM process left, `lab down`.

Run as root from the repository root: ``python3 bench/lab_timings.py``. It leaves the lab down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpcserve.lab.config import LabLayout  # noqa: E402

LAY = LabLayout()
ENV = {**os.environ, "SLURM_CONF": str(LAY.slurm_conf)}
URL = "http://10.77.0.11:8000"


def sh(*argv: str) -> str:
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, check=True).stdout


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def wait(pred, timeout: float, step: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(step)
    raise SystemExit("timed out")


def healthy() -> bool:
    try:
        with urllib.request.urlopen(URL + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def chat() -> str:
    body = {
        "model": str(LAY.model),
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 16,
    }
    req = urllib.request.Request(
        URL + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)["choices"][0]["message"]["content"]


def vllm_left() -> int:
    n = 0
    for node in LAY.node_list:
        for pid in sh("ip", "netns", "pids", node.netns).split():
            try:
                if b"vllm" in Path(f"/proc/{pid}/cmdline").read_bytes().lower():
                    n += 1
            except OSError:
                pass
    return n


def main() -> None:
    rows: list[tuple[str, float]] = []
    hp = [sys.executable, "-m", "hpcserve", "lab"]
    dt, _ = timed(lambda: subprocess.run([*hp, "up", "--nodes", "2"], check=True, cwd=REPO))
    rows.append(("lab up (cached)", dt))
    jobdir = LAY.jobs_dir / "bench"
    jobdir.mkdir(parents=True, exist_ok=True)
    script = (REPO / "tests/data/vllm-cpu/hand-tp2.sbatch").read_text()
    script = script.replace("/jobs/hand", "/jobs/bench")
    (jobdir / "run.sbatch").write_text(script)
    t0 = time.monotonic()
    job = sh("sbatch", "--parsable", str(jobdir / "run.sbatch")).strip()
    wait(lambda: sh("squeue", "-h", "-j", job, "-o", "%T").strip() == "RUNNING", 120)
    t1 = time.monotonic()
    rows.append(("sbatch -> RUNNING", t1 - t0))
    wait(healthy, 600, 0.5)
    t2 = time.monotonic()
    rows.append(("RUNNING -> ready (/health 200)", t2 - t1))
    dt, answer = timed(chat)
    rows.append(("first chat completion (16 tokens)", dt))
    dt, _ = timed(chat)
    rows.append(("second chat completion (16 tokens)", dt))
    t0 = time.monotonic()
    sh("scancel", job)
    wait(lambda: vllm_left() == 0, 120, 0.5)
    rows.append(("scancel -> no vLLM process", time.monotonic() - t0))
    dt, _ = timed(lambda: subprocess.run([*hp, "down"], check=True, cwd=REPO))
    rows.append(("lab down", dt))
    print(f"\nanswer: {answer!r}\n")
    print(f"| {'phase':40} | seconds |")
    print(f"| {'-' * 40} | ------- |")
    for name, sec in rows:
        print(f"| {name:40} | {sec:7.1f} |")


if __name__ == "__main__":
    main()
