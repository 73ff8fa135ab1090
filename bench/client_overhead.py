"""The two measuring tools against a stand-in server whose timings are known.

``hpcserve bench`` and ``vllm bench serve`` both time a streamed chat completion from the
client side. Only the server knows when a request arrived and when each token left, so this
benchmark runs both tools against a *stand-in* OpenAI-compatible server (not vLLM: it exists
only so that the clients' numbers can be compared with server-side truth; it never replaces the
runs against real vLLM) and prints, per tool and concurrency, the tool's median/mean TTFT, TPOT,
ITL and output throughput next to the server's truth for the same requests.

The stand-in imitates vLLM's continuous batching closely enough to matter: one engine loop that
steps every ``--step-ms`` (a step that admits new requests takes ``--prefill-ms``); a request
waits for the next step, gets its first token at the end of that step, then one token per step
until ``max_tokens``. It streams chat-completions SSE as vLLM's ``serving_chat.py`` does: a role
chunk then the first token, one chunk per token, the last with ``finish_reason``, a ``usage``
chunk (``stream_options.include_usage``) and ``data: [DONE]``, over HTTP/1.1 chunked encoding.
It is plain asyncio (no aiohttp in hpcserve's venv) and runs in its own process.

Each tool runs from its own CLI (``python -m hpcserve bench``, ``vllm bench serve``) through a
short wrapper that only records, after the run, each request's start time and TTFT and the CPU
time of the load phase, so that each client TTFT splits into send + server TTFT + receive.

Server truth per request: TTFT = the request fully read -> the first content chunk written to
the socket; TPOT = the mean gap between the token chunks it wrote. All clocks are
``time.perf_counter`` (CLOCK_MONOTONIC on Linux, shared by the processes).

Usage::

    python bench/client_overhead.py [--rounds 2] [--step-ms 6] [--prefill-ms 20] [--out DIR]
    python bench/client_overhead.py serve [--port 0]   # the stand-in alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAB_CACHE = Path(os.environ.get("HPCSERVE_LAB_CACHE", "/var/cache/hpcserve-lab"))  # `lab up`'s
HPCSERVE_PY = sys.executable  # the interpreter hpcserve is installed in (this one)
VLLM_PY = str(LAB_CACHE / "vllm-venv" / "bin" / "python")  # its bin/vllm calls cli.main.main
TOKENIZER = str(LAB_CACHE / "models" / "tiny-llama")
MODEL = "standin"
KEY = 60
# `hpcserve bench` as its CLI runs it, with run_load wrapped to keep each request's timings
# and the process's CPU time while it sends.
HPCSERVE_DETAIL = """
import json, runpy, sys, time
import hpcserve.net.bench as b
inner, res = b.run_load, {"requests": [], "cpu_s": 0.0}
def run_load(base_url, prompts, **kw):
    c0 = time.process_time()
    outs, dur = inner(base_url, prompts, **kw)
    res["cpu_s"] += time.process_time() - c0
    res["requests"] += [
        {"key": p.text[:{KEY}], "start": o.start_time, "ttft": o.ttft}
        for p, o in zip(prompts, outs)
    ]
    return outs, dur
b.run_load = run_load
path = sys.argv.pop(1)
try:
    runpy.run_module("hpcserve", run_name="__main__")
finally:
    open(path, "w").write(json.dumps(res))
""".replace("{KEY}", str(KEY))
# `vllm bench serve` through its own entry point, timing the CPU of its `benchmark` coroutine.
VLLM_CPU = """
import json, sys, time
import vllm.benchmarks.serve as s
from vllm.entrypoints.cli.main import main
inner, res = s.benchmark, {}
async def benchmark(*a, **kw):
    c0 = time.process_time()
    try:
        return await inner(*a, **kw)
    finally:
        res["cpu_s"] = time.process_time() - c0
s.benchmark = benchmark
path = sys.argv.pop(1)
sys.argv[0] = "vllm"
try:
    main()
finally:
    open(path, "w").write(json.dumps(res))
"""
LEVELS = {1: 16, 16: 64, 64: 128}  # concurrency -> prompts, as on the H200


# -- the stand-in server --------------------------------------------------------------------


@dataclass
class Stream:
    """One streamed chat request inside the stand-in."""

    rid: int
    request_id: str
    max_tokens: int
    prompt_tokens: int
    writer: asyncio.StreamWriter
    arrival: float
    key: str = ""  # the prompt's first characters, to match hpcserve's requests
    sent: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self) -> dict[str, Any]:
        n = len(self.sent)
        return {
            "rid": self.rid,
            "request_id": self.request_id,
            "key": self.key,
            "arrival": self.arrival,
            "first": self.sent[0] if self.sent else None,
            "last": self.sent[-1] if self.sent else None,
            "tokens": n,
            "ttft": self.sent[0] - self.arrival if self.sent else None,
            "tpot": (self.sent[-1] - self.sent[0]) / (n - 1) if n > 1 else None,
        }


def _chunk(rid: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-standin-{rid}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _sse(obj: dict[str, Any] | str) -> bytes:
    """One SSE event as one HTTP/1.1 chunk."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    ev = f"data: {data}\n\n".encode()
    return f"{len(ev):x}\r\n".encode() + ev + b"\r\n"


def _response(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


class StandIn:
    """The stand-in server: an engine loop stepping every ``step_ms``, ``prefill_ms`` for a
    step that admits new requests. Not vLLM; see the module docstring."""

    def __init__(self, step_ms: float = 6.0, prefill_ms: float = 20.0) -> None:
        self.step = step_ms / 1000
        self.prefill = prefill_ms / 1000
        self.waiting: list[Stream] = []
        self.active: list[Stream] = []
        self.log: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._next_rid = 0
        self._server: asyncio.AbstractServer | None = None
        self._engine_task: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._connection, host, port)
        self._engine_task = asyncio.create_task(self._engine())
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._engine_task:
            self._engine_task.cancel()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    # engine ------------------------------------------------------------------------------

    async def _engine(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.active and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
            t0 = loop.time()
            new, self.waiting = self.waiting, []
            await asyncio.sleep(max(0.0, t0 + (self.prefill if new else self.step) - loop.time()))
            self._emit(self.active, new)

    def _emit(self, old: list[Stream], new: list[Stream]) -> None:
        """End of a step: one token for every running stream, the first for the new ones."""
        still = []
        for s in old + new:
            last = len(s.sent) + 1 >= s.max_tokens
            tok = _sse(_chunk(s.rid, {"content": " tok"}, "length" if last else None))
            if not s.sent:  # vLLM yields the role chunk right before the first token
                tok = _sse(_chunk(s.rid, {"role": "assistant", "content": ""})) + tok
            s.sent.append(time.perf_counter())  # just before the bytes go to the socket
            s.writer.write(tok)
            if last:
                self._finish(s)
            else:
                still.append(s)
        self.active = still

    def _finish(self, s: Stream) -> None:
        n = len(s.sent)
        usage = {"prompt_tokens": s.prompt_tokens, "total_tokens": s.prompt_tokens + n}
        usage["completion_tokens"] = n
        final = {"id": f"chatcmpl-standin-{s.rid}", "object": "chat.completion.chunk"}
        final.update({"created": int(time.time()), "model": MODEL, "choices": [], "usage": usage})
        s.writer.write(_sse(final) + _sse("[DONE]") + b"0\r\n\r\n")
        self.log.append(s.record())
        s.done.set()

    # HTTP --------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        arrival = time.perf_counter()
        if (method, path.split("?")[0]) == ("POST", "/v1/chat/completions"):
            await self._chat(json.loads(body), headers, writer, arrival)
        else:
            writer.write(self._plain(method, path.split("?")[0], body))
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    def _plain(self, method: str, path: str, body: bytes) -> bytes:
        if path == "/health":
            return _response("200 OK", b"")
        if path == "/v1/models":
            data = {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "owned_by": "standin"}],
            }
            return _response("200 OK", json.dumps(data).encode())
        if (method, path) == ("POST", "/tokenize"):
            req = json.loads(body or b"{}")
            count = len(str(req.get("prompt", "")).split())
            return _response("200 OK", json.dumps({"count": count, "max_model_len": 4096}).encode())
        if (method, path) == ("POST", "/_standin/reset"):
            n, self.log = len(self.log), []
            return _response("200 OK", json.dumps({"cleared": n}).encode())
        if path == "/_standin/log":
            return _response("200 OK", json.dumps(self.log).encode())
        return _response("404 Not Found", b'{"detail":"Not Found"}')

    async def _chat(
        self, req: dict[str, Any], headers: dict[str, str], w: asyncio.StreamWriter, arrival: float
    ) -> None:
        words = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", []))
        max_tokens = int(req.get("max_completion_tokens") or req.get("max_tokens") or 16)
        # Every stream runs to max_tokens: the stand-in has no EOS, as with ignore_eos.
        s = Stream(
            self._next_rid, headers.get("x-request-id", ""), max(1, max_tokens), words, w, arrival
        )
        s.key = str((req.get("messages") or [{}])[-1].get("content", ""))[:KEY]
        self._next_rid += 1
        w.write(STREAM_HEAD)  # uvicorn writes the response head before the first body chunk
        self.waiting.append(s)
        self._wake.set()
        await s.done.wait()


async def _serve(port: int, step_ms: float, prefill_ms: float) -> None:
    srv = StandIn(step_ms, prefill_ms)
    bound = await srv.start(port=port)
    print(bound, flush=True)
    await asyncio.Event().wait()


# -- the clients ----------------------------------------------------------------------------


def run_hpcserve(url: str, conc: int, n: int, seed: int, out: Path) -> dict[str, Any]:
    detail = out / f"hpcserve-c{conc}-s{seed}.json"
    cmd = [HPCSERVE_PY, "-c", HPCSERVE_DETAIL, str(detail), "bench"]
    cmd += ["--url", url, "--concurrency", str(conc)]
    cmd += ["--num-prompts", str(n), "--input-len", "128", "--output-len", "128"]
    cmd += ["--seed", str(seed), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    data = json.loads(r.stdout)
    res = dict(data[0] if isinstance(data, list) else data)
    res.update(json.loads(detail.read_text()))
    return res


def run_vllm(url: str, conc: int, n: int, seed: int, out: Path) -> dict[str, Any]:
    name = f"vllm-c{conc}-s{seed}.json"
    cpu = out / f"vllm-c{conc}-s{seed}-cpu.json"
    cmd = [VLLM_PY, "-c", VLLM_CPU, str(cpu), "bench", "serve", "--backend", "openai-chat"]
    cmd += ["--endpoint", "/v1/chat/completions"]
    cmd += ["--base-url", url, "--model", MODEL, "--tokenizer", TOKENIZER]
    cmd += ["--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "128"]
    cmd += ["--ignore-eos", "--num-prompts", str(n), "--max-concurrency", str(conc)]
    cmd += ["--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result"]
    cmd += ["--save-detailed"]  # per request start_times and ttfts, for the split below
    cmd += ["--result-dir", str(out), "--result-filename", name]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    res = dict(json.loads((out / name).read_text()))
    res.update(json.loads(cpu.read_text()))
    # vLLM's i-th request carries x-request-id PREFIX-i; its outputs are in that order.
    res["requests"] = [
        {"index": i, "start": st, "ttft": t}
        for i, (st, t) in enumerate(zip(res["start_times"], res["ttfts"], strict=True))
    ]
    return res


TOOLS = {"hpcserve": run_hpcserve, "vllm": run_vllm}


def _http(url: str, method: str = "GET") -> Any:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
        return json.loads(r.read())


def server_truth(log: list[dict[str, Any]], tool: str) -> dict[str, float]:
    """The stand-in's own TTFT/TPOT for the run's requests (vLLM's start-up test request,
    the one without ``x-request-id``, left out) and its output throughput."""
    recs = [r for r in log if r["request_id"] or tool != "vllm"]
    ttfts = [r["ttft"] * 1000 for r in recs]
    tpots = [r["tpot"] * 1000 for r in recs if r["tpot"] is not None]
    span = max(r["last"] for r in recs) - min(r["arrival"] for r in recs)
    return {
        "n": len(recs),
        "median_ttft_ms": statistics.median(ttfts),
        "mean_ttft_ms": statistics.fmean(ttfts),
        "median_tpot_ms": statistics.median(tpots),
        "mean_tpot_ms": statistics.fmean(tpots),
        "output_throughput": sum(r["tokens"] for r in recs) / span,
    }


KEYS = ("median_ttft_ms", "mean_ttft_ms", "median_tpot_ms", "mean_tpot_ms")


def split(
    log: list[dict[str, Any]], reqs: list[dict[str, Any]], tool: str, conc: int
) -> dict[str, float]:
    """Each client TTFT = send (client clock start -> request read by the server) + server
    TTFT + receive (first chunk written -> the client's first-chunk timestamp); medians, ms,
    also of the send for the first ``conc`` requests (by clock start: new connections) and the
    rest (kept-alive connections)."""
    if tool == "vllm":
        by = {int(r["request_id"].rsplit("-", 1)[1]): r for r in log if r["request_id"]}
        pairs = [(q, by[q["index"]]) for q in reqs if q["index"] in by]
    else:
        byk = {r["key"]: r for r in log}
        pairs = [(q, byk[q["key"]]) for q in reqs if q["key"] in byk]
    pairs.sort(key=lambda p: float(p[0]["start"]))
    send = [(s["arrival"] - q["start"]) * 1000 for q, s in pairs]
    recv = [(q["start"] + q["ttft"] - s["first"]) * 1000 for q, s in pairs]
    return {
        "matched": len(pairs),
        "send_ms": statistics.median(send),
        "recv_ms": statistics.median(recv),
        "max_send_ms": max(send),
        "max_recv_ms": max(recv),
        "send_first_wave_ms": statistics.median(send[:conc]),
        "send_later_ms": statistics.median(send[conc:]) if send[conc:] else float("nan"),
    }


def one_run(url: str, tool: str, conc: int, seed: int, out: Path) -> dict[str, Any]:
    _http(url + "/_standin/reset", "POST")
    client = TOOLS[tool](url, conc, LEVELS[conc], seed, out)
    log = _http(url + "/_standin/log")
    truth = server_truth(log, tool)
    row: dict[str, Any] = {"tool": tool, "conc": conc, "seed": seed, "server": truth}
    keys = (*KEYS, "median_itl_ms", "mean_itl_ms", "output_throughput", "completed", "cpu_s")
    row["client"] = {k: client[k] for k in keys}
    row["split"] = split(log, client["requests"], tool, conc)
    return row


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(url: str, rounds: int, out: Path) -> list[dict[str, Any]]:
    rows = []
    names = list(TOOLS)
    for rnd in range(rounds):
        order = names if rnd % 2 == 0 else names[::-1]
        for li, conc in enumerate(LEVELS):
            for tool in order:
                # its own seed per (round, tool, level)
                seed = 1000 * rnd + 100 * names.index(tool) + li
                row = one_run(url, tool, conc, seed, out)
                row["round"], row["load"] = rnd, _load()
                rows.append(row)
                c, s = row["client"], row["server"]
                print(
                    f"round {rnd} {tool:8} c={conc:<3} ttft {c['median_ttft_ms']:7.2f} "
                    f"(server {s['median_ttft_ms']:7.2f})  tpot {c['median_tpot_ms']:6.3f} "
                    f"(server {s['median_tpot_ms']:6.3f})  cpu {c['cpu_s']:.2f} s  "
                    f"load {row['load']}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def _mean(rows: list[dict[str, Any]], side: str, key: str) -> float:
    return statistics.fmean(r[side][key] for r in rows)


def table(rows: list[dict[str, Any]]) -> str:
    """Per (tool, level), means over the rounds: the tool's numbers, the server's, the diff."""
    out = [
        "| tool | c | client median TTFT | server median TTFT | diff | client mean TTFT | "
        "server mean TTFT | diff | client median TPOT | server median TPOT | diff | "
        "client mean TPOT | server mean TPOT | diff | client median / mean ITL | "
        "client out tok/s | server out tok/s |",
        "|---" * 17 + "|",
    ]
    for conc in LEVELS:
        for tool in TOOLS:
            rs = [r for r in rows if r["tool"] == tool and r["conc"] == conc]
            cells = [tool, str(conc)]
            for k in KEYS:
                c, s = _mean(rs, "client", k), _mean(rs, "server", k)
                cells += [f"{c:.2f}", f"{s:.2f}", f"{c - s:+.2f}"]
            itl = [_mean(rs, "client", k) for k in ("median_itl_ms", "mean_itl_ms")]
            cells += [
                f"{itl[0]:.2f} / {itl[1]:.2f}",
                f"{_mean(rs, 'client', 'output_throughput'):.0f}",
            ]
            cells.append(f"{_mean(rs, 'server', 'output_throughput'):.0f}")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def per_round(rows: list[dict[str, Any]]) -> str:
    out = [
        "| round | tool | c | seed | median TTFT client-server | median TPOT client-server "
        "| send (median / max) | send: first wave / later | receive (median / max) "
        "| client CPU s | load |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        dt = r["client"]["median_ttft_ms"] - r["server"]["median_ttft_ms"]
        dp = r["client"]["median_tpot_ms"] - r["server"]["median_tpot_ms"]
        sp = r["split"]
        out.append(
            f"| {r['round']} | {r['tool']} | {r['conc']} | {r['seed']} | {dt:+.2f} | {dp:+.3f} "
            f"| {sp['send_ms']:.2f} / {sp['max_send_ms']:.2f} "
            f"| {sp['send_first_wave_ms']:.2f} / {sp['send_later_ms']:.2f} "
            f"| {sp['recv_ms']:.2f} / {sp['max_recv_ms']:.2f} | {r['client']['cpu_s']:.2f} "
            f"| {r['load']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", choices=["bench", "serve"], default="bench")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--step-ms", type=float, default=6.0)
    ap.add_argument("--prefill-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="Where to keep raw results (default: a temp dir).")
    a = ap.parse_args(argv)
    if a.mode == "serve":
        asyncio.run(_serve(a.port, a.step_ms, a.prefill_ms))
        return
    out = a.out or Path(tempfile.mkdtemp(prefix="client-overhead-"))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "serve", "--step-ms", str(a.step_ms)]
    cmd += ["--prefill-ms", str(a.prefill_ms)]
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        url = f"http://127.0.0.1:{srv.stdout.readline().strip()}"
        t0 = time.monotonic()
        print(f"stand-in at {url}, step {a.step_ms} ms, prefill {a.prefill_ms} ms, load {_load()}")
        rows = measure(url, a.rounds, out)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
        print(f"\n{table(rows)}\n\n{per_round(rows)}\n")
        print(f"wall {time.monotonic() - t0:.0f} s, load {_load()}, raw results in {out}")
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
