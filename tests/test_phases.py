"""Server phase from vLLM log lines (real lines: tests/data/vllm-lines/README.md)."""

from __future__ import annotations

from pathlib import Path

from hpcserve.jobs.phases import PhaseInfo, merge, read_phase, split_lines

DATA = Path(__file__).parent / "data" / "vllm-lines"
LOG = (DATA / "startup-gpu.log").read_text().splitlines()


def upto(marker: str) -> list[str]:
    for i, line in enumerate(LOG):
        if marker in line:
            return LOG[: i + 1]
    raise AssertionError(marker)


def test_empty_log_is_starting():
    assert read_phase([]).phase == "starting"


def test_loading_with_shard_progress():
    info = read_phase(upto("40% Completed"))
    assert info.phase == "loading"
    assert (info.weights_percent, info.shards_done, info.shards_total) == (40, 2, 5)
    assert info.model == "Qwen/Qwen3-8B"
    assert info.vllm_version == "0.11.0"
    assert info.detail() == "loading weights (40%, 2/5 shards)"


def test_model_loading_took_gives_memory():
    info = read_phase(upto("Model loading took"))
    assert info.phase == "loading"
    assert info.model_memory_gib == 15.2683
    assert info.weights_percent == 100


def test_kv_cache_numbers():
    info = read_phase(upto("Maximum concurrency"))
    assert info.phase == "kv_cache"
    assert info.kv_cache_memory_gib == 52.17
    assert info.kv_cache_tokens == 100752
    assert info.max_model_len == 65536
    assert info.max_concurrency == 1.54
    assert "KV cache 100,752 tokens" in info.detail()
    assert "max concurrency 1.54x at 65,536 tokens" in info.detail()


def test_cuda_graphs_mode():
    info = read_phase(upto("Capturing CUDA graphs (decode, FULL)"))
    assert info.phase == "cuda_graphs"
    assert info.graphs == "decode, FULL 100%"


def test_api_then_ready():
    assert read_phase(upto("Starting vLLM API server")).phase == "api"
    info = read_phase(LOG)
    assert info.phase == "ready"
    assert info.url == "http://0.0.0.0:8000"


def test_uvicorn_running_line_is_ready():
    info = read_phase(["INFO:     Uvicorn running on http://0.0.0.0:8001 (Press CTRL+C to quit)"])
    assert info.phase == "ready"
    assert info.url == "http://0.0.0.0:8001"


def test_phase_never_goes_back_and_follows_incrementally():
    info = read_phase(LOG[:9])
    before = info.lines_seen
    read_phase(LOG[9:], info)
    assert info.phase == "ready"
    assert info.lines_seen == before + len(LOG) - 9
    read_phase(["Loading safetensors checkpoint shards:  20% Completed | 1/5"], info)
    assert info.phase == "ready"


def test_tqdm_carriage_returns_are_lines():
    raw = (
        "Loading safetensors checkpoint shards:   0% Completed | 0/2 [00:00<?, ?it/s]\r"
        "Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.2s/it]"
    )
    assert len(split_lines(raw)) == 2
    info = read_phase([raw])
    assert (info.weights_percent, info.shards_done) == (50, 1)


def test_merge_waits_for_slowest_worker_while_loading():
    head = read_phase(upto("Available KV cache memory"))
    worker = read_phase(upto("20% Completed"))
    job = merge([head, worker])
    assert job.phase == "loading"
    assert merge([read_phase(LOG), worker]).phase == "ready"  # the head answers: ready
    assert merge([]).phase == "starting"
    assert merge([PhaseInfo()]).phase == "starting"


CPU = Path(__file__).parent / "data" / "vllm-cpu"  # real lab runs, vLLM 0.32.0 CPU build


def test_real_cpu_head_log_reaches_ready_with_kv_numbers():
    info = read_phase((CPU / "tp2-head.log").read_text().splitlines())
    assert info.phase == "ready"
    assert info.vllm_version == "0.32.0"
    assert info.kv_cache_tokens == 2097152
    assert (info.max_model_len, info.max_concurrency) == (512, 4096.0)
    assert info.kv_cache_memory_gib == 1.0
    assert info.url == "http://0.0.0.0:8000"
    assert info.model == "/var/cache/hpcserve-lab/models/tiny-llama"


def test_real_cpu_head_log_phases_in_order():
    lines = (CPU / "tp2-head.log").read_text().splitlines()
    seen: list[str] = []
    info = PhaseInfo()
    for ln in lines:
        read_phase([ln], info)
        if not seen or seen[-1] != info.phase:
            seen.append(info.phase)
    assert seen == ["starting", "loading", "kv_cache", "api", "ready"]  # no CUDA graphs on CPU


def test_real_cpu_worker_log_and_merge():
    head = read_phase((CPU / "tp2-head.log").read_text().splitlines())
    worker = read_phase((CPU / "tp2-worker.log").read_text().splitlines())
    assert worker.phase == "kv_cache" and worker.weights_percent == 100  # its own KV share
    assert worker.vllm_version == "0.32.0"
    assert merge([head, worker]).phase == "ready"
    # a head in the KV phase is not held back by a worker that finished loading
    head_kv = read_phase(
        [ln for ln in (CPU / "tp2-head.log").read_text().splitlines() if "KV cache size" in ln]
    )
    assert merge([head_kv, worker]).phase == "kv_cache"
    wlines = (CPU / "tp2-worker.log").read_text().splitlines()
    cut = next(i for i, ln in enumerate(wlines) if "Starting to load model" in ln)
    loading = read_phase(wlines[: cut + 1])
    assert loading.phase == "loading" and loading.weights_percent is None
    assert merge([head_kv, loading]).phase == "loading"  # held back by the loading worker


GPU = Path(__file__).parent / "data" / "gpu-vllm-runs"  # real H200 runs, vLLM 0.26.0


def test_real_gpu_head_and_worker():
    head = read_phase((GPU / "p2p" / "node-0.log").read_text().splitlines())
    worker = read_phase((GPU / "p2p" / "node-1.log").read_text().splitlines())
    assert head.phase == "ready" and head.vllm_version == "0.26.0"
    assert head.kv_cache_tokens == 67298400
    assert (head.max_model_len, head.max_concurrency) == (4096, 16430.27)
    assert head.model_memory_gib == 0.01 and head.kv_cache_memory_gib == 128.36
    assert worker.phase == "cuda_graphs" and worker.graphs == "done"
    assert merge([head, worker]).phase == "ready"


def test_real_gpu_graph_capture_progress_line():
    lines = (GPU / "p2p" / "node-0.log").read_text().splitlines()
    cut = next(i for i, ln in enumerate(lines) if "Capturing CUDA graphs (FULL)" in ln)
    info = read_phase(lines[: cut + 1])
    assert info.phase == "cuda_graphs" and info.graphs is not None
    assert info.graphs.startswith("FULL")
