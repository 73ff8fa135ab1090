"""Running ``hpcserve`` from tests: in-process (``run_main``) or as a subprocess of the
checkout (``run_hpcserve``, what the tests on the local lab use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hpcserve.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_main(capsys: Any, *args: str, obj: object = None) -> tuple[int, str, str]:
    """``hpcserve ARGS`` in-process: (exit code, stdout, stderr) read from ``capsys``; ``obj``
    is click's context object (a ``Jobs`` with fakes for the job commands)."""
    code = 0
    try:
        main(list(args), obj=obj)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run_hpcserve(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m hpcserve ARGS`` from the checkout, output captured as text; the exit code is
    the caller's to check (``subprocess.TimeoutExpired`` passes through)."""
    return subprocess.run(
        [sys.executable, "-m", "hpcserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
