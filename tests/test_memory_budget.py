"""The planner's whole memory chain against real vLLM logs (issue 11, defect 4).

From the site's GPU memory × ``gpu_memory_utilization`` to vLLM's ``Available KV cache memory:
X GiB`` and ``KV cache size: N tokens``, within 10%, for the GPU runs in ``tests/data`` (vLLM
0.26.0) and the lab's CPU runs (vLLM 0.32.0, ``VLLM_CPU_KVCACHE_SPACE``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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

REPO = Path(__file__).parent.parent
DATA = REPO / "tests" / "data"
TINY_GPU = DATA / "gpu-vllm-2" / "tiny-model-config.json"
TINY_LAB = DATA / "models" / "tiny-llama.json"

#: (log, nvidia-smi MiB of that GPU, PP): the runs' READMEs say which GPU and layout.
GPU_LOGS = [
    ("gpu-vllm/p2p/node-0.log", 143771, 2),
    ("gpu-vllm-2/p2p/node-0.log", 143771, 2),
    ("gpu-vllm-2/socket/node-0.log", 143771, 2),
    ("bench-vs-vllm-h100/run1/serve.log", 81559, 1),  # H100 80GB HBM3
    ("bench-vs-vllm-h100/run2/serve.log", 81559, 1),
]


def _desired_gib(text: str) -> float:
    m = re.search(r"Desired GPU memory utilization is \([\d.]+, ([\d.]+) GiB\)", text)
    assert m, "the log has no memory-profile line"
    return float(m.group(1))


def _within(pred: float, seen: float) -> bool:
    return abs(pred - seen) <= 0.10 * seen


@pytest.mark.parametrize(("log", "mib", "pp"), GPU_LOGS)
def test_gpu_chain_from_site_memory_to_vllms_kv_lines(log: str, mib: int, pp: int) -> None:
    """vLLM 0.26.0: requested = total × 0.92; available = requested − weights − activation
    peak − non-torch; tokens = blocks per group × block size (0.26 reports it that way)."""
    text = (DATA / log).read_text()
    seen = parse_vllm_kv_log(text)
    info = load_model_info("tiny-llama", str(TINY_GPU))
    rules = vllm_rules("0.26.0")
    weights = stage_weight_bytes(info, pp)
    budget = [
        kv_memory_budget(info, mib * 2**20, rules.default_utilization, w, tp=1, rules=rules)
        for w in weights
    ]
    assert _within(budget[0].requested, _desired_gib(text) * GIB)
    assert _within(budget[0].available, seen["available_bytes"]), (budget[0], seen)
    pred = predict_kv_cache_tokens(
        info,
        [b.available for b in budget],
        tp=1,
        pp=pp,
        max_model_len=int(seen["max_model_len"]),
        report=rules.kv_report,
    )
    assert _within(pred.tokens, seen["tokens"]), (pred.tokens, seen)


def test_gpu_site_plan_gives_vllms_available_memory() -> None:
    """tests/gpu/site.yaml is the site the H200 runs were rendered for (vLLM 0.26.0)."""
    site = load_site_file(str(REPO / "tests" / "gpu" / "site.yaml"))
    info = load_model_info("tiny-llama", str(TINY_GPU))
    plan = plan_for_site(site, info, nodes=2, max_model_len=4096)
    seen = parse_vllm_kv_log((DATA / "gpu-vllm-2" / "p2p" / "node-0.log").read_text())
    assert plan.fit.fits
    assert all(_within(b, seen["available_bytes"]) for b in plan.fit.kv_budget_per_gpu)
    assert plan.fit.kv is not None and _within(plan.fit.kv.tokens, seen["tokens"])


@pytest.mark.parametrize(("nodes", "length"), [(2, 512), (2, 2048), (1, 2048)])
def test_the_labs_plan_says_the_labs_model_fits(nodes: int, length: int) -> None:
    site = load_site_file(str(REPO / "site_configs" / "local.yaml"))
    info = load_model_info("tiny", str(TINY_LAB))
    plan = plan_for_site(site, info, nodes=nodes, max_model_len=length)
    assert plan.fit.fits
    assert plan.fit.kv_budget_per_gpu == [1 * GIB]  # VLLM_CPU_KVCACHE_SPACE=1


@pytest.mark.parametrize(
    ("log", "tp"),
    [("vllm-cpu/tp2-head.log", 2), ("vllm-cpu/pp2-head-fails.log", 1)],
)
def test_the_labs_cpu_runs_match_the_plan(log: str, tp: int) -> None:
    """vLLM 0.32.0 CPU: the KV cache is VLLM_CPU_KVCACHE_SPACE; tokens = concurrency × length."""
    seen = parse_vllm_kv_log((DATA / log).read_text())
    site = load_site_file(str(REPO / "site_configs" / "local.yaml"))
    info = load_model_info("tiny", str(TINY_LAB))
    length = int(seen["max_model_len"])
    pp = 2 if tp == 1 else 1
    plan = plan_for_site(site, info, nodes=2, tp=tp, pp=pp, max_model_len=length)
    assert _within(plan.fit.kv_budget_per_gpu[0], seen["available_bytes"])
    assert plan.fit.kv is not None and _within(plan.fit.kv.tokens, seen["tokens"])


def test_an_oversized_cpu_kv_space_does_not_fit() -> None:
    """lab-runs/kv-oversized: VLLM_CPU_KVCACHE_SPACE=64 on a 14 GiB host fails in vLLM."""
    info = load_model_info("tiny", str(TINY_LAB))
    rules = vllm_rules("0.32.0")
    b = kv_memory_budget(
        info, 14.34 * GIB, 0.9, 1e6, tp=1, rules=rules, device="cpu", cpu_kv_space_gib=64
    )
    assert b.available <= 0


def test_rules_are_keyed_on_the_vllm_version() -> None:
    old, new = vllm_rules("0.26.0"), vllm_rules("0.32.0")
    assert (old.kv_report, new.kv_report) == ("legacy", "capacity")
    assert old.default_utilization == 0.92  # "Desired GPU memory utilization is (0.92, ...)"
    info = load_model_info("tiny", str(TINY_LAB))
    # CPU without VLLM_CPU_KVCACHE_SPACE: older releases take 4 GiB
    b = kv_memory_budget(info, 64 * GIB, 0.9, 1e6, tp=1, rules=old, device="cpu")
    assert b.available == 4 * GIB
