"""Shared fixtures for the launcher tests: test sites, fake cluster tools, CLI runner."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcserve.jobs.registry import Registry
from hpcserve.sites.loader import load_site_file
from hpcserve.sites.schema import (
    Container,
    Engine,
    LoginHost,
    Network,
    Node,
    Scheduler,
    Site,
    Storage,
)

REPO = Path(__file__).resolve().parent.parent
FAKE_BIN = Path(__file__).resolve().parent / "fake_bin"


def apptainer_site(**kw: Any) -> Site:
    """A MeluXina-like site: 4 GPUs per node, Apptainer with --nvccli, InfiniBand, offline."""
    base = Site(
        name="gpu-apptainer",
        node=Node(gpus=4, gpu_model="A100-40GB", gpu_memory_gb=40),
        login=[LoginHost(host="login.example.org", port=8822)],
        scheduler=Scheduler(
            account="p200", partition="gpu", qos="default", extra_sbatch=["--hint=nomultithread"]
        ),
        modules=["Apptainer"],
        container=Container(
            runtime="apptainer", image="/project/vllm.sif", gpu_flag="--nvccli", binds=["/project"]
        ),
        network=Network(
            head_interface="ib0",
            nccl_socket_ifname="ib0",
            gloo_socket_ifname="ib0",
            nccl_ib_hca="mlx5",
            nccl_env={"NCCL_IB_TIMEOUT": "22"},
        ),
        storage=Storage(hf_cache="/project/hf", offline=True, workdir="/project/jobs"),
    )
    return dataclasses.replace(base, **kw)


def venv_site(**kw: Any) -> Site:
    """A site without containers: vLLM from PATH (the fake one in tests), CPU binding by rank."""
    base = Site(
        name="cpu-venv",
        node=Node(gpus=1, gpu_model="cpu", gpu_memory_gb=8),
        scheduler=Scheduler(gpus_directive="none", exclusive=False, submit="local"),
        container=Container(runtime="none"),
        network=Network(head_interface="lo"),
        storage=Storage(hf_cache="~/hf-cache", offline=False, workdir="~/hpcserve-jobs"),
        engine=Engine(port=18000, env={"VLLM_LOGGING_LEVEL": "DEBUG"}, cpu_bind="node-rank"),
    )
    return dataclasses.replace(base, **kw)


def singularity_site() -> Site:
    return apptainer_site(
        name="gpu-singularity",
        container=Container(runtime="singularity", image="~/vllm.sif", gpu_flag="--nv"),
        scheduler=Scheduler(gpus_directive="gpus-per-node", time="00:30:00"),
        modules=[],
    )


def _real_sites() -> list[Site]:
    """The shipped sites as a user completes them: a container site gets the image it lacks."""
    from hpcserve.sites.loader import apply_overrides

    shipped = [load_site_file(str(p)) for p in sorted((REPO / "site_configs").glob("*.yaml"))]
    return [
        s if s.container.runtime == "none" else apply_overrides(s, image="/images/vllm.sif")
        for s in shipped
    ]


def all_test_sites() -> list[Site]:
    """Every shipped site file, plus the hand-built ones."""
    return [*_real_sites(), apptainer_site(), venv_site(), singularity_site()]


def site_to_yaml(site: Site, path: Path) -> Path:
    data = dataclasses.asdict(site)
    data.pop("path", None)
    data.pop("provenance", None)  # set by the loader, like path
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def known_site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Site], Site]:
    """Make sites findable by name: each is written to a directory on $HPCSERVE_SITES (with
    HOME in tmp_path, so no user site file interferes)."""
    home, where = tmp_path / "home", tmp_path / "sites"
    home.mkdir(exist_ok=True)
    where.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HPCSERVE_SITES", str(where))

    def add(site: Site) -> Site:
        site_to_yaml(site, where / f"{site.name}.yaml")
        return site

    return add


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], Registry]:
    """The job registry, rooted in tmp_path (``$HPCSERVE_STATE_DIR``)."""
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    return lambda: Registry()


@pytest.fixture
def fake_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fake vllm/apptainer/sbatch/srun/module first on PATH; they record into the returned dir."""
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RECORD_DIR", str(record))
    return record


def read_nul(path: Path) -> list[str]:
    return path.read_text().split("\0")[:-1]


def read_env(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in read_nul(path))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run ``hpcserve ARGS`` in-process: (exit code, stdout, stderr) of this call only."""
    from cliutil import run_main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what earlier calls printed
        return run_main(capsys, *args)

    yield run


# -- the local lab (real SLURM + sshd + vLLM), for the tests marked `cluster` --------------------


def _lab_status() -> dict[str, Any]:
    from cliutil import run_hpcserve

    p = run_hpcserve("lab", "status", "--json", timeout=120)
    if p.returncode != 0:
        return {"up": False, "error": (p.stderr or p.stdout).strip()}
    data: dict[str, Any] = json.loads(p.stdout)
    return data


def _cluster_unavailable(reason: str) -> None:
    if os.environ.get("HPCSERVE_REQUIRE_CLUSTER"):
        pytest.fail(f"the local lab is required here (HPCSERVE_REQUIRE_CLUSTER): {reason}")
    pytest.skip(f"local lab not available: {reason}")


@pytest.fixture(scope="module")
def lab_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry of the module's own for the lab tests (``HPCSERVE_STATE_DIR``), so that the
    `hpcserve` they run never sees the user's jobs."""
    d = tmp_path_factory.mktemp("hpcserve-state")
    old = os.environ.get("HPCSERVE_STATE_DIR")
    os.environ["HPCSERVE_STATE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("HPCSERVE_STATE_DIR", None)
    else:
        os.environ["HPCSERVE_STATE_DIR"] = old


@pytest.fixture(scope="session")
def lab_cluster() -> Iterator[dict[str, Any]]:
    """The local lab with vLLM and the tiny model, up for the whole session.

    Brought up here when it is down (and taken down again at the end); needs root.
    """
    import subprocess

    from cliutil import run_hpcserve

    if os.geteuid() != 0:
        _cluster_unavailable("needs root")
    st = _lab_status()
    brought_up = False
    if not st.get("up") or not st.get("model"):
        p = run_hpcserve("lab", "up", "--nodes", "2", timeout=1800)
        if p.returncode != 0:
            _cluster_unavailable(f"`hpcserve lab up` failed: {(p.stderr or p.stdout)[-2000:]}")
        brought_up = True
        st = _lab_status()
    yield st
    if brought_up:
        subprocess.run(
            [sys.executable, "-m", "hpcserve", "lab", "down"], cwd=REPO, timeout=300, check=False
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With HPCSERVE_REQUIRE_CLUSTER set (scripts/test.sh), a skipped cluster test fails."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if (
        rep.skipped
        and item.get_closest_marker("cluster") is not None
        and os.environ.get("HPCSERVE_REQUIRE_CLUSTER")
        and not hasattr(rep, "wasxfail")
    ):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"cluster test skipped although the lab is required: {reason}"
