"""Print the planner's memory chain next to vLLM's own lines for the real logs in tests/data.

Run from the repository root: ``PYTHONPATH=. python bench/memory_chain.py``.
"""

from __future__ import annotations

from pathlib import Path

from hpcserve.plan.modelinfo import load_model_info
from hpcserve.plan.planner import plan_for_site
from hpcserve.plan.sizing import (
    GIB,
    kv_memory_budget,
    parse_vllm_kv_log,
    predict_kv_cache_tokens,
    stage_weight_bytes,
    vllm_rules,
)
from hpcserve.sites.loader import load_site_file

DATA = Path("tests/data")
TINY = DATA / "gpu-vllm-2" / "tiny-model-config.json"
LLAMA8B = DATA / "gpu-vllm-3" / "llama8b-config.json"
GPU = [  # log, GPU, nvidia-smi MiB, PP, model config
    ("gpu-vllm/p2p/node-0.log", "H200", 143771, 2, TINY),
    ("gpu-vllm-2/p2p/node-0.log", "H200", 143771, 2, TINY),
    ("gpu-vllm-2/socket/node-0.log", "H200", 143771, 2, TINY),
    ("bench-vs-vllm-h100/run1/serve.log", "H100", 81559, 1, TINY),
    ("bench-vs-vllm-h100/run2/serve.log", "H100", 81559, 1, TINY),
    ("gpu-vllm-3/r1/02-cold/node-0.log", "H200", 143771, 1, LLAMA8B),
    ("gpu-vllm-3/r1/03-warm/node-0.log", "H200", 143771, 1, LLAMA8B),
]
CPU = [("vllm-cpu/tp2-head.log", 2, 1), ("vllm-cpu/pp2-head-fails.log", 1, 2)]


def _pct(a: float, b: float) -> str:
    return f"{100 * (a - b) / b:+.2f} %"


def gpu_rows() -> None:
    rules = vllm_rules("0.26.0")
    for log, gpu, mib, pp, config in GPU:
        info = load_model_info(config.stem, str(config))
        seen = parse_vllm_kv_log((DATA / log).read_text())
        budgets = [
            kv_memory_budget(info, mib * 2**20, rules.default_utilization, w, 1, rules)
            for w in stage_weight_bytes(info, pp)
        ]
        avail = [b.available for b in budgets]
        length = int(seen["max_model_len"])
        pred = predict_kv_cache_tokens(info, avail, pp=pp, max_model_len=length, report="legacy")
        b = budgets[0]
        print(
            f"| `{log}` | {gpu} {mib} MiB, PP={pp} | {b.requested / GIB:.2f} | "
            f"{(b.non_kv) / GIB:.2f} | {b.available / GIB:.2f} / "
            f"{seen['available_bytes'] / GIB:.2f} ({_pct(b.available, seen['available_bytes'])})"
            f" | {pred.tokens:,} / {int(seen['tokens']):,} ({_pct(pred.tokens, seen['tokens'])}) |"
        )


def cpu_rows() -> None:
    site = load_site_file("site_configs/local.yaml")
    info = load_model_info("tiny", str(DATA / "models" / "tiny-llama.json"))
    for log, tp, pp in CPU:
        seen = parse_vllm_kv_log((DATA / log).read_text())
        length = int(seen["max_model_len"])
        plan = plan_for_site(site, info, nodes=2, tp=tp, pp=pp, max_model_len=length)
        kv = plan.fit.kv
        assert kv is not None
        got = plan.fit.kv_budget_per_gpu[0]
        print(
            f"| `{log}` | lab, TP={tp} PP={pp}, len {length} | {got / GIB:.2f} / "
            f"{seen['available_bytes'] / GIB:.2f} ({_pct(got, seen['available_bytes'])}) | "
            f"{kv.tokens:,} / {int(seen['tokens']):,} ({_pct(kv.tokens, seen['tokens'])}) |"
        )


if __name__ == "__main__":
    gpu_rows()
    cpu_rows()
