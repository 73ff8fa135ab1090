"""``hpcserve query`` and ``chat`` without the terminal: the request of one prompt, and a
multi-turn :class:`Conversation` that keeps its history (``/exit``, ``/quit``, ``/reset``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcserve.net.api import ApiError, Client, StreamResult, user_message

Message = dict[str, Any]


def sampling(
    max_tokens: int, temperature: float | None, model: str | None = None
) -> dict[str, Any]:
    """The chat-completion parameters of ``--max-tokens``, ``--temperature`` and ``--model``
    (temperature left out when not given: the server's default applies)."""
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if model is not None:
        params["model"] = model
    if temperature is not None:
        params["temperature"] = temperature
    return params


def query_messages(
    prompt: str, system: str | None = None, image: str | None = None
) -> list[Message]:
    """The messages of ``hpcserve query``: an optional system message, then the user's prompt
    (with ``image`` attached as an OpenAI ``image_url`` part)."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.append(user_message(prompt, image))
    return messages


@dataclass
class Turn:
    """What one line typed into ``hpcserve chat`` did."""

    kind: str  # exit | reset | skip | answered | interrupted | failed
    error: str = ""


@dataclass
class Conversation:
    """A chat with ``client``: ``system`` starts every history; ``params`` go with each request
    (``model`` resolved to the server's first model when not given)."""

    client: Client
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    history: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params["model"] = self.client.default_model(self.params.get("model"))
        self.history = self._start()

    @property
    def model(self) -> str:
        return str(self.params["model"])

    def _start(self) -> list[Message]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def step(self, line: str, on_piece: Callable[[str], None]) -> Turn:
        """Act on one typed line: a command, or a user message whose answer is streamed to
        ``on_piece``. A failed request leaves the history as it was; an interrupted answer is
        kept as far as it came."""
        cmd = line.strip()
        if cmd in ("/exit", "/quit"):
            return Turn("exit")
        if cmd == "/reset":
            self.history = self._start()
            return Turn("reset")
        if not cmd:
            return Turn("skip")
        return self._ask(line, on_piece)

    def _ask(self, line: str, on_piece: Callable[[str], None]) -> Turn:
        self.history.append({"role": "user", "content": line})
        res = StreamResult()
        turn = Turn("answered")
        try:
            for piece in self.client.chat_stream(self.history, res, **self.params):
                on_piece(piece)
        except ApiError as e:
            self.history.pop()
            return Turn("failed", str(e))
        except KeyboardInterrupt:
            turn = Turn("interrupted")
        self.history.append({"role": "assistant", "content": res.text})
        return turn
