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
from typing import Protocol

from hpcserve.errors import RemoteError


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


class Executor(Protocol):
    """Where cluster commands run. Paths are paths on that machine."""

    def run(
        self, argv: list[str], *, input: str | None = None, timeout: float | None = 60
    ) -> CommandResult: ...

    def read_text(self, path: str) -> str: ...

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str, mode: int = 0o700) -> None: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs commands with subprocess on this machine (a login node, or the local lab)."""

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
            raise RemoteError(f"`{shlex.join(argv)}` did not finish in {timeout} s") from e
        return CommandResult(tuple(argv), p.returncode, p.stdout, p.stderr)

    def read_text(self, path: str) -> str:
        return Path(os.path.expanduser(path)).read_text(errors="replace")

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        p = Path(os.path.expanduser(path))
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(p, mode)

    def exists(self, path: str) -> bool:
        return Path(os.path.expanduser(path)).exists()

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        Path(os.path.expanduser(path)).mkdir(parents=True, exist_ok=True, mode=mode)

    def close(self) -> None:
        return None
