"""Cold start of ``hpcserve render`` against a bare ``python -c pass``, side by side in one run.

    python bench/bench_cold_start.py [--runs 40] [--python /path/to/venv/bin/python]
                                     [--compare OTHER_CHECKOUT]

``--compare`` adds ``hpcserve --help`` and ``hpcserve render`` run from another checkout of
hpcserve (e.g. a worktree of an earlier commit), interleaved in the same run.

Each command is a fresh interpreter (subprocess), run interleaved so that machine load hits all
of them alike; the table shows median and p90 wall time and the ratio to the bare interpreter.
Target (issue 2): render < 3x ``python -c pass``.

``hpcserve render`` is started the way the console script starts it
(``from hpcserve.cli import main; main()``) with a site YAML file, read by the real site loader.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE_YAML = """\
name: bench
login: [{host: login.example.org, port: 8822}]
node: {gpus: 4, gpu_model: A100-40GB, gpu_memory_gb: 40}
scheduler: {account: p200, partition: gpu, qos: default, extra_sbatch: [--hint=nomultithread]}
modules: [Apptainer]
container: {runtime: apptainer, image: /project/vllm.sif, gpu_flag: --nvccli, binds: [/project]}
network: {head_interface: ib0, nccl_socket_ifname: ib0, nccl_ib_hca: mlx5}
storage: {hf_cache: /project/hf, offline: true, workdir: /project/jobs}
"""

ENTRY = "import sys; from hpcserve.cli import main; sys.exit(main())"


def commands(site: Path, python: str) -> dict[str, list[str]]:
    args = ["render", "--site", str(site), "--nodes", "2", "--model", "Qwen/Qwen3-8B"]
    return {
        "python -c pass": [python, "-c", "pass"],
        "import click, jinja2, yaml (deps floor)": [
            python,
            "-c",
            "import dataclasses, click, jinja2, yaml",
        ],
        "hpcserve --help": [python, "-c", ENTRY, "--help"],
        "hpcserve render": [python, "-c", ENTRY, *args],
    }


Command = tuple[list[str], dict[str, str]]


def measure(cmds: dict[str, Command], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for argv, env in cmds.values():  # warm the page cache and check that each command works
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    for _ in range(runs):
        for name, (argv, env) in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t0)
    return times


def checkout_env(checkout: Path) -> dict[str, str]:
    """The environment that runs hpcserve from ``checkout``, with its .pyc written (an
    installed hpcserve has them compiled by pip; without them each run would compile)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--python", default=sys.executable, help="interpreter to measure (a venv)")
    ap.add_argument("--compare", type=Path, help="another hpcserve checkout, measured alongside")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "bench.yaml"
        site.write_text(SITE_YAML)
        env = checkout_env(REPO)
        cmds = {name: (argv, env) for name, argv in commands(site, args.python).items()}
        if args.compare is not None:
            other = checkout_env(args.compare.resolve())
            for name, argv in commands(site, args.python).items():
                if name.startswith("hpcserve"):
                    cmds[f"{name} ({args.compare})"] = (argv, other)
        times = measure(cmds, args.runs)
    base = statistics.median(times["python -c pass"])
    base_min = min(times["python -c pass"])
    print(f"{args.runs} runs each, interleaved; {args.python}")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    print("| command | median ms | p90 ms | min ms | median ratio | min ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, xs in times.items():
        med, low = statistics.median(xs), min(xs)
        print(
            f"| `{name}` | {med * 1e3:.1f} | {p90(xs) * 1e3:.1f} | {low * 1e3:.1f} "
            f"| {med / base:.2f}x | {low / base_min:.2f}x |"
        )


if __name__ == "__main__":
    main()
