"""A small OpenAI-compatible client for a vLLM server (the only module that imports requests).

Every failure becomes a :class:`ApiError` whose message is a sentence a user can act on:
server not ready yet, context too long (with the limit), tunnel down, wrong API key.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from hpcserve.errors import HpcserveError, UsageError

_CTX_RE = re.compile(r"maximum context length is (\d+) tokens")
_REQ_RE = re.compile(r"(?:requested|contains(?: at least)?) (\d+) (?:input )?tokens")


class ApiError(HpcserveError):
    """The server (or the way to it) failed; the message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def context_limit(message: str) -> int | None:
    """The context length from vLLM's 400 message ("maximum context length is N tokens")."""
    m = _CTX_RE.search(message)
    return int(m.group(1)) if m else None


def explain(status: int, body: str, *, base_url: str, phase: str | None = None) -> str:
    """One sentence for an HTTP error from vLLM."""
    try:
        detail = json.loads(body)
        msg = (
            detail.get("error", {}).get("message")
            if isinstance(detail.get("error"), dict)
            else detail.get("error") or detail.get("message") or detail.get("detail")
        )
        msg = str(msg or body)
    except (ValueError, AttributeError):
        msg = body.strip()
    msg = " ".join(msg.split())[:400]
    if status == 401:
        return (
            f"the server at {base_url} refused the API key (401 Unauthorized): the job's key "
            "file is missing or belongs to another job; use the key from `hpcserve tunnel JOB`"
        )
    if status == 400 and (limit := context_limit(msg)) is not None:
        m = _REQ_RE.search(msg)
        asked = f" (this request needs {m.group(1)})" if m else ""
        return (
            f"the conversation is too long for the model: its context is {limit} tokens{asked}; "
            "shorten the prompt or lower --max-tokens"
        )
    if status in (502, 503, 504) or (status == 404 and "/health" in msg):
        return not_ready(base_url, phase)
    if status == 404 and "model" in msg.lower():
        return f"the server does not serve that model: {msg}"
    return f"the server answered {status}: {msg or 'no details'}"


def not_ready(base_url: str, phase: str | None) -> str:
    where = f" (job phase: {phase})" if phase else ""
    return (
        f"the server at {base_url} is not ready yet{where}; vLLM answers only once the model is "
        "loaded: try `hpcserve wait JOB`"
    )


def image_url(path_or_url: str) -> str:
    """A URL as is; a local file as a ``data:`` URL with its MIME type."""
    if re.match(r"^(https?|data):", path_or_url):
        return path_or_url
    path = os.path.expanduser(path_or_url)
    if not os.path.isfile(path):
        raise UsageError(f"image {path_or_url!r} is neither a URL nor a readable file")
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if not mime.startswith("image/"):
        raise UsageError(f"{path_or_url!r} does not look like an image ({mime})")
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f"data:{mime};base64,{data}"


def user_message(text: str, image: str | None = None) -> dict[str, Any]:
    if image is None:
        return {"role": "user", "content": text}
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_url(image)}},
        ],
    }


def iter_sse(lines: Iterator[bytes]) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent-event stream, up to ``[DONE]``."""
    for raw in lines:
        line = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else raw.strip()
        if not line or line.startswith(":") or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield data


@dataclass
class StreamResult:
    """What a streamed chat completion returned, besides the text chunks."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class Client:
    """OpenAI-compatible API at ``base_url`` (``http://host:port``, without ``/v1``)."""

    base_url: str
    api_key: str | None = None
    timeout: float = 600.0
    phase: str | None = None  # the job's phase, for "not ready" messages
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/").removesuffix("/v1")
        if self.api_key:
            self.session.headers["Authorization"] = f"Bearer {self.api_key}"

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = self.base_url + path
        try:
            r = self.session.request(method, url, timeout=kw.pop("timeout", self.timeout), **kw)
        except requests.ConnectionError as e:
            raise ApiError(
                f"cannot connect to {self.base_url} (connection refused or reset): the tunnel "
                "is down or the server is not listening; start it with `hpcserve tunnel JOB`"
                " or check `hpcserve status JOB`"
            ) from e
        except requests.Timeout as e:
            raise ApiError(f"{url} did not answer within {self.timeout:.0f} s") from e
        if r.status_code >= 400:
            raise ApiError(
                explain(r.status_code, r.text, base_url=self.base_url, phase=self.phase),
                r.status_code,
            )
        return r

    def health(self) -> bool:
        """True when ``/health`` answers 200 (raises ApiError with a sentence otherwise)."""
        self._request("GET", "/health", timeout=10)
        return True

    def models(self) -> list[str]:
        data = self._request("GET", "/v1/models", timeout=30).json()
        return [m["id"] for m in data.get("data", [])]

    def default_model(self, model: str | None = None) -> str:
        if model:
            return model
        models = self.models()
        if not models:
            raise ApiError(f"the server at {self.base_url} lists no model")
        return models[0]

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """A non-streamed chat completion: the raw JSON response."""
        body = {"messages": messages, "stream": False, **params}
        body["model"] = self.default_model(body.get("model"))
        result: dict[str, Any] = self._request("POST", "/v1/chat/completions", json=body).json()
        return result

    def chat_stream(
        self, messages: list[dict[str, Any]], result: StreamResult | None = None, **params: Any
    ) -> Iterator[str]:
        """Stream a chat completion: yields text as it arrives; fills ``result`` at the end."""
        res = result if result is not None else StreamResult()
        body = {
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **params,
        }
        body["model"] = self.default_model(body.get("model"))
        r = self._request("POST", "/v1/chat/completions", json=body, stream=True)
        try:
            for data in iter_sse(r.iter_lines(chunk_size=None)):
                chunk = json.loads(data)
                if "error" in chunk:
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise ApiError(f"the server stopped the answer: {msg}")
                if chunk.get("usage"):
                    res.usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
                    if piece:
                        res.text += piece
                        yield piece
        except requests.RequestException as e:
            raise ApiError(f"the connection to {self.base_url} broke mid-answer: {e}") from e
        finally:
            r.close()
