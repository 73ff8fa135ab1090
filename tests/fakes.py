"""Test doubles named as such: a fake executor that records calls and answers from a script."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hpcserve.cluster.executor import Chunk, CommandResult, home_from_env, tail_from
from hpcserve.errors import RemoteError

Responder = Callable[[list[str]], CommandResult | None]


def result(argv: list[str], stdout: str = "", stderr: str = "", rc: int = 0) -> CommandResult:
    return CommandResult(tuple(argv), rc, stdout, stderr)


class FakeExecutor:
    """An Executor that never runs anything: it records argv and answers from ``responders``.

    Each responder gets the argv and returns a CommandResult or None (not mine). Files are read
    from a dict (path -> text) so logs can grow between calls. It stands for a remote machine:
    reading from an offset and the home directory go through commands, as over SSH.
    """

    remote = True

    def __init__(self, *responders: Responder, files: dict[str, str] | None = None) -> None:
        self.responders = list(responders)
        self.calls: list[list[str]] = []
        self.files: dict[str, str] = dict(files or {})
        self.closed = False

    def run(
        self, argv: list[str], *, input: str | None = None, timeout: float | None = 60
    ) -> CommandResult:
        self.calls.append(list(argv))
        if argv[:2] == ["tail", "-c"] and argv[2].startswith("+"):  # what LogFollower runs
            path = argv[3]
            if path not in self.files:
                return result(argv, "", f"tail: cannot open '{path}' for reading", 1)
            raw = self.files[path].encode()[int(argv[2][1:]) - 1 :]
            return result(argv, raw.decode())
        for r in self.responders:
            res = r(list(argv))
            if res is not None:
                return res
        raise RemoteError(f"`{argv[0]}` is not installed or not on PATH")

    def read_text(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def read_from(self, path: str, offset: int) -> Chunk:
        return tail_from(self, path, offset)

    def home(self) -> str:
        return home_from_env(self)

    def describe(self) -> str:
        return "remote"

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        self.files[path] = text

    def exists(self, path: str) -> bool:
        return path in self.files

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def commands(self, name: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == name]


def data(*parts: str) -> str:
    return (Path(__file__).parent / "data").joinpath(*parts).read_text()


class FakeClock:
    """A monotonic clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s
