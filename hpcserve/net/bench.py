"""Serving benchmark with ``vllm bench serve``'s metrics and names.

Definitions follow vLLM's ``vllm/benchmarks/serve.py`` and its chat-completions request function
(streaming, ``stream_options.include_usage``):

* TTFT: from sending the request to the first SSE chunk that carries ``choices``.
* ITL: the gaps between consecutive ``choices`` chunks (all requests pooled).
* E2EL (latency): from sending to the last ``choices`` chunk (the usage chunk does not count).
* output tokens: ``usage.completion_tokens``; input tokens: ``usage.prompt_tokens``.
* TPOT per request: ``(latency - ttft) / (output_tokens - 1)``, only when output_tokens > 1.
* throughputs: completed requests, output tokens, and input+output tokens, each divided by the
  benchmark's wall duration (start of the first request to the end of the last).
* mean / median / pN use numpy's linear interpolation; all in ms.

The pure part (:func:`compute_metrics`, :func:`format_report`) is separate from the threaded
driver (:func:`run_load`), which uses :mod:`requests` (imported when it runs).
"""

from __future__ import annotations

import json
import math
import queue
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcserve.errors import UsageError

if TYPE_CHECKING:
    from hpcserve.net.api import Client

PERCENTILES = (99.0,)

# Short common English words: most tokenizers give one token for each (plus the leading space).
_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part over "
    "new sound take only little work know place year live me back give most very after thing "
    "our just name good sentence man think say great where help through much before line "
    "right too mean old any same tell boy follow came want show also around form three small "
    "set put end does another well large must big even such because turn here why ask went "
    "men read need land different home us move try kind hand picture again change off play "
    "spell air away animal house point page letter mother answer found study still learn "
    "should world "
)
WORDS = tuple(_WORD_TEXT.split())


@dataclass
class RequestOutput:
    """One request's timings (seconds, perf_counter clock)."""

    success: bool = False
    prompt_len: int = 0
    output_tokens: int | None = None
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    start_time: float = 0.0
    error: str = ""
    generated_text: str = ""


@dataclass
class Metrics:
    """The numbers ``vllm bench serve`` prints, under its JSON names."""

    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    stats_ms: dict[str, float]  # mean_ttft_ms, median_ttft_ms, std_ttft_ms, p99_ttft_ms, ...
    max_concurrency: int | None = None
    request_rate: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        stats = d.pop("stats_ms")
        d.update(stats)
        d["request_rate"] = None if math.isinf(self.request_rate) else self.request_rate
        return d


def percentile(values: Sequence[float], p: float) -> float:
    """numpy.percentile's default (linear interpolation between closest ranks)."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _stats(name: str, values: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    vals = list(values) or [0.0]
    out = {
        f"mean_{name}_ms": statistics.fmean(vals) * 1000,
        f"median_{name}_ms": statistics.median(vals) * 1000,
        f"std_{name}_ms": statistics.pstdev(vals) * 1000,
    }
    for p in percentiles:
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = percentile(vals, p) * 1000
    return out


def compute_metrics(
    outputs: Sequence[RequestOutput],
    duration: float,
    percentiles: Sequence[float] = PERCENTILES,
    *,
    max_concurrency: int | None = None,
    request_rate: float = math.inf,
) -> Metrics:
    """Aggregate request outputs over a benchmark of ``duration`` seconds."""
    ok = [o for o in outputs if o.success]
    out_lens, ttfts, tpots, itls, e2els = [], [], [], [], []
    total_input = 0
    for o in ok:
        # Without usage vLLM re-tokenizes the text; with no tokenizer here, count token
        # chunks (one per chunk, as vLLM streams them) instead.
        n = o.output_tokens if o.output_tokens else len(o.itl) + 1
        out_lens.append(n)
        total_input += o.prompt_len
        if n > 1:
            tpots.append((o.latency - o.ttft) / (n - 1))
        itls.extend(o.itl)
        ttfts.append(o.ttft)
        e2els.append(o.latency)
    total_output = sum(out_lens)
    peak_tok, peak_conc = _peaks(ok)
    stats: dict[str, float] = {}
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        stats.update(_stats(name, vals, percentiles))
    dur = duration if duration > 0 else float("nan")
    return Metrics(
        completed=len(ok),
        failed=len(outputs) - len(ok),
        duration=duration,
        total_input_tokens=total_input,
        total_output_tokens=total_output,
        request_throughput=len(ok) / dur,
        output_throughput=total_output / dur,
        total_token_throughput=(total_input + total_output) / dur,
        max_output_tokens_per_s=peak_tok,
        max_concurrent_requests=peak_conc,
        stats_ms=stats,
        max_concurrency=max_concurrency,
        request_rate=request_rate,
    )


def _peaks(ok: Sequence[RequestOutput]) -> tuple[float, int]:
    """Peak output tokens in any one-second bucket, and peak requests active in one, as vLLM."""
    if not ok:
        return 0.0, 0
    t0 = min(o.start_time for o in ok)
    end = max(o.start_time + o.latency for o in ok)
    n = int(math.ceil(end - t0)) + 1
    tokens = [0] * n
    conc = [0] * n
    for o in ok:
        t = o.start_time + o.ttft
        times = [t]
        for gap in o.itl:
            t += gap
            times.append(t)
        for tt in times:
            b = int(tt - t0)
            if 0 <= b < n:
                tokens[b] += 1
        for s in range(int(o.start_time - t0), int(o.start_time + o.latency - t0) + 1):
            conc[s] += 1
    return float(max(tokens)), max(conc)


def format_report(m: Metrics) -> str:
    """The result block, laid out and labelled as ``vllm bench serve`` prints it."""
    rows: list[str] = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: Any, fmt: str = "<10.2f") -> None:
        rows.append(f"{label:<40} {value:{fmt}}")

    row("Successful requests:", m.completed, "<10")
    row("Failed requests:", m.failed, "<10")
    if m.max_concurrency is not None:
        row("Maximum request concurrency:", m.max_concurrency, "<10")
    if not math.isinf(m.request_rate):
        row("Request rate configured (RPS):", m.request_rate)
    row("Benchmark duration (s):", m.duration)
    row("Total input tokens:", m.total_input_tokens, "<10")
    row("Total generated tokens:", m.total_output_tokens, "<10")
    row("Request throughput (req/s):", m.request_throughput)
    row("Output token throughput (tok/s):", m.output_throughput)
    row("Peak output token throughput (tok/s):", m.max_output_tokens_per_s)
    row("Peak concurrent requests:", float(m.max_concurrent_requests))
    row("Total token throughput (tok/s):", m.total_token_throughput)
    for key, name, header in (
        ("ttft", "TTFT", "Time to First Token"),
        ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
        ("itl", "ITL", "Inter-token Latency"),
        ("e2el", "E2EL", "End-to-end Latency"),
    ):
        rows.append("{s:{c}^{n}}".format(s=header, n=50, c="-"))
        row(f"Mean {name} (ms):", m.stats_ms[f"mean_{key}_ms"])
        row(f"Median {name} (ms):", m.stats_ms[f"median_{key}_ms"])
        for k, v in m.stats_ms.items():
            if k.startswith("p") and k.endswith(f"_{key}_ms"):
                row(f"P{k[1:].split('_')[0]} {name} (ms):", v)
    rows.append("=" * 50)
    return "\n".join(rows)


# -- workload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    text: str
    input_len: int  # as requested (words); replaced by usage.prompt_tokens when measured
    output_len: int


def random_prompts(n: int, input_len: int, output_len: int, seed: int = 0) -> list[Prompt]:
    """``n`` prompts of ``input_len`` random common words (about one token each)."""
    if n < 1 or input_len < 1 or output_len < 1:
        raise UsageError("--num-prompts, --input-len and --output-len must be at least 1")
    rng = random.Random(seed)
    return [
        Prompt(" ".join(rng.choice(WORDS) for _ in range(input_len)), input_len, output_len)
        for _ in range(n)
    ]


def tokens_per_word(
    base_url: str, model: str, api_key: str | None = None, seed: int = 0
) -> float | None:
    """Tokens per random word for the server's tokenizer, from vLLM's ``POST /tokenize``
    (None when the server has no such endpoint). Lets ``--input-len`` mean tokens, as in
    ``vllm bench serve``'s random dataset, without a tokenizer here."""
    import requests

    rng = random.Random(seed + 1)
    words = 200
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/").removesuffix("/v1") + "/tokenize"
    try:
        r = requests.post(url, json={"model": model, "prompt": text}, headers=headers, timeout=30)
        count = r.json().get("count") if r.ok else None
    except (requests.RequestException, ValueError):
        return None
    return count / words if count else None


def random_prompts_tokens(
    n: int, input_len: int, output_len: int, tpw: float | None, seed: int = 0
) -> list[Prompt]:
    """Like :func:`random_prompts` with ``input_len`` in tokens (``tpw`` tokens per word)."""
    words = max(1, round(input_len / tpw)) if tpw else input_len
    return [
        Prompt(p.text, input_len, p.output_len) for p in random_prompts(n, words, output_len, seed)
    ]


def file_prompts(path: str, n: int, output_len: int) -> list[Prompt]:
    """Prompts from a file: JSON lines with ``prompt`` (or ``text``), else one per line;
    cycled to ``n``."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise UsageError(f"cannot read prompts file {path}: {e.strerror}") from e
    texts = []
    for ln in lines:
        if ln.lstrip().startswith("{"):
            try:
                obj = json.loads(ln)
                texts.append(str(obj.get("prompt") or obj.get("text") or ""))
                continue
            except ValueError:
                pass
        texts.append(ln)
    texts = [t for t in texts if t]
    if not texts:
        raise UsageError(f"prompts file {path} has no prompt")
    return [
        Prompt(texts[i % len(texts)], len(texts[i % len(texts)].split()), output_len)
        for i in range(n)
    ]


# -- driver ---------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str = "", enabled: bool = True) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.done = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def update(self) -> None:
        with self._lock:
            self.done += 1
            if not self.enabled:
                return
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            el = time.monotonic() - self._t0
            sys.stderr.write(
                f"\r{self.label}[{'#' * filled}{'.' * (width - filled)}] "
                f"{self.done}/{self.total} {el:5.1f}s"
            )
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _request_body(model: str, p: Prompt, ignore_eos: bool) -> dict[str, Any]:
    """A streamed chat completion with usage, as vLLM's ``openai-chat`` request function."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": p.text}],
        "max_completion_tokens": p.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def _sse_payload(raw: bytes) -> bytes | None:
    """The JSON of one SSE line (None for keep-alives, comments and ``[DONE]``)."""
    if not raw or raw.startswith(b":"):
        return None
    data = raw[6:] if raw.startswith(b"data: ") else raw.removeprefix(b"data:")
    return None if data.strip() == b"[DONE]" else data


class _Timing:
    """Fills a :class:`RequestOutput` from the chunks of one stream as they arrive."""

    def __init__(self, out: RequestOutput) -> None:
        self.out = out
        self.start = out.start_time
        self.last = self.start
        self.first = False

    def chunk(self, chunk: dict[str, Any], now: float) -> None:
        """A ``choices`` chunk is a token (TTFT for the first, ITL after); a ``usage`` chunk
        gives the token counts."""
        out = self.out
        if chunk.get("choices"):
            if not self.first:
                self.first = True
                out.ttft = now - self.start
            else:
                out.itl.append(now - self.last)
            out.generated_text += chunk["choices"][0].get("delta", {}).get("content") or ""
            self.last = now
        elif chunk.get("usage"):
            usage = chunk["usage"]
            out.output_tokens = usage.get("completion_tokens")
            if usage.get("prompt_tokens") is not None:
                out.prompt_len = usage["prompt_tokens"]

    def finish(self) -> None:
        self.out.success = self.first
        if not self.first:
            self.out.error = "no chunk with a token arrived"
        self.out.latency = self.last - self.start


def _send(
    session: Any,
    url: str,
    headers: dict[str, str],
    model: str,
    p: Prompt,
    ignore_eos: bool,
    timeout: float,
) -> RequestOutput:
    """Send one prompt and time its stream; any failure is a failed request, as in vLLM."""
    body = _request_body(model, p, ignore_eos)
    out = RequestOutput(prompt_len=p.input_len)
    out.start_time = time.perf_counter()
    timing = _Timing(out)
    try:
        with session.post(url, json=body, headers=headers, stream=True, timeout=timeout) as r:
            if r.status_code != 200:
                out.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return out
            for raw in r.iter_lines(chunk_size=None):
                data = _sse_payload(raw)
                if data is not None:
                    now = time.perf_counter()
                    timing.chunk(json.loads(data), now)
        timing.finish()
    except Exception as e:  # noqa: BLE001 - any failure is a failed request, as in vLLM
        out.error = f"{type(e).__name__}: {e}"
    return out


def _senders(
    n: int,
    send_one: Callable[[int], RequestOutput],
    outputs: list[RequestOutput | None],
    bar: Progress,
    workers: int,
) -> tuple[list[threading.Thread], queue.SimpleQueue[int | None], threading.Barrier]:
    """``workers`` sender threads, started now and parked on the returned barrier; each takes
    the next due prompt index from the queue as soon as its previous request ends (``None``
    ends it), as vLLM's tasks wait on one semaphore. A crash in ``send_one`` is a failed
    request, not a lost sender."""
    due: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    count = min(workers, n)
    ready = threading.Barrier(count + 1)

    def work() -> None:
        ready.wait()
        while (i := due.get()) is not None:
            try:
                outputs[i] = send_one(i)
            except Exception as e:  # noqa: BLE001 - any failure is a failed request
                outputs[i] = RequestOutput(error=f"{type(e).__name__}: {e}")
            finally:
                bar.update()

    threads = [
        threading.Thread(target=work, name=f"hpcserve-bench-{k}", daemon=True) for k in range(count)
    ]
    for th in threads:
        th.start()
    return threads, due, ready


def run_load(
    base_url: str,
    prompts: Sequence[Prompt],
    *,
    model: str,
    api_key: str | None = None,
    concurrency: int | None = None,
    request_rate: float = math.inf,
    seed: int = 0,
    ignore_eos: bool = True,
    timeout: float = 600.0,
    progress: bool = True,
    send: Callable[..., RequestOutput] = _send,
) -> tuple[list[RequestOutput], float]:
    """Send ``prompts`` (Poisson arrivals at ``request_rate``, at most ``concurrency`` in
    flight); returns the outputs and the benchmark duration in seconds.

    As ``vllm bench serve`` (``benchmark`` in ``vllm/benchmarks/serve.py``: every request a
    task waiting on one ``asyncio.Semaphore(max_concurrency)``), the senders exist before the
    clock starts: at an infinite rate the first ``concurrency`` requests leave together and
    each later one the moment a slot frees. Each request's own clock (TTFT, latency) starts
    in :func:`_send`, after its slot, as vLLM's request function starts it."""
    import requests
    from requests.adapters import HTTPAdapter

    url = base_url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    n = len(prompts)
    workers = min(concurrency, n) if concurrency else n
    pool = max(concurrency or 0, 16) if concurrency else n
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))
    session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))
    bar = Progress(n, f"c={concurrency or 'inf'} ", enabled=progress)
    outputs: list[RequestOutput | None] = [None] * n
    rng = random.Random(seed)

    def send_one(i: int) -> RequestOutput:
        return send(session, url, headers, model, prompts[i], ignore_eos, timeout)

    threads, due, ready = _senders(n, send_one, outputs, bar, workers)
    burst = math.isinf(request_rate)
    if burst:  # all due at once: queued before the senders are let go
        for i in range(n):
            due.put(i)
    ready.wait()
    t0 = time.perf_counter()
    if not burst:
        for i in range(n):
            due.put(i)
            if i + 1 < n:
                time.sleep(rng.expovariate(request_rate))
    for _ in threads:
        due.put(None)
    for th in threads:
        th.join()
    duration = time.perf_counter() - t0
    session.close()
    return [o or RequestOutput(error="not sent") for o in outputs], duration


def plot(results: Sequence[Metrics], path: str) -> str | None:
    """Latency percentiles and throughput against concurrency; None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = [m.max_concurrency or 0 for m in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms"):
        a.plot(xs, [m.stats_ms.get(key, 0) for m in results], marker="o", label=key)
    a.set_xlabel("concurrency")
    a.set_ylabel("ms")
    a.legend()
    b.plot(xs, [m.output_throughput for m in results], marker="o", label="output tok/s")
    b.plot(xs, [m.request_throughput for m in results], marker="o", label="req/s")
    b.set_xlabel("concurrency")
    b.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the benchmark of ``hpcserve bench`` ----------------------------------------------------


@dataclass(frozen=True)
class BenchSpec:
    """The workload options of ``hpcserve bench`` (named as ``vllm bench serve``'s)."""

    concurrencies: tuple[int, ...] = (1,)
    request_rate: float = math.inf
    num_prompts: int = 50
    input_len: int = 128
    output_len: int = 128
    prompts_file: str | None = None
    ignore_eos: bool = True
    model: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.request_rate <= 0:
            raise UsageError("--request-rate must be positive")


@dataclass
class BenchPlan:
    """The model and prompts a benchmark sends; ``tokenized`` is False when ``--input-len`` had
    to count words (the server has no ``/tokenize``), None for a prompts file; ``tpw`` is the
    server's tokens per random word."""

    model: str
    prompts: list[Prompt]  # the first concurrency level's
    tokenized: bool | None = None
    tpw: float | None = None

    def at_level(self, spec: BenchSpec, level: int) -> list[Prompt]:
        """The prompts of the ``level``-th concurrency (0-based). Random prompts are drawn
        anew for each level with seed ``spec.seed + level``: repeated prompts would be
        answered from vLLM's prefix cache at the later levels (its hit rate rose from 0.3% to
        35% over the levels of the H200 run in BENCHMARKS.md 9, whose levels all sent the
        same seeded prompts). A prompts file is the user's workload: the same at every level."""
        if level == 0 or spec.prompts_file:
            return self.prompts
        return random_prompts_tokens(
            spec.num_prompts, spec.input_len, spec.output_len, self.tpw, spec.seed + level
        )


@dataclass
class BenchRun:
    """One run (one concurrency): its metrics and the failed requests' errors."""

    metrics: Metrics
    errors: list[str]


def prepare(client: Client, spec: BenchSpec) -> BenchPlan:
    """Check ``/health``, pick the model, and build the prompts (random ones sized in tokens
    with the server's tokenizer when it has one)."""
    client.health()
    name = client.default_model(spec.model)
    if spec.prompts_file:
        return BenchPlan(name, file_prompts(spec.prompts_file, spec.num_prompts, spec.output_len))
    tpw = tokens_per_word(client.base_url, name, client.api_key, spec.seed)
    prompts = random_prompts_tokens(
        spec.num_prompts, spec.input_len, spec.output_len, tpw, spec.seed
    )
    return BenchPlan(name, prompts, tpw is not None, tpw)


def runs(
    client: Client,
    plan: BenchPlan,
    spec: BenchSpec,
    percentiles: Sequence[float] = PERCENTILES,
) -> Iterator[BenchRun]:
    """Run once per concurrency (1 when none is given), each with its own prompts
    (:meth:`BenchPlan.at_level`), yielding each run with ``percentiles`` of its latencies."""
    for level, conc in enumerate(spec.concurrencies or (1,)):
        outs, dur = run_load(
            client.base_url,
            plan.at_level(spec, level),
            model=plan.model,
            api_key=client.api_key,
            concurrency=conc,
            request_rate=spec.request_rate,
            seed=spec.seed + level,
            ignore_eos=spec.ignore_eos,
        )
        m = compute_metrics(
            outs, dur, percentiles, max_concurrency=conc, request_rate=spec.request_rate
        )
        yield BenchRun(m, [o.error for o in outs if not o.success])


def results_json(results: Sequence[Metrics]) -> str:
    """``--json``: one run as an object, several as a list, with vLLM's keys."""
    data = [m.to_dict() for m in results]
    return json.dumps(data[0] if len(data) == 1 else data, indent=2)
