"""Recompute `vllm bench serve`'s aggregates from its own per-request data with hpcserve.net.bench.

Reads a result file written by `vllm bench serve --save-result --save-detailed` (per request:
ttfts, itls, latencies, start_times, output_lens, input_lens, errors), feeds the same requests to
hpcserve.net.bench.compute_metrics, and prints both side by side. Equal numbers show that the
metric definitions are the same, apart from the measurement noise of two separate runs.

Usage: python bench/check_metrics_vs_vllm.py RESULT.json [RESULT.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcserve.net.bench import RequestOutput, compute_metrics  # noqa: E402

KEYS = [
    "request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
    "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "p99_e2el_ms",
]  # fmt: skip


def main() -> None:
    worst = 0.0
    for path in sys.argv[1:]:
        r = json.loads(Path(path).read_text())
        outs = [
            RequestOutput(
                success=not err,
                prompt_len=inp,
                output_tokens=out,
                ttft=ttft,
                itl=list(itl),
                latency=lat,
                start_time=st,
            )  # fmt: skip
            for inp, out, ttft, itl, lat, st, err in zip(
                r["input_lens"],
                r["output_lens"],
                r["ttfts"],
                r["itls"],
                r["latencies"],
                r["start_times"],
                r["errors"],
                strict=True,
            )
        ]
        m = compute_metrics(outs, r["duration"]).to_dict()
        print(
            f"\n{Path(path).name}\n| metric | vllm | hpcserve.net.bench | rel. diff |\n"
            "|---|---|---|---|"
        )
        for k in KEYS:
            a, b = r[k], m[k]
            diff = abs(b - a) / abs(a) if a else abs(b)
            worst = max(worst, diff)
            print(f"| {k} | {a:.4f} | {b:.4f} | {diff:.1e} |")
    print(f"\nlargest relative difference: {worst:.1e}")


if __name__ == "__main__":
    main()
