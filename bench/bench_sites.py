"""Cost of site loading: cold starts of the `sites` command, and the YAML loader choice.

Run from the repository root:  python bench/bench_sites.py [--runs N]

Prints one table: process start times (median wall time of N fresh interpreters) for a bare
`python -c pass`, `import hpcserve.sites.loader`, and `hpcserve sites list --json`; then in-process
`load_site("meluxina")` (which scans every site file) with PyYAML's C loader, which hpcserve
uses when available, side by side with the pure-Python loader.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def process(args: list[str]) -> Callable[[], object]:
    def run() -> object:
        return subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs

    sys.path.insert(0, str(REPO))
    import yaml

    from hpcserve.sites import loader as sites

    rows: list[tuple[str, float]] = [
        ("python -c pass", median_ms(process(["-c", "pass"]), runs)),
        (
            "python -c 'import hpcserve.sites.loader'",
            median_ms(process(["-c", "import hpcserve.sites.loader"]), runs),
        ),
        (
            "hpcserve sites list --json",
            median_ms(process(["-m", "hpcserve", "sites", "list", "--json"]), runs),
        ),
    ]
    c_loader = getattr(yaml, "CSafeLoader", None)
    for label, loader in (
        ("C loader (CSafeLoader)", c_loader),
        ("pure Python (SafeLoader)", yaml.SafeLoader),
    ):
        if loader is None:
            continue
        sites._Loader = loader  # the loader hpcserve.sites.loader composes with
        rows.append(
            (
                f"load_site('meluxina'), {label}",
                median_ms(lambda: sites.load_site("meluxina"), runs),
            )
        )

    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  median ms ({runs} runs)")
    for label, ms in rows:
        print(f"{label:<{width}}  {ms:8.1f}")


if __name__ == "__main__":
    main()
