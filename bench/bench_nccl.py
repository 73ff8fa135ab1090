"""Benchmark: hpcserve's NCCL log parser vs ``grep -c ' via '`` on the same >= 1 GB log.

Builds the log in a temporary directory from the real NCCL logs of
``tests/data/nccl/h200x4-*.log`` (made on a 4 x H200 machine; see ``build`` for the three
scenarios), times both on it in one run (the file is read once beforehand so both read from the
page cache), prints wall and CPU figures, and deletes the file.

    python bench/bench_nccl.py [--size-mb 1024] [--scenario dense|chatter|shuffled|both|all]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpcserve.nccl import NcclScanner  # noqa: E402

DATA = REPO / "tests" / "data" / "nccl"


def _real_logs() -> bytes:
    names = sorted(n for n in os.listdir(DATA) if n.startswith("h200x4-") and n.endswith(".log"))
    return b"".join((DATA / n).read_bytes() for n in names)


def build(path: Path, size_mb: int, scenario: str) -> int:
    """``dense``: the real logs repeated (every line real, 2/3 of them parsed: worst case).
    ``chatter``: the real logs once, then their lines that are NOT connection lines repeated
    (NCCL INFO lines carrying no transport information, as long NCCL_DEBUG runs accumulate).
    ``shuffled``: the real logs' lines, each round in a new random order: lines repeat, runs of
    lines do not (hpcserve's block sieve cannot help; its line sieve can)."""
    seed = _real_logs()
    target = size_mb << 20
    if scenario == "shuffled":
        rng = random.Random(0)
        lines = seed.splitlines(keepends=True)
        with open(path, "wb") as f:
            written = 0
            while written < target:
                rng.shuffle(lines)
                written += f.write(b"".join(lines))
        return written
    if scenario == "dense":
        head, body = b"", seed
    else:
        head = seed
        body = b"".join(ln for ln in seed.splitlines(keepends=True) if b" via " not in ln)
    block = body * max(1, (8 << 20) // len(body))
    with open(path, "wb") as f:
        f.write(head)
        written = len(head)
        while written < target:
            f.write(block)
            written += len(block)
    return written


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_grep(path: Path) -> tuple[float, float, str]:
    t, c = time.perf_counter(), _children_cpu()
    p = subprocess.run(
        ["grep", "-c", " via ", str(path)], capture_output=True, text=True, check=False
    )
    return time.perf_counter() - t, _children_cpu() - c, p.stdout.strip()


def time_parser(path: Path) -> tuple[float, float, str]:
    t, c = time.perf_counter(), time.process_time()
    s = NcclScanner()
    with open(path, "rb", buffering=0) as f:
        s.feed_stream(f)
    r = s.report()
    out = f"{r.verdict}, {sum(r.connections.values())} distinct connection lines"
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument(
        "--scenario", choices=["dense", "chatter", "shuffled", "both", "all"], default="all"
    )
    args = ap.parse_args()
    scenarios = {"both": ["dense", "chatter"], "all": ["dense", "chatter", "shuffled"]}.get(
        args.scenario, [args.scenario]
    )
    print(
        f"{'scenario':>8} | {'MB':>5} | {'grep MB/s':>9} | {'hpcserve MB/s':>13} | "
        f"{'ratio wall':>10} | {'grep cpu s':>10} | {'hpcserve cpu s':>14} | "
        f"{'ratio cpu':>9} | results"
    )
    for sc in scenarios:
        tmp = Path(tempfile.mkdtemp(prefix="hpcserve-nccl-bench-"))
        try:
            log = tmp / "big.log"
            size = build(log, args.size_mb, sc)
            mb = size / 1e6
            with open(log, "rb") as f:  # warm the page cache for both contenders
                while f.read(64 << 20):
                    pass
            g, gcpu, gout = time_grep(log)
            p, pcpu, pout = time_parser(log)
            print(
                f"{sc:>8} | {mb:5.0f} | {mb / g:9.0f} | {mb / p:13.0f} | {g / p:10.2f} | "
                f"{gcpu:10.2f} | {pcpu:14.2f} | {gcpu / pcpu:9.2f} | "
                f"grep={gout}; hpcserve: {pout}"
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
