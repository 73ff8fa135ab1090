"""A client that sends one request every 0.5 s through a base URL, and what it saw.

Used by tests/test_service_cluster.py (a service of short jobs across handovers, and a plain
job reaching its time limit) and, run by hand on the lab, to write the side-by-side of
BENCHMARKS.md::

    sudo python bench/service_handover.py --site local --model MODEL --time 3 --minutes 6

It submits a service (``--keep-alive``) and a plain job with the same ``--time``, opens a
``hpcserve tunnel`` to each, sends each a chat completion every 0.5 s for ``--minutes`` and
prints a Markdown table: requests, failed, coverage, the longest time without an answer, the
worst latency, and the handovers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Probe:
    """One request: when it was sent and answered, and its error if it failed."""

    start: float
    end: float
    ok: bool
    error: str = ""

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass
class Prober:
    """Sends a chat completion every ``interval_s`` from a thread until :meth:`stop`."""

    base_url: str  # .../v1
    api_key: str | None
    model: str
    interval_s: float = 0.5
    timeout_s: float = 120.0
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        self._inflight: list[threading.Thread] = []

    def _one(self, session: Any) -> None:
        start = time.time()
        try:
            r = session.post(
                f"{self.base_url}/chat/completions",
                json={
                    "model": self.model,
                    "messages": [{"role": "user", "content": "Say hi"}],
                    "max_tokens": 4,
                },
                headers={"Authorization": f"Bearer {self.api_key or 'EMPTY'}"},
                timeout=self.timeout_s,
            )
            ok, error = (
                r.status_code == 200,
                "" if r.status_code == 200 else f"HTTP {r.status_code}",
            )
        except Exception as e:  # noqa: BLE001 - every failure is a data point here
            ok, error = False, f"{type(e).__name__}: {e}"[:200]
        with self._lock:
            self.probes.append(Probe(start, time.time(), ok, error))

    def _run(self) -> None:
        import requests

        session = requests.Session()  # keep-alive: connections move at their next request
        while not self._stop.is_set():
            th = threading.Thread(target=self._one, args=(session,), daemon=True)
            th.start()
            self._inflight.append(th)
            self._stop.wait(self.interval_s)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> list[Probe]:
        self._stop.set()
        self._thread.join()
        for th in self._inflight:
            th.join(self.timeout_s)
        with self._lock:
            return sorted(self.probes, key=lambda p: p.start)


def summary(probes: list[Probe]) -> dict[str, Any]:
    """Requests, failures, coverage, the longest time without an answer, worst latency."""
    ok = [p for p in probes if p.ok]
    # the client's whole window counts: from its first request to its last one's end, so the
    # time after a job's last answer (nothing answers any more) is silence too
    marks = sorted(p.end for p in ok)
    if probes:
        marks = [min(p.start for p in probes), *marks, max(p.end for p in probes)]
    silence = max((b - a for a, b in zip(marks, marks[1:], strict=False)), default=0.0)
    return {
        "requests": len(probes),
        "failed": len(probes) - len(ok),
        "coverage": len(ok) / len(probes) if probes else 0.0,
        "longest_without_answer_s": round(silence, 1),
        "worst_latency_s": round(max((p.latency_s for p in ok), default=0.0), 2),
        "first_errors": sorted({p.error for p in probes if not p.ok})[:3],
    }


def hpcserve(*args: str, timeout: float = 300, check: bool = True) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "hpcserve", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
    )  # fmt: skip
    if check and p.returncode != 0:
        raise RuntimeError(f"hpcserve {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}")
    return p.stdout


def status(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(hpcserve("status", name, "--json", check=False))
    return data


def handovers(name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (
        status(name).get("service", {}).get("chain", {}).get("handovers", [])
    )
    return found


def run_one(name: str, site: str, model: str, time_limit: str, minutes: float, *keep: str) -> dict:
    """Submit, wait, tunnel, probe for ``minutes`` (or until the job is gone), cancel."""
    hpcserve("submit", "--site", site, "--model", model, "--name", name, "--time", time_limit,
             *keep)  # fmt: skip
    hpcserve("wait", name, "--timeout", "900", timeout=960)
    hpcserve("tunnel", name, "--background", timeout=120)
    try:
        env = json.loads(hpcserve("env", name, "--json"))
        prober = Prober(env["base_url"], env["api_key"], model).start()
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            time.sleep(5)
        probes = prober.stop()
    finally:
        hpcserve("tunnel", "--stop", name, check=False)
    out = summary(probes)
    out["handovers"] = handovers(name)
    hpcserve("cancel", name, check=False)
    return out


def table(service: dict[str, Any], plain: dict[str, Any]) -> str:
    rows = [
        ("requests (one every 0.5 s)", "requests"),
        ("failed requests", "failed"),
        ("coverage", "coverage"),
        ("longest time without an answer (s)", "longest_without_answer_s"),
        ("worst latency of an answered request (s)", "worst_latency_s"),
    ]
    lines = ["| | `--keep-alive` service | plain job |", "|---|---|---|"]
    for label, key in rows:
        a, b = service[key], plain[key]
        if key == "coverage":
            a, b = f"{a:.1%}", f"{b:.1%}"
        lines.append(f"| {label} | {a} | {b} |")
    lines.append(f"| handovers | {len(service['handovers'])} | - |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--site", default="local")
    ap.add_argument("--model", required=True)
    ap.add_argument("--time", default="3", help="sbatch --time of every job (minutes)")
    ap.add_argument("--minutes", type=float, default=6.0, help="how long the client sends")
    args = ap.parse_args()
    stamp = time.strftime("%H%M%S")
    service = run_one(f"bench-svc-{stamp}", args.site, args.model, args.time, args.minutes,
                      "--keep-alive")  # fmt: skip
    plain = run_one(f"bench-plain-{stamp}", args.site, args.model, args.time, args.minutes)
    print(table(service, plain))
    print()
    print(json.dumps({"service": service, "plain": plain}, indent=2, default=str))


if __name__ == "__main__":
    main()
