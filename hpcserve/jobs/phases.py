"""Where a vLLM server is in its start-up, read from its log lines (pure).

The phases, in order: ``starting`` -> ``loading`` (weights) -> ``compiling`` (torch.compile, or
loading its artefacts from vLLM's compilation cache) -> ``kv_cache`` (memory profiling, KV cache
sizing) -> ``cuda_graphs`` -> ``api`` (engine up, API server starting) -> ``ready``.
Failure is not decided here: :mod:`hpcserve.jobs.failures` reads the same lines for causes.

The patterns match the format strings of vLLM's v1 engine (checked against vllm-project/vllm
main, 2025/2026, and log excerpts of 0.10-0.11 runs), with older spellings kept where they
differ; see ``tests/data/vllm-lines/README.md`` for where each line comes from:

- ``Starting to load model %s...``                      v1/worker/gpu_model_runner.py
- ``Loading model from scratch...``                     v1/worker/gpu/model_runner.py (V2 runner)
- ``Filesystem type for checkpoints: %s. Checkpoint size: %.2f GiB. Available RAM: ...``
                                                       model_loader/weight_utils.py
- ``Loading safetensors checkpoint shards:  50% Completed | 1/2 [...]``, with `` (eager)`` for
  ``--safetensors-load-strategy eager``, ``Loading fastsafetensors checkpoint shards: ...``,
  ``Loading safetensors using Runai Model Streamer:  22% Completed | 63/291`` (tensors) and
  ``Loading safetensors using InstantTensor loader:   7% Completed | 0.98G/15.0G`` (bytes)
                                                       model_loader/weight_utils.py (tqdm)
- ``Loading weights took %.2f seconds``                 model_loader/default_loader.py
- ``Model loading took %s GiB memory and %.6f seconds`` v1/worker/gpu/model_runner.py
  (``Model loading took %s GiB and %.6f seconds`` in gpu_model_runner.py)
- ``Using cache directory: %s for vLLM's torch.compile``  compilation/backends.py
- ``Dynamo bytecode transform time: %.2f s``            compilation/backends.py
- ``Directly load AOT compilation from path %s``        compilation/decorators.py (cache hit)
- ``Directly load the compiled graph(s) for compile range %s from the cache, took %.3f s``
                                                       compilation/backends.py (cache hit)
- ``Compiling a graph for compile range %s takes %.2f s``  compilation/backends.py (compiled)
- ``Compiling model again due to a load failure from %s, reason: %s``
                                                       compilation/decorators.py (stale entry)
- ``vLLM's torch.compile cache is disabled.``           compilation/backends.py
- ``torch.compile took %.2f s in total``                compilation/monitor.py
- ``Available KV cache memory: %s GiB``                 v1/worker/gpu_worker.py
- ``GPU KV cache size: %s tokens``                      v1/core/kv_cache_utils.py
- ``Maximum concurrency for %s tokens per request: %.2fx``   v1/core/kv_cache_utils.py
- ``Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|...| 67/67``  (tqdm)
- ``Graph capturing finished in %.0f secs, took %.2f GiB``   v1/worker/gpu_model_runner.py
- ``init engine (profile, create kv cache, warmup model) took %.2f seconds``  v1/engine/core.py
- ``Starting vLLM API server %d on %s``                 entrypoints/openai/api_server.py
- ``Uvicorn running on http://0.0.0.0:8000`` / ``Application startup complete.``  (uvicorn)
- ``vLLM API server version %s``                        entrypoints/openai/api_server.py
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

PHASES: tuple[str, ...] = (
    "starting",
    "loading",
    "compiling",
    "kv_cache",
    "cuda_graphs",
    "api",
    "ready",
)

PHASE_LABELS: dict[str, str] = {
    "pending": "waiting for nodes",
    "starting": "starting",
    "loading": "loading weights",
    "compiling": "compiling the model (torch.compile)",
    "kv_cache": "profiling memory / sizing KV cache",
    "cuda_graphs": "capturing CUDA graphs",
    "api": "starting the API server",
    "ready": "ready",
    "failed": "failed",
    "ended": "ended",
}

_NUM = r"([0-9][0-9,]*)"
_FLOAT = r"([0-9]+(?:\.[0-9]+)?)"

_VERSION = re.compile(
    r"vLLM API server version (\S+)|Initializing a V1 LLM engine \(v([^)\s]+)\)"
    r"|Launching vLLM \(v([^)\s]+)\)|\u2588\s+version (\d+\.\d+\S*)"
)
_LOAD_START = re.compile(r"Starting to load model (\S+?)(?:\.\.\.)?\s*$|Loading model from scratch")
_SHARDS = re.compile(r"Loading \w+ checkpoint shards(?: \(\w+\))?:\s*(\d+)%.*?(\d+)/(\d+)")
_STREAMED = re.compile(r"Loading safetensors using [\w ]+?:\s*(\d+)% Completed")
_CHECKPOINT = re.compile(r"Filesystem type for checkpoints: (\S+?)\. Checkpoint size: " + _FLOAT)
_WEIGHTS_TOOK = re.compile(r"Loading weights took " + _FLOAT + r" seconds")
_MODEL_TOOK = re.compile(r"Model loading took " + _FLOAT + r" GiB")
_KV_MEM = re.compile(
    r"Available KV cache memory: " + _FLOAT + r" GiB"
    r"|Explicitly set \(" + _FLOAT + r"/[0-9.]+\) GiB for KV cache"  # CPU worker
)
_KV_TOKENS = re.compile(r"(?:GPU|CPU|\b)KV cache size: " + _NUM + r" tokens")
_CONCURRENCY = re.compile(
    r"Maximum concurrency for " + _NUM + r" tokens per request: " + _FLOAT + r"x"
)
_GRAPHS = re.compile(r"Capturing CUDA graphs?(?: \(([^)]*)\))?:?\s*(?:(\d+)%)?")
_GRAPHS_DONE = re.compile(r"Graph capturing finished in " + _FLOAT + r" secs")
_COMPILE_DIR = re.compile(r"Using cache directory: (\S+) for vLLM's torch\.compile")
_COMPILE_START = re.compile(r"Dynamo bytecode transform time: " + _FLOAT + r" s")
_COMPILE_HIT = re.compile(
    r"Directly load AOT compilation from path (\S+)"
    r"|Directly load the compiled graph\(s\) for compile range .* from the cache"
)
_COMPILE_MISS = re.compile(
    r"Compiling a graph for compile range .* takes " + _FLOAT + r" s"
    r"|Compiling model again due to a load failure from (\S+)"
)
_COMPILE_OFF = re.compile(r"vLLM's torch\.compile cache is disabled")
_COMPILE_TOOK = re.compile(r"torch\.compile took " + _FLOAT + r" s in total")
_ENGINE_UP = re.compile(r"init engine \(profile, create kv cache, warmup model\) took")
_API_START = re.compile(r"Starting vLLM (?:API )?server(?: \d+)? on (\S+)")
_READY = re.compile(r"Application startup complete|Uvicorn running on (\S+)")


@dataclass
class PhaseInfo:
    """The furthest start-up phase seen in a log, with the numbers the log gave on the way."""

    phase: str = "starting"
    vllm_version: str | None = None
    model: str | None = None
    weights_percent: int | None = None
    shards_done: int | None = None
    shards_total: int | None = None
    model_memory_gib: float | None = None
    checkpoint_fs: str | None = None  # the filesystem vLLM found the checkpoint on, e.g. LUSTRE
    checkpoint_gib: float | None = None
    kv_cache_memory_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_model_len: int | None = None
    max_concurrency: float | None = None
    compile_cache: str | None = None  # hit, miss, partial (some of each), disabled
    compile_cache_dir: str | None = None  # as vLLM printed it (the backbone's rank directory)
    compile_seconds: float | None = None  # "torch.compile took X s in total" (load or compile)
    graphs: str | None = None  # e.g. "decode, FULL 45%"
    url: str | None = None  # as the server printed it (0.0.0.0 when bound to all)
    lines_seen: int = 0

    @property
    def rank(self) -> int:
        return PHASES.index(self.phase)

    def advance(self, phase: str) -> None:
        if PHASES.index(phase) > self.rank:
            self.phase = phase

    def detail(self) -> str:
        """A short human description of the phase and its numbers."""
        label = PHASE_LABELS[self.phase]
        if self.phase == "loading":
            bits = self.loading_bits()
        elif self.phase == "compiling":
            bits = self.compile_bits()
        elif self.phase in ("kv_cache", "cuda_graphs", "api", "ready"):
            bits = self.kv_bits()
        else:
            bits = []
        return f"{label} ({', '.join(bits)})" if bits else label

    def loading_bits(self) -> list[str]:
        bits: list[str] = []
        if self.weights_percent is not None:
            bits.append(f"{self.weights_percent}%")
        if self.shards_total:
            bits.append(f"{self.shards_done}/{self.shards_total} shards")
        if self.model_memory_gib is not None:
            bits.append(f"{self.model_memory_gib:g} GiB loaded")
        elif self.checkpoint_gib is not None:
            bits.append(f"{self.checkpoint_gib:g} GiB on {self.checkpoint_fs}")
        return bits

    def kv_bits(self) -> list[str]:
        bits: list[str] = []
        if self.kv_cache_tokens is not None:
            bits.append(f"KV cache {self.kv_cache_tokens:,} tokens")
        elif self.kv_cache_memory_gib is not None:
            bits.append(f"KV cache {self.kv_cache_memory_gib:g} GiB")
        if self.max_concurrency is not None and self.max_model_len is not None:
            bits.append(
                f"max concurrency {self.max_concurrency:g}x at {self.max_model_len:,} tokens"
            )
        if self.phase == "cuda_graphs" and self.graphs:
            bits.append(self.graphs)
        return bits

    def compile_bits(self) -> list[str]:
        """The compilation cache in words: ``cache hit``, ``3.2 s`` (empty when unknown)."""
        bits = [f"cache {self.compile_cache}"] if self.compile_cache else []
        if self.compile_seconds is not None:
            bits.append(f"{self.compile_seconds:g} s")
        return bits

    def compile_summary(self) -> str | None:
        """One phrase for ``status``/``wait``: ``compile cache hit (torch.compile 3.2 s)``."""
        if self.compile_cache is None:
            return None
        took = f" (torch.compile {self.compile_seconds:g} s)" if self.compile_seconds else ""
        return f"compile cache {self.compile_cache}{took}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def split_lines(text: str) -> list[str]:
    """Lines of a log, treating tqdm's carriage returns as line ends."""
    return [ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]


def read_phase(lines: Iterable[str], info: PhaseInfo | None = None) -> PhaseInfo:
    """Fold log ``lines`` into ``info`` (a new one by default); the phase never goes back.

    Call again with the same ``info`` and only the new lines to follow a growing log.
    """
    info = info if info is not None else PhaseInfo()
    for raw in lines:
        for line in split_lines(raw) if "\r" in raw else [raw]:
            info.lines_seen += 1
            _fold(info, line)
    return info


def _fold(info: PhaseInfo, line: str) -> None:
    """Fold one log line into ``info``: every phase rule below looks at it."""
    for rule in _PHASE_RULES:
        rule(info, line)


def _fold_version(info: PhaseInfo, line: str) -> None:
    if "vLLM" in line or "version" in line:
        m = _VERSION.search(line)
        if m:
            info.vllm_version = next(g for g in m.groups() if g)


def _fold_loading(info: PhaseInfo, line: str) -> None:
    if "load" not in line and "Load" not in line and "checkpoints" not in line:
        return
    if m := _LOAD_START.search(line):
        info.model = m.group(1) or info.model
        info.advance("loading")
    elif m := _CHECKPOINT.search(line):
        info.checkpoint_fs, info.checkpoint_gib = m.group(1), float(m.group(2))
        info.advance("loading")
    elif m := _SHARDS.search(line):
        info.weights_percent = int(m.group(1))
        info.shards_done, info.shards_total = int(m.group(2)), int(m.group(3))
        info.advance("loading")
    elif m := _STREAMED.search(line):
        info.weights_percent = int(m.group(1))
        info.advance("loading")
    elif _WEIGHTS_TOOK.search(line):
        info.weights_percent = 100
        info.advance("loading")
    elif m := _MODEL_TOOK.search(line):
        info.model_memory_gib = float(m.group(1))
        info.weights_percent = 100
        info.advance("loading")


def _fold_kv_cache(info: PhaseInfo, line: str) -> None:
    if "KV cache" not in line and "concurrency" not in line:
        return
    if m := _KV_MEM.search(line):
        info.kv_cache_memory_gib = float(m.group(1) or m.group(2))
        info.advance("kv_cache")
    if m := _KV_TOKENS.search(line):
        info.kv_cache_tokens = _int(m.group(1))
        info.advance("kv_cache")
    if m := _CONCURRENCY.search(line):
        info.max_model_len = _int(m.group(1))
        info.max_concurrency = float(m.group(2))
        info.advance("kv_cache")


def combine_cache(seen: str | None, new: str) -> str:
    """The cache outcome after ``seen`` and then ``new``: the same twice is itself, ``disabled``
    wins, a hit and a miss (two compile ranges, two nodes) are ``partial``."""
    if seen is None or seen == new:
        return new
    if "disabled" in (seen, new):
        return "disabled"
    return "partial"


def _fold_compile(info: PhaseInfo, line: str) -> None:
    if "ompil" not in line and "cache" not in line and "Dynamo" not in line:
        return
    if m := _COMPILE_DIR.search(line):
        info.compile_cache_dir = m.group(1)
        info.advance("compiling")
    elif _COMPILE_START.search(line):
        info.advance("compiling")
    elif _COMPILE_HIT.search(line):
        info.compile_cache = combine_cache(info.compile_cache, "hit")
        info.advance("compiling")
    elif _COMPILE_MISS.search(line):
        info.compile_cache = combine_cache(info.compile_cache, "miss")
        info.advance("compiling")
    elif _COMPILE_OFF.search(line):
        info.compile_cache = combine_cache(info.compile_cache, "disabled")
        info.advance("compiling")
    elif m := _COMPILE_TOOK.search(line):
        info.compile_seconds = float(m.group(1))
        info.advance("compiling")


def _fold_graphs(info: PhaseInfo, line: str) -> None:
    if "raph" not in line:
        return
    if m := _GRAPHS.search(line):
        mode = m.group(1) or ""
        pct = f" {m.group(2)}%" if m.group(2) else ""
        info.graphs = (mode + pct).strip() or None
        info.advance("cuda_graphs")
    elif _GRAPHS_DONE.search(line):
        info.graphs = "done"
        info.advance("cuda_graphs")


def _fold_api(info: PhaseInfo, line: str) -> None:
    if _ENGINE_UP.search(line):
        info.advance("api")
    if m := _API_START.search(line):
        info.url = m.group(1)
        info.advance("api")
    if m := _READY.search(line):
        if m.group(1):
            info.url = info.url or m.group(1)
        info.advance("ready")


# Each rule sets the fields it recognises; PhaseInfo.advance never goes back, so the furthest
# phase a line shows wins.
_PHASE_RULES: tuple[Callable[[PhaseInfo, str], None], ...] = (
    _fold_version,
    _fold_loading,
    _fold_compile,
    _fold_kv_cache,
    _fold_graphs,
    _fold_api,
)


def _done_loading(info: PhaseInfo) -> bool:
    return info.rank > PHASES.index("loading") or info.weights_percent == 100


def merge(infos: Iterable[PhaseInfo]) -> PhaseInfo:
    """The job's phase from its nodes' phases: the head's, but never behind the slowest
    worker for the loading/KV phases (all nodes must load before the engine starts)."""
    infos = list(infos)
    if not infos:
        return PhaseInfo()
    head = infos[0]
    out = PhaseInfo(**head.to_dict())
    workers = infos[1:]
    # Headless workers log their loading, but not the engine's later phases: a worker holds
    # the job back only while it has not finished loading its weights.
    behind = [w for w in workers if not _done_loading(w)]
    if behind and out.phase in ("loading", "kv_cache", "cuda_graphs"):
        slowest = min(w.rank for w in behind)
        if slowest < out.rank:
            out.phase = PHASES[slowest]
            slow = min(behind, key=lambda w: (w.rank, w.weights_percent or 0))
            out.weights_percent, out.shards_done, out.shards_total = (
                slow.weights_percent,
                slow.shards_done,
                slow.shards_total,
            )
    for field_name in ("vllm_version", "model_memory_gib", "kv_cache_memory_gib"):
        if getattr(out, field_name) is None:
            for w in workers:
                if getattr(w, field_name) is not None:
                    setattr(out, field_name, getattr(w, field_name))
                    break
    _merge_compile(out, workers)
    return out


def _merge_compile(out: PhaseInfo, workers: list[PhaseInfo]) -> None:
    """Every node compiles its own ranks: the job hit the cache only if every node did, and
    took as long as the slowest node."""
    for w in workers:
        if w.compile_cache is not None:
            out.compile_cache = combine_cache(out.compile_cache, w.compile_cache)
        if w.compile_seconds is not None:
            out.compile_seconds = max(out.compile_seconds or 0.0, w.compile_seconds)
