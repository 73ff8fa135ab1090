"""The ``hpcserve`` command line: a lazy click group.

Each command lives in a small module of this package and is imported only when it runs, so
``hpcserve render`` never pays for paramiko or requests. Errors derived from
:class:`hpcserve.errors.HpcserveError` become one line on stderr and their exit code.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings
from typing import NoReturn

import click

from hpcserve import __version__
from hpcserve.errors import ConfigError, HpcserveError

_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})

# command name -> (module under hpcserve.cli, attribute, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sites": ("sites", "sites", "List, show and validate cluster site configs."),
    "plan": ("plan", "plan", "Size a model for a site: memory, nodes, layout, KV cache."),
    "render": ("launch", "render", "Print the sbatch launcher for a model on a site."),
    "submit": ("launch", "submit", "Render the launcher and submit it with sbatch."),
    "download": ("launch", "download", "Fetch a model into the site's shared HF cache."),
    "doctor": ("doctor", "doctor", "Prove a site works: here, on the login node, in a probe job."),
    "status": ("jobs", "status", "Scheduler state and server phase of your jobs."),
    "logs": ("jobs", "logs", "Show a job's head/worker logs."),
    "wait": ("jobs", "wait", "Wait until a job's API answers (or fails)."),
    "cancel": ("jobs", "cancel", "Cancel a job and confirm its processes are gone."),
    "list": ("jobs", "list_jobs", "List the jobs in the registry."),
    "nccl": ("nccl", "nccl", "Tell how NCCL traffic flows (IB/GDR, sockets) from logs."),
    "tunnel": ("net", "tunnel", "Forward a local port to a job's API through the login node."),
    "env": ("net", "env", "OPENAI_BASE_URL and OPENAI_API_KEY for a job's local tunnel."),
    "query": ("net", "query", "Send one chat completion to a job and stream the answer."),
    "chat": ("net", "chat", "Interactive multi-turn chat with a job."),
    "bench": ("net", "bench", "Benchmark a job's server (TTFT, TPOT, ITL, throughput)."),
    "sweep": ("sweep", "sweep", "Run every layout in one allocation, benchmark, recommend one."),
    "lab": ("lab", "lab", "Run a local SLURM cluster with real vLLM (CPU) for trying hpcserve."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr, _ = spec
        mod = importlib.import_module(f"hpcserve.cli.{module}")
        cmd: click.Command = getattr(mod, attr)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help comes from the table so --help imports nothing.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpcserve")
def cli() -> None:
    """Serve a vLLM model across SLURM nodes and reach it from your laptop."""


def _fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _fail_known(e: BaseException) -> NoReturn:
    """One line and the exit code for an error hpcserve expects (HpcserveError's own code)."""
    if isinstance(e, ConfigError):
        _fail("\n".join(f"error: {p}" for p in e.problems), e.exit_code)
    if isinstance(e, HpcserveError):
        _fail(f"error: {e}", e.exit_code)
    if isinstance(e, BrokenPipeError):
        sys.exit(1)
    _fail("aborted" if isinstance(e, click.Abort) else "interrupted", 130)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """hpcserve's own warnings (e.g. a site still lacking a value) as ``warning: ...``."""
    if category.__module__.startswith("hpcserve"):
        click.echo(f"warning: {message}", err=True)
    else:
        click.echo(warnings.formatwarning(message, category, filename, lineno, line), err=True)


def main(argv: list[str] | None = None, *, obj: object = None) -> None:
    """Entry point: run the CLI, turning known errors into one line and an exit code.

    ``obj`` becomes click's context object (e.g. a :class:`hpcserve.jobs.handle.Jobs` with
    fakes, which the job commands then use).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = _show_warning
            rv = cli.main(args=argv, prog_name="hpcserve", standalone_mode=False, obj=obj)
        sys.stdout.flush()  # a write error shows here, as one line, not at the exit's flush
        # Under standalone_mode=False click returns ctx.exit(n)'s code instead of exiting.
        if isinstance(rv, int) and rv != 0:
            sys.exit(rv)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        _fail(_usage_line(e), e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.Abort, HpcserveError, KeyboardInterrupt, BrokenPipeError) as e:
        _fail_known(e)
    except OSError as e:
        if _stdout_broken(e):
            _fail(f"error: cannot write the output: {e.strerror or e}", 1)
        _internal(e)
    except Exception as e:
        _internal(e)


def _internal(e: Exception) -> NoReturn:
    """A bug: one line, still no traceback unless asked for."""
    if os.environ.get("HPCSERVE_DEBUG"):
        raise e
    _fail(f"internal error: {type(e).__name__}: {e} (HPCSERVE_DEBUG=1 shows the traceback)", 70)


def _usage_line(e: click.UsageError) -> str:
    """click's usage error as one line (click prints the usage, a hint and the error on three)."""
    path = e.ctx.command_path if e.ctx is not None else "hpcserve"
    return f"error: {e.format_message()} (see '{path} --help')"


def _stdout_broken(e: OSError) -> bool:
    """True for a failed write with no file named (stdout on a full disk or ``/dev/full``);
    stdout is then pointed at /dev/null so that the exit's own flush does not fail again."""
    if e.filename is not None or e.errno not in _WRITE_ERRNOS:
        return False
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return True
