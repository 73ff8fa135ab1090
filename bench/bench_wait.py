"""How soon `hpcserve wait` notices a server that starts answering /health.

The server is a stand-in (a small HTTP server, NOT vLLM) that binds its port at a recorded
instant, like uvicorn does once vLLM is ready; before that, connections are refused. The
waiter is the real polling loop of `hpcserve wait` (hpcserve.jobs.watch.wait_ready with its
default WaitTiming and the real requests-based /health probe), with a fake scheduler that says
RUNNING (named FakeSqueue here). Side by side: the same loop with a 5 s health interval, which
is what a hand-written `until curl -sf $URL/health; do sleep 5; done` does.

    python bench/bench_wait.py [--trials 8]
"""

from __future__ import annotations

import argparse
import http.server
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcserve.cluster.executor import Chunk, CommandResult  # noqa: E402
from hpcserve.jobs.record import JobRecord  # noqa: E402
from hpcserve.jobs.watch import JobWatch, WaitTiming, wait_ready  # noqa: E402


class FakeSqueue:
    """Executor stand-in: squeue always says RUNNING; logs are empty."""

    remote = True

    def run(self, argv, *, input=None, timeout=60):  # noqa: A002
        if argv[0] == "squeue":
            return CommandResult(tuple(argv), 0, "1|RUNNING|None|1|n1|59:00|1:00:00|N/A|1:00\n", "")
        return CommandResult(tuple(argv), 1, "", "no such file")

    def read_text(self, path):
        raise FileNotFoundError(path)

    def read_from(self, path, offset):
        return Chunk("", offset)

    def home(self):
        return "/home/bench"

    def describe(self):
        return "remote"

    def write_text(self, path, text, mode=0o600):
        raise OSError("read-only")

    def exists(self, path):
        return False

    def makedirs(self, path, mode=0o700):
        return None

    def close(self):
        return None


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_trial(health_every: float, delay: float) -> float:
    port = free_port()
    ready_at: list[float] = []
    servers: list[http.server.HTTPServer] = []

    def start_later() -> None:
        time.sleep(delay)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok)
        ready_at.append(time.monotonic())  # bound and listening: /health answers from now
        servers.append(srv)
        srv.serve_forever(poll_interval=0.05)

    t = threading.Thread(target=start_later, daemon=True)
    t.start()
    rec = JobRecord(
        "1",
        "bench",
        "m",
        1,
        1,
        1,
        "/nonexistent",
        time.time(),
        False,
        head_addr="127.0.0.1",
        api_port=port,
    )
    watch = JobWatch(rec, FakeSqueue())  # type: ignore[arg-type]
    res = wait_ready(watch, 60, timing=WaitTiming(health_every=health_every))
    done = time.monotonic()
    assert res.status.ready, res.status.detail
    for s in servers:
        s.shutdown()
        s.server_close()
    return done - ready_at[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    delays = [rng.uniform(0.5, 2.5) for _ in range(args.trials)]
    variants = [
        ("hpcserve wait (health every 0.25 s)", WaitTiming().health_every),
        ("poll loop, sleep 5 s (alternative)", 5.0),
    ]
    rows = []
    for label, every in variants:
        lat = [one_trial(every, d) for d in delays]
        rows.append((label, statistics.median(lat), max(lat), min(lat)))
    print(f"trials: {args.trials}, server becomes ready 0.5-2.5 s after wait starts")
    print(f"{'waiter':<40} {'median s':>9} {'max s':>7} {'min s':>7}")
    for label, med, mx, mn in rows:
        print(f"{label:<40} {med:>9.3f} {mx:>7.3f} {mn:>7.3f}")


if __name__ == "__main__":
    main()
