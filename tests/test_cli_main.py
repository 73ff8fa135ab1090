"""The ``hpcserve`` entry point in-process: the lazy command table, --help and --version, and
the one error contract (one line on stderr and an exit code, a traceback only when asked)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from cliutil import REPO, run_main

import hpcserve
from hpcserve.cli import COMMANDS, cli, main
from hpcserve.errors import ConfigError, HpcserveError, RemoteError, UsageError
from hpcserve.jobs.handle import Jobs
from hpcserve.jobs.record import JobRecord


class Raising(Jobs):
    """The registry's side of the job commands, failing with ``exc`` on the first look
    (what ``hpcserve list`` asks first)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def records(self) -> list[JobRecord]:
        raise self.exc


def list_failing(capsys: pytest.CaptureFixture[str], exc: BaseException):
    return run_main(capsys, "list", obj=Raising(exc))


# -- the table, --help, --version --------------------------------------------------------------
def _listed(help_text: str) -> dict[str, str]:
    """Command name -> its help, from the Commands section of --help (wrapped lines joined)."""
    section = help_text.split("\nCommands:\n", 1)[1]
    rows: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name, _, text = line.strip().partition(" ")
            rows[name] = text.strip()
        elif line.strip():
            rows[name] += " " + line.strip()
    return rows


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_command_of_the_table_with_its_line(capsys, flag):
    code, out, err = run_main(capsys, flag)
    assert (code, err) == (0, "")
    assert out.startswith("Usage: hpcserve [OPTIONS] COMMAND [ARGS]...")
    assert _listed(out) == {name: spec[2] for name, spec in COMMANDS.items()}


def test_help_imports_no_command_module():
    code = (
        "import sys\nfrom hpcserve.cli import main\n"
        "try:\n main(['--help'])\nexcept SystemExit as e:\n assert not e.code\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('hpcserve.cli.'))\n"
        "assert loaded == [], loaded"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert p.returncode == 0, p.stderr


def test_every_table_entry_names_a_click_command():
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert isinstance(cmd, click.Command) and cmd.name == name


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert (code, out) == (0, f"hpcserve, version {hpcserve.__version__}\n")


def test_unknown_command_is_a_usage_error(capsys):
    code, out, err = run_main(capsys, "bogus")
    assert (code, out) == (2, "")
    assert "No such command" in err and "bogus" in err
    assert "Traceback" not in err


def test_unknown_option_is_a_usage_error(capsys):
    code, _, err = run_main(capsys, "list", "--bogus")
    assert code == 2
    assert "No such option" in err and "--bogus" in err


# -- the error contract ------------------------------------------------------------------------
def test_a_config_error_is_one_line_per_problem(capsys):
    problems = ["site.yaml:3: node.gpus: must be >= 1", "site.yaml:9: storage: missing"]
    code, out, err = list_failing(capsys, ConfigError(problems))
    assert (code, out) == (2, "")
    assert (
        err == "error: site.yaml:3: node.gpus: must be >= 1\nerror: site.yaml:9: storage: missing\n"
    )


@pytest.mark.parametrize(
    ("exc", "code"),
    [(UsageError("bad input"), 2), (RemoteError("bad input"), 1), (HpcserveError("bad input"), 1)],
)
def test_hpcserve_errors_are_one_line_and_their_code(capsys, exc, code):
    assert list_failing(capsys, exc) == (code, "", "error: bad input\n")


@pytest.mark.parametrize("exc", [BrokenPipeError(32, "Broken pipe"), BrokenPipeError()])
def test_a_broken_pipe_exits_1_silently(capsys, exc):
    assert list_failing(capsys, exc) == (1, "", "")


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), click.Abort()])
def test_an_interrupt_in_a_command_is_aborted_130(capsys, exc):
    code, out, err = list_failing(capsys, exc)
    assert (code, out) == (130, "")
    assert err.strip() == "aborted"


def test_an_interrupt_outside_click_s_handling_is_interrupted_130(capsys, monkeypatch):
    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    assert run_main(capsys, "list") == (130, "", "interrupted\n")


def test_an_exit_code_a_command_asks_for_is_the_exit_code(capsys):
    assert list_failing(capsys, click.exceptions.Exit(4)) == (4, "", "")


def test_a_bug_is_one_line_exit_70(capsys, monkeypatch):
    monkeypatch.delenv("HPCSERVE_DEBUG", raising=False)
    code, out, err = list_failing(capsys, RuntimeError("boom"))
    assert (code, out) == (70, "")
    assert err == "internal error: RuntimeError: boom (HPCSERVE_DEBUG=1 shows the traceback)\n"


def test_hpcserve_debug_re_raises_a_bug(capsys, monkeypatch):
    monkeypatch.setenv("HPCSERVE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["list"], obj=Raising(RuntimeError("boom")))
