"""hpcserve.nccl: parsing NCCL_DEBUG=INFO output and judging how GPUs and nodes talk."""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import venv_site

from hpcserve.jobs.registry import Registry
from hpcserve.nccl import (
    NcclScanner,
    nccl_summary_for_status,
    one_line,
    parse_connection,
    scan_lines,
    scan_paths,
    split_line,
    wrap_stream,
)
from hpcserve.nccl.sockets import SocketFailure, parse_socket_failure
from hpcserve.sites.schema import Site

DATA = Path(__file__).parent / "data" / "nccl"
REPO = Path(__file__).resolve().parents[1]
CORE = "gpu7:4242:4300 [1] NCCL INFO Channel 00/0 : 1[1] -> 5[1] [send] via NET/IB/1/GDRDMA"
ESC = "\x1b"


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "hpcserve", "nccl", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        check=False,
    )


# --- prefixes ---------------------------------------------------------------------------------

PREFIXES = {
    "none": "",
    "srun -l": "0: ",
    "srun -l wide": " 12: ",
    "openmpi tag-output": "[1,5]<stdout>:",
    "openmpi tag-output with timestamp": "Mon Nov 23 10:00:00 2026[1,5]<stdout>:",
    "rank tag": "[155] ",
    "torchrun": "[rank0]:",
    "pdsh": "gpu7: ",
    "vllm worker": "(VllmWorker rank=1 pid=4242) ",
    "vllm pp worker": "(Worker_PP1 pid=4242) ",
    "ray": "(RayWorkerWrapper pid=4242, ip=10.0.0.7) ",
    "ray ansi": f"{ESC}[36m(RayWorkerWrapper pid=4242, ip=10.0.0.7){ESC}[0m ",
    "ray literal ESC": "ESC[36m(RayWorkerWrapper pid=4242, ip=10.0.0.7)ESC[0m ",
    "iso timestamp column": "2024-12-04T07:19:43.480Z\t",
    "syslog-ish timestamp": "[2026-11-22 10:00:00,123] ",
    "nested vllm+ray": "(EngineCore_DP0 pid=1088) (RayWorkerWrapper pid=4242, ip=10.0.0.7) ",
}


@pytest.mark.parametrize("prefix", PREFIXES.values(), ids=list(PREFIXES))
def test_every_launcher_prefix_keeps_host_pid_and_message(prefix: str) -> None:
    ln = split_line(prefix + CORE)
    assert ln is not None
    assert (ln.host, ln.pid, ln.dev, ln.level) == ("gpu7", 4242, 1, "INFO")
    assert ln.msg == "Channel 00/0 : 1[1] -> 5[1] [send] via NET/IB/1/GDRDMA"
    assert ln.text.endswith(CORE) and "\x1b" not in ln.text and "ESC[" not in ln.text


def test_ray_ip_is_read_from_the_prefix() -> None:
    ln = split_line(PREFIXES["ray ansi"] + CORE)
    assert ln is not None and ln.ray_ip == "10.0.0.7"


@pytest.mark.parametrize(
    "host_part,host",
    [("", ""), ("10-90-43-152", "10-90-43-152"), ("<cluster_name>", "<cluster_name>")],
)
def test_empty_numeric_and_redacted_hostnames(host_part: str, host: str) -> None:
    ln = split_line(f"0: {host_part}:919:1150 [0] NCCL INFO Using network IB")
    assert ln is not None and ln.host == host and ln.pid == 919


def test_warn_lines_with_file_and_2_26_timestamp() -> None:
    line = (
        "[2025-06-01 10:00:00] node1:18564:18638 [0] misc/socket.cc:50 NCCL WARN "
        "socketProgress: Connection closed by remote peer"
    )
    ln = split_line(line)
    assert ln is not None
    assert (ln.host, ln.level) == ("node1", "WARN")
    assert ln.msg.startswith("socketProgress")
    func = (
        "h:1:2 [0] transport/net_ib.cc:115 (ncclIbInit) NCCL WARN NET/IB : No IP interface found."
    )
    ln2 = split_line(func)
    assert ln2 is not None and ln2.host == "h" and ln2.msg == "NET/IB : No IP interface found."


def test_ray_repeat_suffix_is_dropped_from_the_message() -> None:
    ln = split_line(
        "ESC[36m(RayWorkerWrapper pid=9, ip=10.0.0.8)ESC[0m h:9:9 [0] NCCL INFO Using network IB "
        "ESC[32m [repeated 6x across cluster]ESC[0m"
    )
    assert ln is not None and ln.msg == "Using network IB"


def test_unknown_and_non_nccl_lines_are_ignored() -> None:
    assert split_line("INFO 10-24 13:17:20 [custom_all_reduce.py:37] Skipping P2P check") is None
    assert split_line("h:1:2 [0] NCCL INFO Trees [0] 1/-1/-1->0->-1") is None
    assert split_line("garbage NCCL garbage") is None
    r = scan_lines(["", "\x00\xff", "NCCL", "h:1:2 [0] NCCL INFO cudaDriverVersion 12040"])
    assert r.verdict == "unknown" and not r.found


# --- connection formats -----------------------------------------------------------------------

CONNS = [
    # (message, transport, detail, src, dst, net, gdr, same_device)
    ("Ring 00 : 26[2] -> 30[6] via P2P/IPC", "p2p", "P2P/IPC", 26, 30, None, False, False),
    ("Ring 00 : 3 -> 4 [send] via NET/IB/0/GDRDMA", "net", "NET/IB/0/GDRDMA", 3, 4, "IB", True,
     False),
    ("Ring 00 : 2[0] -> 3[0] via direct shared memory", "shm", "direct shared memory", 2, 3,
     None, False, False),
    ("Channel 01 : 2[c7000] -> 0[87000] [receive] via NET/IB/5/GDRDMA", "net", "NET/IB/5/GDRDMA",
     2, 0, "IB", True, False),
    ("Channel 01 : 0[87000] -> 4[87000] [send] via NET/IB/0", "net", "NET/IB/0", 0, 4, "IB",
     False, True),
    ("Channel 00/0 : 0[0] -> 1[1] via P2P/IPC/read", "p2p", "P2P/IPC/read", 0, 1, None, False,
     False),
    ("Channel 00/0 : 16[17000] -> 18[21000] via P2P/IPC comm 0x5609976f9470 nRanks 32", "p2p",
     "P2P/IPC", 16, 18, None, False, False),
    ("Channel 00 : 0[0] -> 1[1] via SHM/direct/direct", "shm", "SHM/direct/direct", 0, 1, None,
     False, False),
    ("Channel 02/1 : 0[0] -> 8[0] [send] via NET/IBext_v8/5(2)/GDRDMA", "net",
     "NET/IBext_v8/5(2)/GDRDMA", 0, 8, "IBext_v8", True, True),
    ("Channel 02/1 : 0[0] -> 9[1] [send] via NET/AWS Libfabric/1(2)/GDRDMA/Shared", "net",
     "NET/AWS Libfabric/1(2)/GDRDMA/Shared", 0, 9, "AWS Libfabric", True, False),
    ("Channel 00/0 : 1[1] -> 2[2] via P2P/CUMEM", "p2p", "P2P/CUMEM", 1, 2, None, False, False),
    ("Channel 00/0 : 1[1] -> 2[2] via P2P/direct pointer/read", "p2p", "P2P/direct pointer/read",
     1, 2, None, False, False),
    ("Channel 00/1 : 0[0] -> 1[1] [send] via NET/Socket/0/Shared", "net", "NET/Socket/0/Shared",
     0, 1, "Socket", False, False),
    ("Channel 03/0 : 47[7] -> 39[7] [receive] via NET/IBext_v8/2", "net", "NET/IBext_v8/2", 47,
     39, "IBext_v8", False, True),
    ("CollNet 05/0 : 5 [receive] via COLLNET/SHARP/5/GDRDMA", "collnet",
     "COLLNET/SHARP/5/GDRDMA", 5, None, "SHARP", True, False),
    ("Coll 00 : 0 [send] via COLLNET/SHARP/0", "collnet", "COLLNET/SHARP/0", 0, None, "SHARP",
     False, False),
]  # fmt: skip


@pytest.mark.parametrize("case", CONNS, ids=[c[0][:60] for c in CONNS])
def test_connection_formats_across_versions(case: tuple) -> None:  # type: ignore[type-arg]
    msg, transport, detail, src, dst, net, gdr, same = case
    c = parse_connection(msg)
    assert c is not None
    assert (c.transport, c.detail, c.src, c.dst) == (transport, detail, src, dst)
    assert (c.net, c.gdr, c.same_device) == (net, gdr, same)


def test_pxn_and_shared_flags() -> None:
    c = parse_connection("Channel 02/1 : 0[0] -> 9[1] [send] via NET/IBext_v8/5(2)/GDRDMA/Shared")
    assert c is not None and c.pxn and c.shared
    c = parse_connection("Channel 02/0 : 0[0] -> 9[1] [send] via NET/IB/5/GDRDMA(PCI)")
    assert c is not None and c.gdr and not c.pxn


@pytest.mark.parametrize(
    "msg",
    [
        "Channel 00/02 :    0   1   2   3",
        "Channel 00 :    0   1   2   3   4   5   6   7",
        "Ring 00 :    0   1   2   3",
        "Trees [0] 1/-1/-1->0->-1 [1] 1/-1/-1->0->-1",
        "Connected all rings, use ring PXN 0 GDR 1",
    ],
)
def test_ring_and_tree_order_lines_are_not_connections(msg: str) -> None:
    assert parse_connection(msg) is None
    r = scan_lines([f"h:1:2 [0] NCCL INFO {msg}"])
    assert r.connections == {}


# --- verdicts on the real and written logs ----------------------------------------------------

EXPECT = {
    # file: (verdict, nodes, transport, gdr, link, intra_node, exit code)
    "h200x4-p2p.log": ("single-node", 1, "none", None, None, ["p2p"], 0),
    "h200x4-shm.log": ("single-node", 1, "none", None, None, ["shm"], 0),
    "h200x4-socket.log": ("degraded", 1, "none", None, None, ["net"], 1),
    "v2.4-ring-ib-2node.log": ("optimal", 2, "ib", True, "infiniband", ["p2p"], 0),
    "v2.4-ray-shm-same-cudadev.log": ("single-node", 1, "none", None, None, ["shm"], 0),
    "v2.9-ompi-busid-ib-nogdr-samehost.log": ("degraded", 2, "ib", False, "infiniband", ["p2p"], 1),
    "v2.17-single-node-busid-traps.log": (
        "single-node", 1, "none", None, None, ["p2p", "shm", "nvls"], 0,
    ),
    "v2.19-vllm-socket-2node.log": ("degraded", 2, "socket", False, None, ["p2p"], 1),
    "v2.19-rank-tag-ib-disabled.log": ("degraded", 39, "socket", False, None, ["p2p"], 1),
    "v2.20-cloudwatch-ib-nogdr-peermem.log": ("degraded", 2, "ib", False, "infiniband", ["p2p"], 1),
    "v2.21-ray-ansi-ibext-pxn-roce.log": ("optimal", 2, "ib", True, "roce", ["p2p"], 0),
    "v2.22-ib-hca-wrong-socket.log": ("degraded", 2, "socket", False, None, [], 1),
    "v2.23-torchrun-collnet-sharp.log": ("optimal", 2, "ib", True, "infiniband", ["p2p"], 0),
    "v2.26-pdsh-ofi-efa-warn-ts.log": ("optimal", 2, "ofi", True, None, ["p2p"], 0),
    "no-nccl.log": ("unknown", None, "unknown", None, None, [], 3),
    # issue 12: logs that end at init (no connection line) and failed socket connections
    "v2.19-init-roce-2host.log": ("selected", 2, "ib", None, "roce", [], 3),
    "v2.20-vllm-ray-init-ib-hang.log": ("selected", 2, "ib", None, None, [], 3),
    "init-ofi-efa-libfabric-2host.log": ("selected", 2, "ofi", None, None, [], 3),
    # 17 hosts in the file; each distinct message is read once, so hosts whose only line
    # repeats another host's ("NET/IB : No device found.") are not counted: a lower bound
    "init-noib-socket-aws-hosts.log": ("degraded", 9, "socket", False, None, [], 1),
    "vllm-init-socket-one-host.log": ("single-node", 1, "none", None, None, [], 0),
    "v2.18-socket-connect-abort-net-socket.log": (
        "failed", None, "socket", False, None, ["shm"], 1,
    ),
    "v2.17-ibext-nodevice-socket-closed-by-peer.log": (
        "failed", None, "socket", False, None, ["p2p"], 1,
    ),
    "v2.18-bootstrap-socket-trail-no-warn.log": ("failed", None, "unknown", None, None, [], 1),
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPECT))
def test_verdicts(name: str) -> None:
    verdict, nodes, transport, gdr, link, intra, code = EXPECT[name]
    r = scan_paths([str(DATA / name)])
    assert r.verdict == verdict
    assert r.nodes == nodes
    assert r.cross_node.to_dict() == {"transport": transport, "gdr": gdr, "link": link}
    assert r.intra_node == intra
    assert r.exit_code == code
    if verdict != "unknown":
        text = re.sub(r"(?:\x1b|ESC)?\[[0-9;]*m", "", (DATA / name).read_text())
        assert r.evidence and all(line in text for line in r.evidence)
        assert not any("\x1b" in line for line in r.evidence)


def test_every_data_log_has_an_expectation() -> None:
    assert {p.name for p in DATA.glob("*.log")} == set(EXPECT)


@pytest.mark.parametrize("name", list(EXPECT))
def test_line_path_and_chunk_path_agree(name: str) -> None:
    text = (DATA / name).read_text(errors="replace")
    by_lines = scan_lines(text.splitlines()).to_dict()
    for size in (7, 64, 1 << 20):  # chunk boundaries inside lines must not matter
        s = NcclScanner()
        s.feed_stream(io.BytesIO(text.encode()), chunk_size=size)
        assert s.report().to_dict() == by_lines


def test_versions() -> None:
    assert scan_paths([str(DATA / "h200x4-p2p.log")]).nccl_version == "2.28.9+cuda13.0"
    assert scan_paths([str(DATA / "v2.4-ring-ib-2node.log")]).nccl_version == "2.4.8+cuda10.1"
    r = scan_lines(
        ["NCCL version 2.21.5+cuda12.4", "h:1:1 [0] NCCL INFO NCCL version 2.19.3+cuda12.2"]
    )
    assert r.nccl_version == "2.21.5+cuda12.4"
    assert any("several NCCL versions" in w for w in r.warnings)


# --- traps ------------------------------------------------------------------------------------


def test_trap_using_network_socket_on_a_single_node_is_not_degraded() -> None:
    r = scan_paths([str(DATA / "h200x4-p2p.log")])
    assert "Socket" in (DATA / "h200x4-p2p.log").read_text()
    assert r.verdict == "single-node" and r.cross_node.transport == "none"


def test_trap_net_between_gpus_of_one_host_is_one_node_but_degraded() -> None:
    r = scan_paths([str(DATA / "h200x4-socket.log")])
    assert r.nodes == 1 and r.cross_node.transport == "none" and r.verdict == "degraded"
    assert any("one host" in w and "nNodes 4" in w for w in r.warnings)
    assert any("NET/Socket" in w and "not a cross-node path" in w for w in r.warnings)
    assert any("NCCL_SHM_DISABLE" in line for c in r.causes for line in c.lines)


def test_trap_gdr_1_in_connected_all_rings_is_not_evidence() -> None:
    r = scan_paths([str(DATA / "v2.20-cloudwatch-ib-nogdr-peermem.log")])
    assert r.cross_node.gdr is False and r.verdict == "degraded"
    assert not any("Connected all rings" in e for e in r.evidence)
    base = [
        "a:1:1 [0] NCCL INFO comm 0x1 rank 0 nRanks 2 nNodes 2 localRanks 1 localRank 0 MNNVL 0",
        "a:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/IB/0/GDRDMA",
    ]
    with_no = [*base, "a:1:1 [0] NCCL INFO Connected all rings, use ring PXN 0 GDR 0"]
    assert scan_lines(with_no).cross_node.gdr is True


def test_trap_collnet_channel_count_is_not_usage() -> None:
    r = scan_paths([str(DATA / "v2.17-single-node-busid-traps.log")])
    assert not any(k.startswith("COLLNET") for k in r.connections)
    assert r.verdict == "single-node"


def test_trap_selected_network_is_not_the_transport() -> None:
    lines = [
        "a:1:1 [0] NCCL INFO Using network IB",
        "a:1:1 [0] NCCL INFO comm 0x1 rank 0 nRanks 2 nNodes 2 localRanks 1 localRank 0 MNNVL 0",
        "a:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/Socket/0",
    ]
    r = scan_lines(lines)
    assert r.cross_node.transport == "socket" and r.verdict == "degraded"
    assert r.selected_network is not None and not r.selected_network.seen_carrying_traffic
    only_selection = scan_lines(lines[:2])
    # issue 12: a log that ends at init is judged from its selection, but never as "optimal"
    assert only_selection.verdict == "selected" and only_selection.exit_code == 3
    assert any("not proof" in w and "not yet seen carrying traffic" in w
               for w in only_selection.warnings)  # fmt: skip


# --- issue 12: logs that end at NCCL's init, failed socket connections ------------------------


def _sel(name: str) -> dict:  # type: ignore[type-arg]
    d = scan_paths([str(DATA / name)]).to_dict()["selected_network"]
    assert d is not None
    return d  # type: ignore[no-any-return]


def test_init_only_roce_selection_names_its_ports_and_is_not_yet_traffic() -> None:
    r = scan_paths([str(DATA / "v2.19-init-roce-2host.log")])
    assert _sel("v2.19-init-roce-2host.log") == {
        "name": "IB", "kind": "ib", "link": "roce",
        "devices": ["mlx5_10:1/RoCE", "mlx5_11:1/RoCE"], "inferred": False,
        "seen_carrying_traffic": False,
        "lines": [
            "dgxh100-4:460770:460842 [0] NCCL INFO Using network IB",
            "dgxh100-4:460770:460842 [0] NCCL INFO NET/IB : Using [0]mlx5_10:1/RoCE "
            "[1]mlx5_11:1/RoCE [RO]; OOB enp220s0np0:11.1.128.136<0>",
        ],
    }  # fmt: skip
    assert any("not yet seen carrying traffic" in w for w in r.warnings)
    assert one_line(r) == "NCCL: RoCE selected, not yet seen carrying traffic (2 nodes)"
    assert r.failure is None and r.causes == []


def test_init_only_ib_counts_hosts_from_nnodes_and_ofi_from_the_plugin() -> None:
    assert _sel("v2.20-vllm-ray-init-ib-hang.log")["link"] is None  # no port list in this log
    ofi = _sel("init-ofi-efa-libfabric-2host.log")
    assert (ofi["name"], ofi["kind"], ofi["devices"]) == (
        "Libfabric",
        "ofi",
        ["efa (found 16 nics)"],
    )


def test_init_only_no_ib_device_then_sockets_is_degraded_with_the_cause() -> None:
    name = "init-noib-socket-aws-hosts.log"
    r = scan_paths([str(DATA / name)])
    sel = _sel(name)
    assert (sel["name"], sel["inferred"], sel["seen_carrying_traffic"]) == ("Socket", True, False)
    assert "NET/IB : No device found." in sel["lines"][0]
    assert r.causes[0].cause.startswith("no InfiniBand device is visible")
    assert one_line(r) == (
        "NCCL: degraded: 9 nodes over TCP sockets (selected, not yet seen carrying traffic)"
    )


def test_init_only_every_rank_on_one_host_is_single_node() -> None:
    r = scan_paths([str(DATA / "vllm-init-socket-one-host.log")])
    assert r.per_node[0].ranks == [0, 1, 2, 3] and r.ranks == 4
    assert any("not used between its GPUs" in w for w in r.warnings)
    # the same lines on a second host: no longer one host, sockets selected between them
    lines = (DATA / "vllm-init-socket-one-host.log").read_text().splitlines()
    other = [ln.replace("cuda0003", "cuda0004").replace("10.107.72.224", "10.107.72.225")
             for ln in lines]  # fmt: skip
    two = scan_lines(lines + other)
    assert (two.verdict, two.nodes, two.cross_node.transport) == ("degraded", 2, "socket")


def test_init_only_one_rank_is_single_node() -> None:
    r = scan_lines([
        "g:1:1 [0] NCCL INFO Using network IB",
        "g:1:1 [0] NCCL INFO comm 0x1 rank 0 nranks 1 cudaDev 0 nvmlDev 0 busId 1000 commId 0x2 "
        "- Init COMPLETE",
    ])  # fmt: skip
    assert (r.verdict, r.exit_code) == ("single-node", 0)
    assert "one rank: NCCL has no peer to connect to" in r.warnings


def test_gpus_of_one_host_over_net_ib_with_p2p_and_shm_off_are_not_cross_node() -> None:
    # No public log of this case was found (tests/data/nccl/SOURCES.md); the NET/Socket case is
    # the real h200x4-socket.log. These lines follow NCCL's formats (param.cc, net_ib, init.cc).
    head = [
        "h:1:1 [0] NCCL INFO NCCL_P2P_DISABLE set by environment to 1.",
        "h:1:1 [0] NCCL INFO NCCL_SHM_DISABLE set by environment to 1.",
        "h:1:1 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB ; OOB eth0:10.0.0.1<0>",
        "h:1:1 [0] NCCL INFO Using network IB",
        "h:1:1 [0] NCCL INFO comm 0x1 rank 0 nRanks 2 nNodes 2 localRanks 1 localRank 0 MNNVL 0",
        "h:2:2 [1] NCCL INFO comm 0x2 rank 1 nRanks 2 nNodes 2 localRanks 1 localRank 0 MNNVL 0",
    ]
    init = scan_lines(head)
    assert (init.verdict, init.nodes, init.cross_node.transport) == ("degraded", 1, "none")
    assert init.intra_node == ["net"]
    assert any("not a cross-node path" in w for w in init.warnings)
    done = scan_lines(
        [*head, "h:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via NET/IB/0/GDRDMA"]
    )
    assert (done.verdict, done.nodes, done.cross_node.transport) == ("degraded", 1, "none")


def _failure(name: str) -> dict:  # type: ignore[type-arg]
    d = scan_paths([str(DATA / name)]).to_dict()["failure"]
    assert d is not None
    return d  # type: ignore[no-any-return]


def test_failed_connect_in_the_socket_transport_names_peer_error_and_causes() -> None:
    name = "v2.18-socket-connect-abort-net-socket.log"
    f = _failure(name)
    assert (f["kind"], f["peer"], f["error"]) == (
        "connect", "10.0.0.2<45763>", "Software caused connection abort",
    )  # fmt: skip
    assert f["layer"].startswith("the NET/Socket transport")
    assert f["lines"][0].endswith("failed : Software caused connection abort")
    assert f["lines"][-1].endswith("NCCL INFO transport/net_socket.cc:336 -> 2")
    r = scan_paths([str(DATA / name)])
    text = json.dumps([c.to_dict() for c in r.causes])
    assert "NCCL_SOCKET_IFNAME" in text and "firewall" in text
    assert any(w.startswith("a cross-node socket connection failed") for w in r.warnings)
    assert one_line(r) == (
        "NCCL: failed: socket connection to 10.0.0.2<45763>: Software caused connection abort"
    )


def test_peer_closing_in_the_socket_transport_fails_but_after_setup_elsewhere_does_not() -> None:
    f = _failure("v2.17-ibext-nodevice-socket-closed-by-peer.log")
    assert (f["kind"], f["peer"]) == ("closed", "<cluster_name>.ibnet<53735>")
    # a peer closing after the NET connections were set up, outside the socket transport,
    # does not overturn the transport verdict (the written v2.26 log): reported beside it
    r = scan_paths([str(DATA / "v2.26-pdsh-ofi-efa-warn-ts.log")])
    assert r.verdict == "optimal" and r.failure is not None and r.failure.kind == "closed"
    assert "closed by its peer after the NET connections were set up" in r.warnings[0]


def test_socket_trail_without_warn_is_a_failed_bootstrap_connection() -> None:
    f = _failure("v2.18-bootstrap-socket-trail-no-warn.log")
    assert (f["kind"], f["peer"]) == ("error", None)
    assert f["layer"].startswith("NCCL's bootstrap")


@pytest.mark.parametrize(
    ("msg", "kind", "peer", "error"),
    [
        ("Connect to 10.1.1.2<4000> failed : Connection refused", "connect", "10.1.1.2<4000>",
         "Connection refused"),  # 2.7-2.9, include/socket.h
        ("Net : Connect to 10.1.1.2<4000> failed : No route to host", "connect",
         "10.1.1.2<4000>", "No route to host"),  # 2.12-2.14
        ("socketPollConnect: Connect to 10.1.1.2<4000> returned 111(Connection refused) errno "
         "115(Operation now in progress)", "connect", "10.1.1.2<4000>",
         "Operation now in progress"),  # 2.19+
        ("ncclOsSocketPollConnect to 10.1.1.2<4000> failed with error Connection timed out",
         "connect", "10.1.1.2<4000>", "Connection timed out"),  # 2.28+, os/linux.cc
        ("Net : Connection closed by remote peer", "closed", None,
         "connection closed by remote peer"),  # 2.7-2.9
        ("socketStartConnect: exceeded retries (20000)", "retries", None,
         "socketStartConnect exceeded its retries"),
    ],
)  # fmt: skip
def test_socket_failure_formats_across_versions(
    msg: str, kind: str, peer: str | None, error: str
) -> None:
    assert parse_socket_failure(msg) == SocketFailure(kind, peer, error)


def test_socket_failure_lines_are_read_through_the_fast_path() -> None:
    name = "v2.17-ibext-nodevice-socket-closed-by-peer.log"
    text = (DATA / name).read_bytes()
    s = NcclScanner()
    s.feed_stream(io.BytesIO(text * 50), chunk_size=1 << 12)
    assert s.report().to_dict() == scan_lines(text.decode().splitlines()).to_dict()


def test_nodes_counted_without_trusting_identical_hostnames() -> None:
    r = scan_paths([str(DATA / "v2.9-ompi-busid-ib-nogdr-samehost.log")])
    assert r.nodes == 2  # hostnames are all "ubuntu"; addresses and bus ids say two
    assert any("ubuntu" in w for w in r.warnings)


def test_nodes_from_duplicate_bus_ids_in_one_communicator() -> None:
    lines = [
        f"ubuntu:{p}:{p} [0] NCCL INFO ncclCommInitRank comm 0x{p} rank {r} nranks 2 cudaDev 0 "
        f"nvmlDev 0 busId 1000 commId 0xabc - Init COMPLETE"
        for r, p in ((0, 11), (1, 11))
    ] + ["ubuntu:11:11 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/IB/0/GDRDMA"]
    r = scan_lines(lines)
    assert r.nodes == 2 and r.verdict == "optimal"


def test_net_without_node_count_and_without_p2p_shm_disable_means_cross_node() -> None:
    r = scan_lines(["x:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] [send] via NET/Socket/0"])
    assert r.nodes is None and r.cross_node.transport == "socket" and r.verdict == "degraded"


def test_gdr_optional() -> None:
    s = NcclScanner(expect_gdr=False)
    s.feed_lines((DATA / "v2.20-cloudwatch-ib-nogdr-peermem.log").read_text().splitlines())
    r = s.report()
    assert r.verdict == "optimal" and r.cross_node.gdr is False


# --- causes -----------------------------------------------------------------------------------


def _causes(name: str) -> str:
    return json.dumps([c.to_dict() for c in scan_paths([str(DATA / name)]).causes])


def test_cause_no_ib_device_in_container() -> None:
    c = _causes("v2.19-vllm-socket-2node.log")
    assert "no InfiniBand device" in c and "NET/IB : No device found." in c


def test_cause_ib_disabled() -> None:
    c = _causes("v2.19-rank-tag-ib-disabled.log")
    assert "NCCL_IB_DISABLE" in c and "set by environment to 1." in c


def test_cause_wrong_hca_and_ifname() -> None:
    c = _causes("v2.22-ib-hca-wrong-socket.log")
    assert "NCCL_IB_HCA=mlx5_9" in c and "NCCL_SOCKET_IFNAME=ib0" in c


def test_cause_missing_peermem() -> None:
    c = _causes("v2.20-cloudwatch-ib-nogdr-peermem.log")
    assert "nvidia-peermem" in c and "GPU Direct RDMA Disabled for HCA 0" in c


def test_cause_gdr_level() -> None:
    c = _causes("v2.9-ompi-busid-ib-nogdr-samehost.log")
    assert "NCCL_NET_GDR_LEVEL=LOC" in c


# --- JSON, CLI, files -------------------------------------------------------------------------


def test_json_field_names_are_exactly_the_issue_s() -> None:
    d = scan_paths([str(DATA / "v2.21-ray-ansi-ibext-pxn-roce.log")]).to_dict()
    fixed = {"nccl_version", "nodes", "ranks", "cross_node", "intra_node", "verdict", "evidence",
             "warnings"}  # fmt: skip
    assert fixed <= set(d)
    assert set(d["cross_node"]) == {"transport", "gdr", "link"}
    assert d["ranks"] == 16 and d["nccl_version"] == "2.21.5+cuda12.4"
    assert isinstance(d["evidence"], list) and isinstance(d["warnings"], list)


@pytest.mark.parametrize("name", list(EXPECT))
def test_cli_exit_codes_and_json(name: str) -> None:
    p = run_cli("--json", str(DATA / name))
    assert p.returncode == EXPECT[name][6], p.stderr
    assert json.loads(p.stdout)["verdict"] == EXPECT[name][0]


def test_cli_human_output_cites_lines_and_causes() -> None:
    p = run_cli(str(DATA / "v2.19-vllm-socket-2node.log"))
    out = p.stdout.decode()
    assert p.returncode == 1
    assert "degraded" in out and "likely causes and fixes" in out
    assert "| (Worker_PP1 pid=7781)" in out or "| (VllmWorker" in out
    assert "gpu-b01" in out and "gpu-b02" in out  # per host


def test_cli_stdin_and_gzip(tmp_path: Path) -> None:
    raw = (DATA / "v2.23-torchrun-collnet-sharp.log").read_bytes()
    assert run_cli("-", stdin=raw).returncode == 0
    assert run_cli("-", stdin=gzip.compress(raw)).returncode == 0
    gz = tmp_path / "x.log.gz"
    gz.write_bytes(gzip.compress((DATA / "h200x4-socket.log").read_bytes()))
    p = run_cli("--json", str(gz))
    assert p.returncode == 1 and json.loads(p.stdout)["intra_node"] == ["net"]


def test_cli_many_files_and_directory(tmp_path: Path) -> None:
    for i, line in enumerate(
        [
            "n0:1:1 [0] NCCL INFO comm 0x1 rank 0 nRanks 2 nNodes 2 localRanks 1 localRank 0",
            "n1:2:2 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [receive] via NET/IB/0/GDRDMA",
        ]
    ):
        (tmp_path / f"node-{i}.log").write_text(line + "\n")
    files = [str(p) for p in sorted(tmp_path.iterdir())]
    assert run_cli(*files).returncode == 0
    assert run_cli(str(tmp_path)).returncode == 0


def test_cli_usage_errors(tmp_path: Path) -> None:
    p = run_cli()
    assert p.returncode == 2 and b"error:" in p.stderr
    f = tmp_path / "a.log"
    f.write_text("x\n")
    p = run_cli(str(f), str(tmp_path / "missing.log"))
    assert p.returncode == 2 and b"no such file" in p.stderr and b"Traceback" not in p.stderr
    p = run_cli("-", "-")
    assert p.returncode == 2


def test_cli_no_nccl_information_exit_3(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert run_cli(str(empty)).returncode == 3


def test_cli_does_not_import_paramiko_or_requests() -> None:
    code = (
        "import sys; from hpcserve.cli import main\n"
        "try:\n main(['nccl', '--json', sys.argv[1]])\n"
        "except SystemExit: pass\n"
        "assert 'paramiko' not in sys.modules and 'requests' not in sys.modules, 'heavy import'"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(DATA / "h200x4-p2p.log")],
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    assert p.returncode == 0, p.stderr


def test_status_summary() -> None:
    assert nccl_summary_for_status(["INFO vllm starting"]) is None
    text = (DATA / "v2.21-ray-ansi-ibext-pxn-roce.log").read_text().splitlines()
    s = nccl_summary_for_status(text)
    assert s is not None and "optimal" in s and "RoCE" in s and "GPUDirect" in s
    sock = nccl_summary_for_status((DATA / "h200x4-socket.log").read_text().splitlines())
    assert sock is not None and "degraded" in sock and "one node" in sock


def test_memory_is_bounded_by_distinct_messages_not_log_length() -> None:
    s = NcclScanner()
    line = b"h:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM\n"
    for _ in range(50):
        s.feed_chunk(line * 1000)
    assert len(s._seen) == 1
    assert s.report().connections == {"P2P/CUMEM": 1}


def test_job_reference_reads_the_job_s_logs_through_its_executor(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registry: Callable[[], Registry],
    known_site: Callable[[Site], Site],
) -> None:
    """JOB mode: the registry names the job and its site; the site's executor (here this
    machine: scheduler.submit is 'local') reads the job's NCCL and node logs."""
    from hpcserve.cli import main
    from hpcserve.jobs.record import JobRecord

    site = known_site(venv_site(name="nccl-site"))
    jobdir = tmp_path / "job dir 'quoted'"
    (jobdir / "nccl").mkdir(parents=True)
    (jobdir / "nccl" / "node-0.gpu1.11.log").write_text(
        "gpu1:11:11 [0] NCCL INFO comm 0x1 rank 0 nRanks 8 nNodes 2 localRanks 4 localRank 0\n"
        "gpu1:11:11 [0] NCCL INFO NET/IB : No device found.\n"
        "gpu1:11:11 [0] NCCL INFO Channel 00/0 : 3[3] -> 4[0] [send] via NET/Socket/0\n"
    )
    (jobdir / "node-1.log").write_text("INFO vllm worker started\n")
    registry().add(JobRecord("4711", site.name, "m", 2, 4, 2, str(jobdir), 0.0, False, name="run1"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["nccl", "--json", "run1"])
    assert e.value.code == 1


def test_multi_node_with_p2p_and_shm_disabled_warns_about_intra_node_network() -> None:
    lines = [
        "a:1:1 [0] NCCL INFO NCCL_P2P_DISABLE set by environment to 1",
        "a:1:1 [0] NCCL INFO NCCL_SHM_DISABLE set by environment to 1.",
        "a:1:1 [0] NCCL INFO comm 0x1 rank 0 nRanks 4 nNodes 4 localRanks 1 localRank 0 MNNVL 0",
        "b:2:2 [0] NCCL INFO comm 0x2 rank 2 nRanks 4 nNodes 4 localRanks 1 localRank 0 MNNVL 0",
        "a:1:1 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/IB/0/GDRDMA",
    ]
    r = scan_lines(lines)
    assert r.nodes == 2  # two hostnames; nNodes 4 counts GPUs when P2P and SHM are off
    assert r.verdict == "optimal" and r.cross_node.transport == "ib"
    assert any("inside each node" in w for w in r.warnings)


# --- the fast path (byte chunks, sieved) gives what reading line by line gives ------------------


def _big_log() -> str:
    """About 3 MB of real lines arranged to exercise every sieve of the chunk path: runs of lines
    repeated, the same lines in ever new orders, lines never repeated, messages never repeated,
    one new message late inside repeated runs, CRLF lines, and no line end at the very end."""
    rng = random.Random(4)
    real = [
        ln for p in sorted(DATA.glob("*.log")) for ln in p.read_text().split("\n") if ln.strip()
    ]
    p2p = [ln for ln in (DATA / "h200x4-p2p.log").read_text().split("\n") if ln]
    parts = p2p * 20
    for _ in range(20):
        rng.shuffle(real)
        parts += real
    parts += [re.sub(r"^(\w+:\d+:)\d+", rf"\g<1>{i}", ln, count=1) for i, ln in enumerate(real * 5)]
    parts += [
        f"gpu{i % 7}:{i}:{i} [0] NCCL INFO Channel 00/0 : {i}[0] -> {i + 1}[1] via P2P/CUMEM"
        for i in range(3000)
    ]
    late = p2p * 20
    late.insert(
        len(late) - 500, "vm:865:865 [0] NCCL INFO Channel 02/0 : 0[0] -> 1[1] via NET/Socket/0"
    )
    parts += late
    ray = (DATA / "v2.21-ray-ansi-ibext-pxn-roce.log").read_text().split("\n")
    parts += [ln + "\r" for ln in ray if ln]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def big_log() -> tuple[bytes, dict]:  # type: ignore[type-arg]
    text = _big_log()
    return text.encode(), scan_lines(text.split("\n")).to_dict()


def test_big_log_is_not_trivial(big_log: tuple[bytes, dict]) -> None:  # type: ignore[type-arg]
    raw, by_lines = big_log
    assert len(raw) > 2_000_000
    assert {f"gpu{i}" for i in range(7)} <= {n["host"] for n in by_lines["per_node"]}
    assert by_lines["connections"]["NET/Socket/0"] >= 1
    assert by_lines["connections"]["P2P/CUMEM"] > 3000


@pytest.mark.parametrize("size", [997, 4099, 65537, 1 << 20, 8 << 20])
def test_chunk_path_equals_line_path_on_a_big_mixed_log(
    big_log: tuple[bytes, dict],  # type: ignore[type-arg]
    size: int,
) -> None:
    raw, by_lines = big_log
    s = NcclScanner()
    s.feed_stream(io.BytesIO(raw), chunk_size=size)  # boundaries inside lines and blocks
    assert s.report().to_dict() == by_lines
    if size >= 65537:  # the sieves were used, not bypassed
        assert s._seen_blocks and s._seen_lines


def test_chunk_path_equals_line_path_for_gzip_input(
    big_log: tuple[bytes, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    raw, by_lines = big_log
    gz = tmp_path / "big.log.gz"
    gz.write_bytes(gzip.compress(raw, compresslevel=1))
    assert scan_paths([str(gz)]).to_dict() == by_lines
    s = NcclScanner()
    s.feed_stream(wrap_stream(io.BufferedReader(io.BytesIO(gz.read_bytes()))), chunk_size=4099)
    assert s.report().to_dict() == by_lines


def test_chunk_path_equals_line_path_as_one_chunk_and_in_pieces(
    big_log: tuple[bytes, dict],  # type: ignore[type-arg]
) -> None:
    raw, by_lines = big_log
    s = NcclScanner()
    s.feed_chunk(raw)
    assert s.report().to_dict() == by_lines
    cuts = [0, *sorted(random.Random(7).sample(range(1, len(raw)), 40)), len(raw)]
    s = NcclScanner()
    s.feed_stream(_UnevenReader(raw, cuts), chunk_size=1 << 20)  # uneven reads, as from a pipe
    assert s.report().to_dict() == by_lines


class _UnevenReader(io.RawIOBase):
    """Hands out ``raw`` in the given uneven pieces, whatever size is asked for (a pipe)."""

    def __init__(self, raw: bytes, cuts: list[int]) -> None:
        self.parts = [raw[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    def read(self, size: int = -1) -> bytes:
        return self.parts.pop(0) if self.parts else b""


def test_sieve_memory_stays_bounded_and_forgetting_changes_nothing(
    big_log: tuple[bytes, dict],  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hpcserve.nccl.scanner as nccl

    raw, by_lines = big_log
    monkeypatch.setattr(nccl, "_MAX_BLOCK_BYTES", 8192)
    monkeypatch.setattr(nccl, "_MAX_LINE_BYTES", 8192)
    s = NcclScanner()
    peak = 0
    stream = io.BytesIO(raw)
    rest = b""
    while block := stream.read(65537):
        cut = block.rfind(b"\n") + 1
        s.feed_chunk(rest + block[:cut])
        rest = block[cut:]
        peak = max(peak, sum(map(len, s._seen_blocks)), sum(map(len, s._seen_lines)))
    s.feed_chunk(rest)
    assert peak <= 8192
    assert s.report().to_dict() == by_lines


@pytest.mark.parametrize("offset", [0, 1, 12, 30, 60, -3, -1])
def test_a_new_line_cut_by_a_read_is_seen_whole_and_once(offset: int) -> None:
    # Repeated runs of real lines, so that the block sieve is on for every read; the one new
    # line, in the middle, is split between two reads at `offset`.
    lines = [ln for ln in (DATA / "h200x4-p2p.log").read_text().split("\n") if ln] * 30
    new = "vm:865:865 [0] NCCL INFO Channel 02/0 : 0[0] -> 1[1] via NET/Socket/0"
    lines.insert(len(lines) // 2, new)
    raw = ("\n".join(lines) + "\n").encode()
    at = raw.index(new.encode()) + (offset if offset >= 0 else len(new) + offset)
    want = scan_lines(raw.decode().split("\n")).to_dict()
    assert want["connections"]["NET/Socket/0"] == 1 and want["verdict"] == "degraded"
    s = NcclScanner()
    s.feed_stream(_UnevenReader(raw, [0, at - 300_000, at, len(raw)]))
    assert s.report().to_dict() == want
    assert s._delim is not None and s._block_skip == 0  # the block sieve never backed off
