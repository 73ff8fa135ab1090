"""Errors that reach the user as one line and an exit code, never a traceback."""

from __future__ import annotations


class HpcserveError(Exception):
    """A failure explained to the user in one sentence; exit code 1."""

    exit_code = 1


class UsageError(HpcserveError):
    """Bad input from the user (arguments, files); exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A site file (or other config) with one or more problems; exit code 2.

    ``problems`` holds one line per problem, each already naming file, line and field.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RemoteError(HpcserveError):
    """A command on the cluster (sbatch, squeue, ssh) failed after retries."""


class Unreachable(RemoteError):
    """The cluster did not answer: the login node cannot be reached, the connection dropped,
    a command hung, or the SLURM controller is down. Worth trying again later (``wait`` and
    ``logs --follow`` keep polling through it); nothing was decided."""
