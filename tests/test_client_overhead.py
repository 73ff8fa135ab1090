"""The stand-in server of bench/client_overhead.py: it streams chat completions as vLLM does and
logs its own arrival and first-token times (no timing asserted)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from client_overhead import StandIn, server_truth  # noqa: E402


async def _request(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"x-request-id: req-1\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return raw


def _dechunk(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    out = b""
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, rest = out + rest[:n], rest[n + 2 :]


def _events(raw: bytes) -> list[str]:
    return [e.removeprefix("data: ") for e in _dechunk(raw).decode().split("\n\n") if e]


async def _scenario() -> tuple[list[str], list[dict[str, Any]], bytes]:
    srv = StandIn(step_ms=1, prefill_ms=2)
    port = await srv.start()
    try:
        body = {
            "model": "standin",
            "messages": [{"role": "user", "content": "one two three"}],
            "max_completion_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        events = _events(await _request(port, "POST", "/v1/chat/completions", body))
        log = json.loads(_request_body(await _request(port, "GET", "/_standin/log")))
        tok = _request_body(await _request(port, "POST", "/tokenize", {"prompt": "a b c d"}))
    finally:
        await srv.stop()
    return events, log, tok


def _request_body(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def test_standin_streams_like_vllm_and_logs_its_times() -> None:
    events, log, tok = asyncio.run(_scenario())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    with_choices = [c for c in chunks if c["choices"]]
    # vLLM's role chunk, then one chunk per token; the last token carries finish_reason.
    assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = with_choices[1:]
    assert len(tokens) == 5
    assert all(c["choices"][0]["delta"]["content"] for c in tokens)
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "total_tokens": 8, "completion_tokens": 5}

    (rec,) = log
    assert rec["request_id"] == "req-1"
    assert rec["tokens"] == 5
    assert rec["arrival"] <= rec["first"] <= rec["last"]
    assert rec["ttft"] == rec["first"] - rec["arrival"]
    assert server_truth(log, "vllm")["n"] == 1
    assert json.loads(tok)["count"] == 4
