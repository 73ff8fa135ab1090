"""The Python API example of docs/python-api.md (docs/examples/python_api.py) on the local lab:
plan, submit through the login node, wait, endpoint, query, cancel, with real SLURM and vLLM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "python_api.py"


def test_the_docs_example_serves_queries_and_cancels(
    lab_cluster: dict[str, Any], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "HPCSERVE_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    p = subprocess.run(
        [sys.executable, str(EXAMPLE), str(lab_cluster["model"])],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
        env=env,
        check=False,
    )
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert re.search(r"^plan: TP=\d+ x PP=\d+ on 2 node\(s\)", out, re.M), out
    job_id = re.search(r"^submitted job (\d+)$", out, re.M)
    assert job_id, out
    assert re.search(r"^base URL: http://10\.77\.0\.11:\d+/v1$", out, re.M), out  # the head
    key = re.search(r"^API key: set \((\d+) characters\)$", out, re.M)
    assert key and int(key.group(1)) >= 32, out
    assert re.search(r"^answer: '.*'$", out, re.M), out
    cancelled = f"cancelled job api-example ({job_id.group(1)})"
    assert cancelled in out and "scheduler state CANCELLED" in out, out
    assert "no job steps left" in out, out
