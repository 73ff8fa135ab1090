"""Small OpenAI-API client for the GPU test: readiness, one chat, first-token latency, throughput.

Standard library only (runs under the GPU image's python3 and here). Readiness proper is
`wait_ready.py` (hpcserve's own wait loop) and throughput is `hpcserve bench`; this client adds
the one chat and an idle first-token latency. It measures:
- ready_s: from --since (unix time both nodes were started) until GET /health answers 200,
  polled every 0.5 s (immediate when wait_ready.py ran first);
- ttft_ms: time to the first streamed content chunk of a short chat completion
  (median / min / max of --ttft-n sequential requests after one warm-up);
- throughput: --requests streaming chat completions, --concurrency at a time, each
  --max-tokens tokens with ignore_eos; output tokens per second over the wall time
  (tokens counted from the server's usage figures); --requests 0 skips it.

    python3 vllm_client.py --url http://127.0.0.1:8000 --since 1700000000.0 --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("VLLM_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def wait_ready(url: str, since: float, timeout: float, alive=None) -> float:
    """Poll /health every 0.5 s; return seconds since ``since`` when it answers 200."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.time() - since
        except (urllib.error.URLError, OSError):
            pass
        if alive is not None and not alive():
            raise RuntimeError("a node process exited before the server was ready")
        time.sleep(0.5)
    raise TimeoutError(f"{url}/health not ready after {timeout:.0f} s")


def served_model(url: str) -> str:
    req = urllib.request.Request(f"{url}/v1/models", headers=_headers())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"][0]["id"]


def chat(url: str, model: str, content: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    req = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), _headers()
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.load(resp)


def stream_chat(
    url: str, model: str, content: str, max_tokens: int, ignore_eos: bool = False
) -> tuple[float, float, int]:
    """One streaming chat: (seconds to first content chunk, total seconds, output tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": ignore_eos,
    }
    req = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), _headers()
    )
    start = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices", []):
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    total = time.perf_counter() - start
    return (first if first is not None else total), total, tokens


def bench(url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    prompts = [f"request {i}: tell me about the cluster node gpu cache" for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(
            pool.map(lambda p: stream_chat(url, model, p, max_tokens, ignore_eos=True), prompts)
        )
    wall = time.perf_counter() - start
    tokens = sum(r[2] for r in results)
    ttfts = [r[0] * 1e3 for r in results]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "output_tok_per_s": round(tokens / wall, 1),
        "ttft_ms_median_under_load": round(statistics.median(ttfts), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--since", type=float, required=True)
    ap.add_argument("--timeout", type=float, default=420)
    ap.add_argument("--pids", default="", help="comma-separated pids that must stay alive")
    ap.add_argument("--ttft-n", type=int, default=10)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    pids = [int(p) for p in args.pids.split(",") if p]

    def alive() -> bool:
        """All node processes still running (an unreaped zombie counts as dead)."""
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        return False
            except (OSError, IndexError):
                return False
        return True

    result: dict = {}
    try:
        result["ready_s"] = round(wait_ready(args.url, args.since, args.timeout, alive), 1)
        print(f"client: ready after {result['ready_s']} s", flush=True)
        model = served_model(args.url)
        result["model"] = model
        reply = chat(args.url, model, "Hello! Which node answers?", 32)
        result["chat"] = {
            "content": reply["choices"][0]["message"]["content"],
            "usage": reply.get("usage"),
        }
        print(f"client: chat -> {result['chat']}", flush=True)
        stream_chat(args.url, model, "warm up", 8)
        ttfts = [
            stream_chat(args.url, model, "What time is it?", 16)[0] * 1e3
            for _ in range(args.ttft_n)
        ]
        result["ttft_ms"] = {
            "median": round(statistics.median(ttfts), 2),
            "min": round(min(ttfts), 2),
            "max": round(max(ttfts), 2),
            "n": len(ttfts),
        }
        print(f"client: first-token latency {result['ttft_ms']}", flush=True)
        if args.requests > 0:
            result["bench"] = bench(
                args.url, model, args.requests, args.concurrency, args.max_tokens
            )
            print(f"client: bench {result['bench']}", flush=True)
    except Exception as exc:  # report what failed, keep what was measured
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"client: FAILED {result['error']}", flush=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    raise SystemExit(1 if "error" in result else 0)


if __name__ == "__main__":
    main()
