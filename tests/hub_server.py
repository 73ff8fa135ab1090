"""A stand-in for the Hugging Face Hub's file API on 127.0.0.1, for the hub tests.

Serves ``HEAD``/``GET /<org>/<name>/resolve/<revision>/<file>`` with the headers
``huggingface_hub.file_download.get_hf_file_metadata`` reads (``X-Repo-Commit``, ``ETag``,
``Content-Length``) and answers errors the way ``huggingface_hub.utils.hf_raise_for_status`` tells
them apart (``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``). A gated repo wants ``Authorization: Bearer <its token>``: none is a 401, another
token a 403, as the hub answers. Every request is recorded (method, path, whether it carried a
token) so a test can assert what reached the "network".
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # gated: the token that grants access


@dataclass
class Seen:
    method: str
    path: str
    authorized: bool


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""


def _error(status: int, code: str, commit: bool = False) -> Answer:
    headers = {"X-Error-Code": code, "Content-Length": "0"}
    if commit:
        headers["X-Repo-Commit"] = COMMIT
    return Answer(status, headers)


def _split(path: str) -> tuple[str, str, str] | None:
    """(repo id, revision, file) of ``/<org>/<name>/resolve/<rev>/<file>``; None otherwise."""
    parts = unquote(path.split("?", 1)[0]).strip("/").split("/")
    if len(parts) < 5 or parts[2] != "resolve":
        return None
    return f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])


def _access(repo: Repo, authorization: str | None) -> Answer | None:
    if repo.token is None or authorization == f"Bearer {repo.token}":
        return None
    return _error(403 if authorization else 401, "GatedRepo")


def answer(state: HubState, path: str, authorization: str | None) -> Answer:
    """What the hub answers for ``path`` (the body is sent for GET only)."""
    where = _split(path)
    if where is None:
        return _error(404, "RepoNotFound")
    repo_id, revision, filename = where
    repo = state.repos.get(repo_id)
    if repo is None:
        return _error(404, "RepoNotFound")
    denied = _access(repo, authorization)
    if denied is not None:
        return denied
    if revision not in ("main", COMMIT):
        return _error(404, "RevisionNotFound")
    body = repo.files.get(filename)
    if body is None:
        return _error(404, "EntryNotFound", commit=True)
    headers = {
        "X-Repo-Commit": COMMIT,
        "ETag": '"' + hashlib.sha1(body).hexdigest() + '"',
        "Content-Length": str(len(body)),
        "Content-Type": "application/json",
    }
    return Answer(200, headers, body)


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, send_body: bool) -> None:
            auth = self.headers.get("Authorization")
            state.seen.append(Seen(self.command, self.path, auth is not None))
            reply = answer(state, self.path, auth)
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if send_body and reply.body:
                self.wfile.write(reply.body)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
            self._serve(send_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(send_body=True)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


class HubServer:
    """``with HubServer(state) as url:`` serves ``state`` at ``url`` (use it as HF_ENDPOINT)."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
