"""``vllm bench serve`` at several concurrency levels in one process (GPU machine).

``vllm bench serve ARGS`` is ``vllm.benchmarks.serve.main(parser.parse_args(ARGS))`` with the
parser of ``vllm.benchmarks.serve.add_cli_args`` (``vllm/entrypoints/cli/benchmark/serve.py``);
this calls exactly that once per ``CONCURRENCY:NUM_PROMPTS`` pair, so vLLM's import (~15 s) is
paid once, and writes each result JSON (``--save-result``) as ``vllm-c<C>.json``.

    python3 vllm_bench_many.py --levels 1:16,16:64,64:128 --result-dir D -- ARGS...
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", required=True, help="C:N,... concurrency and prompts")
    ap.add_argument("--result-dir", required=True)
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
        c, n = level.split(":")
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        ns = parser.parse_args(
            [
                *rest,
                "--max-concurrency", c,
                "--num-prompts", n,
                "--save-result",
                "--result-dir", args.result_dir,
                "--result-filename", f"vllm-c{c}.json",
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
