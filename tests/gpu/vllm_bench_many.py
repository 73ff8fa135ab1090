"""``vllm bench serve`` at several concurrency levels in one process (GPU machine).

``vllm bench serve ARGS`` is ``vllm.benchmarks.serve.main(parser.parse_args(ARGS))`` with the
parser of ``vllm.benchmarks.serve.add_cli_args`` (``vllm/entrypoints/cli/benchmark/serve.py``);
this calls exactly that once per ``CONCURRENCY:NUM_PROMPTS[:SEED]`` level, so vLLM's import
(~15 s) is paid once, and writes each result JSON (``--save-result``) as ``<PREFIX>c<C>.json``.
A level's ``SEED`` becomes its ``--seed`` (the random dataset's prompts), so that no level
repeats another's prompts.

    python3 vllm_bench_many.py --levels 1:16:101,16:64:102 --result-dir D --prefix vllm-r1- -- ARGS
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", required=True, help="C:N,... concurrency and prompts")
    ap.add_argument("--result-dir", required=True)
    ap.add_argument("--prefix", default="vllm-")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    rest = [a for a in args.rest if a != "--"]
    t0 = time.time()
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    print(f"vllm bench imported in {time.time() - t0:.1f} s", flush=True)
    rc = 0
    for level in args.levels.split(","):
        c, n, *seed = level.split(":")
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        ns = parser.parse_args(
            [
                *rest,
                *(["--seed", seed[0]] if seed else []),
                "--max-concurrency", c,
                "--num-prompts", n,
                "--save-result",
                "--result-dir", args.result_dir,
                "--result-filename", f"{args.prefix}c{c}.json",
            ]
        )  # fmt: skip
        t = time.time()
        try:
            bench_main(ns)
        except Exception as e:  # one level failing must not lose the others
            print(f"vllm bench c={c}: {type(e).__name__}: {e}", flush=True)
            rc = 1
        print(f"vllm bench c={c} n={n}: {time.time() - t:.1f} s", flush=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
