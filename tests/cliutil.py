"""Running ``hpcserve`` from tests: in-process (``run_main``) or as a subprocess of the
checkout (``run_hpcserve``, what the tests on the local lab use)."""

from __future__ import annotations

import json
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


def hpcserve_ok(
    *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """:func:`run_hpcserve` that asserts exit 0 (with the output in the message) unless
    ``check`` is false."""
    p = run_hpcserve(*args, timeout=timeout)
    if check:
        assert p.returncode == 0, f"hpcserve {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}"
    return p


def status_json(job: str) -> dict[str, Any]:
    """``status JOB --json`` (its exit code is 1 for a failed job: the JSON is what counts)."""
    p = hpcserve_ok("status", job, "--json", check=False)
    assert p.stdout.strip(), f"status {job}: {p.returncode} {p.stderr}"
    data: dict[str, Any] = json.loads(p.stdout)
    return data
