"""The command line's own errors: one line on stderr, never click's multi-line usage block."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., tuple[int, str, str]]
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "models" / "tiny-llama.json"


@pytest.mark.parametrize(
    "argv",
    [
        ("plan", "--no-such-option"),
        ("plan", "--site", "local"),  # missing --model
        ("render", "--site", "local", "--model", "m", "--nodes", "two"),
        ("no-such-command",),
    ],
)
def test_usage_errors_are_one_line(cli: Cli, argv: tuple[str, ...]) -> None:
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "--help" in err  # where to read more


def test_render_into_a_full_device_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "hpcserve", "render", "--site", "local", "--model", "m"],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
