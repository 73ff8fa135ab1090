"""The built wheel carries the templates and site configs, and works away from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = out.glob("hpcserve-*.whl")
    return whl


def test_wheel_holds_templates_and_site_configs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hpcserve/_data/templates/launcher.sbatch.j2" in names
    shipped = {p.name for p in (REPO / "site_configs").glob("*.yaml")}
    assert {f"hpcserve/_data/site_configs/{n}" for n in shipped} <= names
    assert "hpcserve/lab/scripts/up.sh" in names


def test_installed_package_renders_from_its_own_data(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    env.pop("HPCSERVE_SITES", None)
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 120}
    where = subprocess.run(
        [sys.executable, "-c", "import hpcserve.resources as r; print(r.templates_dir())"], **run
    )
    assert where.stdout.strip() == str(target / "hpcserve" / "_data" / "templates")
    sites = subprocess.run([sys.executable, "-m", "hpcserve", "sites", "list"], **run)
    assert sites.returncode == 0 and "meluxina" in sites.stdout, sites.stderr
    script = subprocess.run(
        [sys.executable, "-m", "hpcserve", "render", "--site", "meluxina", "--nodes", "2",
         "--model", "Qwen/Qwen3-8B", "--image", "/p/vllm.sif"],
        **run,
    )  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert script.stdout.startswith("#!/bin/bash") and "--headless" in script.stdout
