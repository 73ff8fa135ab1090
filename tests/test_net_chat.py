"""Query messages and chat turns (hpcserve.net.chat) against the stand-in server."""

from __future__ import annotations

from pathlib import Path

import pytest
from net_fixtures import StandInHTTP, stand_in_http  # noqa: F401

from hpcserve.net.api import Client
from hpcserve.net.chat import Conversation, query_messages, sampling


def test_sampling_leaves_out_what_was_not_given() -> None:
    assert sampling(512, None) == {"max_tokens": 512}
    assert sampling(8, 0.0, "m") == {"max_tokens": 8, "model": "m", "temperature": 0.0}


def test_query_messages(tmp_path: Path) -> None:
    assert query_messages("hi") == [{"role": "user", "content": "hi"}]
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n")
    system, user = query_messages("what?", "be brief", str(png))
    assert system == {"role": "system", "content": "be brief"}
    text, image = user["content"]
    assert text == {"type": "text", "text": "what?"}
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


def test_turns_keep_the_history(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    conv = Conversation(Client(stand_in_http.url), "sys", sampling(16, None))
    assert conv.model == "stand-in"
    assert conv.history == [{"role": "system", "content": "sys"}]
    pieces: list[str] = []
    assert conv.step("  ", pieces.append).kind == "skip"
    turn = conv.step("hello there", pieces.append)
    assert (turn.kind, "".join(pieces)) == ("answered", "Hello from the stand-in")
    assert conv.history[1:] == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Hello from the stand-in"},
    ]
    assert conv.step(" /reset ", pieces.append).kind == "reset"
    assert conv.history == [{"role": "system", "content": "sys"}]
    assert conv.step("/exit", pieces.append).kind == "exit"
    assert conv.step("/quit", pieces.append).kind == "exit"


def test_failed_turn_leaves_the_history(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    conv = Conversation(Client(stand_in_http.url), None, sampling(16, None, "stand-in"))
    assert conv.history == []
    turn = conv.step(" ".join(["word"] * 100), lambda piece: None)  # over the stand-in's 64
    assert turn.kind == "failed" and "too long for the model: its context is 64" in turn.error
    assert conv.history == []


def test_interrupted_turn_keeps_what_arrived(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    conv = Conversation(Client(stand_in_http.url))

    def ctrl_c_after_first(piece: str) -> None:
        raise KeyboardInterrupt

    assert conv.step("hi", ctrl_c_after_first).kind == "interrupted"
    assert conv.history == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_unknown_model_list_is_an_error() -> None:
    from hpcserve.net.api import ApiError

    class Empty(Client):
        def models(self) -> list[str]:
            return []

    with pytest.raises(ApiError, match="lists no model"):
        Conversation(Empty("http://127.0.0.1:9"))
