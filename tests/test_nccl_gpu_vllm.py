"""The NCCL check on vLLM's own NCCL files from the GPU machine (tests/data/gpu-vllm/README.md).

Both runs put a head and a headless worker (PP=2) on two H200s of one host: the P2P run is a
single-host P2P path; the run with P2P and SHM disabled is GPUs of one host over NET/Socket, which
is degraded but not a cross-node verdict, although NCCL itself says nNodes 2 there.
"""

from __future__ import annotations

from pathlib import Path

from hpcserve.nccl import scan_paths

DATA = Path(__file__).parent / "data" / "gpu-vllm"


def _files(run: str) -> list[str]:
    files = sorted(str(p) for p in (DATA / run / "nccl").glob("*.log"))
    assert len(files) == 2, files  # one per "node"
    return files


def test_vllm_p2p_run_is_a_single_host_p2p_path() -> None:
    r = scan_paths(_files("p2p")).to_dict()
    assert r["nccl_version"] == "2.28.9+cuda13.0"
    assert r["nodes"] == 1 and r["ranks"] == 2
    assert r["cross_node"]["transport"] == "none"
    assert r["intra_node"] == ["p2p"]
    assert r["verdict"] == "single-node"


def test_vllm_socket_run_is_one_host_over_sockets_and_degraded() -> None:
    r = scan_paths(_files("socket")).to_dict()
    assert r["nodes"] == 1 and r["ranks"] == 2
    assert r["cross_node"]["transport"] == "none"
    assert r["intra_node"] == ["net"]
    assert r["verdict"] == "degraded"
    assert any("NET/Socket" in line for line in r["evidence"])
    assert any("nNodes 2" in w for w in r["warnings"])
