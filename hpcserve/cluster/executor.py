"""Running commands where the scheduler is: locally, or on the login node over SSH.

Everything that talks to SLURM goes through an :class:`Executor`, so the logic above it is the
same for a laptop that submits over SSH and for a login node that runs ``sbatch`` itself.
The SSH implementation lives in :mod:`hpcserve.cluster.ssh` (imported only when needed).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from hpcserve.errors import RemoteError, Unreachable


@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line naming the command and its error output, for error messages."""
        err = (self.stderr or self.stdout).strip().splitlines()
        tail = err[-1] if err else "no output"
        return f"`{shlex.join(self.argv)}` exited {self.returncode}: {tail}"


@dataclass(frozen=True)
class Chunk:
    """What a file holds from an offset on, as text (undecodable bytes kept as surrogates)."""

    text: str
    start: int  # the offset asked for, or 0 when the file is now shorter (replaced, truncated)


class Executor(Protocol):
    """Where cluster commands run. Paths are paths on that machine."""

    remote: ClassVar[bool]  # True when the machine is another one (reached over SSH)

    def run(
        self, argv: list[str], *, input: str | None = None, timeout: float | None = 60
    ) -> CommandResult: ...

    def read_text(self, path: str) -> str: ...

    def read_from(self, path: str, offset: int) -> Chunk:
        """The file's bytes from ``offset`` on; empty text when the file does not exist."""
        ...

    def home(self) -> str:
        """The home directory on that machine (to expand ``~`` in site paths)."""
        ...

    def describe(self) -> str:
        """Where commands run, for the user: ``local``, or ``user@host:port`` of a login host."""
        ...

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str, mode: int = 0o700) -> None: ...

    def close(self) -> None: ...


def tail_from(executor: Executor, path: str, offset: int) -> Chunk:
    """:meth:`Executor.read_from` for an executor that only runs commands: ``tail -c +N``.

    A file that shrank is not noticed this way (the text is then empty until it grows again).
    """
    res = executor.run(["tail", "-c", f"+{offset + 1}", path], timeout=30)
    return Chunk(res.stdout if res.ok else "", offset)  # not ok: not there yet


def home_from_env(executor: Executor) -> str:
    """:meth:`Executor.home` for an executor that only runs commands: ``printenv HOME``."""
    result = executor.run(["printenv", "HOME"], timeout=60)
    home = result.stdout.strip()
    if not result.ok or not home.startswith("/"):
        raise RemoteError(f"cannot find the home directory on the cluster: {result.describe()}")
    return home


class LocalExecutor:
    """Runs commands with subprocess on this machine (a login node, or the local lab)."""

    remote: ClassVar[bool] = False

    def run(
        self, argv: list[str], *, input: str | None = None, timeout: float | None = 60
    ) -> CommandResult:
        try:
            p = subprocess.run(
                argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError as e:
            raise RemoteError(f"`{argv[0]}` is not installed or not on PATH") from e
        except subprocess.TimeoutExpired as e:
            raise Unreachable(f"`{shlex.join(argv)}` did not finish in {timeout} s") from e
        return CommandResult(tuple(argv), p.returncode, p.stdout, p.stderr)

    def read_text(self, path: str) -> str:
        return Path(os.path.expanduser(path)).read_text(errors="replace")

    def read_from(self, path: str, offset: int) -> Chunk:
        try:
            with open(os.path.expanduser(path), "rb") as f:
                start = offset if os.fstat(f.fileno()).st_size >= offset else 0
                f.seek(start)
                return Chunk(f.read().decode("utf-8", errors="surrogateescape"), start)
        except FileNotFoundError:
            return Chunk("", offset)

    def home(self) -> str:
        return os.path.expanduser("~")

    def describe(self) -> str:
        return "local"

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        """Write ``path`` (its folders made); RemoteError naming the OS's reason (a full or
        read-only filesystem) when it cannot."""
        p = Path(os.path.expanduser(path))
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(p, mode)
        except OSError as e:
            raise RemoteError(f"cannot write {p}: {e.strerror or e}") from e

    def exists(self, path: str) -> bool:
        return Path(os.path.expanduser(path)).exists()

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        p = Path(os.path.expanduser(path))
        try:
            p.mkdir(parents=True, exist_ok=True, mode=mode)
        except OSError as e:
            raise RemoteError(f"cannot create {p}: {e.strerror or e}") from e

    def close(self) -> None:
        return None
