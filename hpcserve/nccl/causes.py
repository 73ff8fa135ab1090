"""Likely causes, with fixes, of a degraded cross-node path: TCP sockets instead of InfiniBand,
and InfiniBand without GPUDirect RDMA.

The variables are NCCL's (https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html);
the GDR rule follows NCCL ``src/transport/net_ib.cc`` (nvidia-peermem or DMA-BUF is needed).
"""

from __future__ import annotations

from hpcserve.nccl.facts import RunFacts
from hpcserve.nccl.report import Cause


def socket_causes(s: RunFacts) -> list[Cause]:
    """Why NCCL went over TCP sockets between nodes, from the variables and setup lines."""
    out: list[Cause] = []
    if "NCCL_IB_DISABLE" in s.env and s.env_on("NCCL_IB_DISABLE"):
        out.append(
            Cause(
                "NCCL_IB_DISABLE is set, so NCCL never tries InfiniBand",
                "unset NCCL_IB_DISABLE (site config network.nccl_env, your shell, the container)",
                [s.env["NCCL_IB_DISABLE"][1]],
            )
        )
    net = s.env.get("NCCL_NET")
    if net is not None and net[0].lower().startswith("socket"):
        out.append(Cause("NCCL_NET forces the socket transport", "unset NCCL_NET", [net[1]]))
    if s.no_ibverbs:
        out.append(
            Cause(
                "libibverbs is missing where NCCL runs (inside the container image)",
                "install rdma-core/libibverbs (libibverbs.so.1 and the mlx5 provider) in the image",
                [s.no_ibverbs],
            )
        )
    hca = s.env.get("NCCL_IB_HCA")
    if s.ib_nodevice:
        lines = [s.ib_nodevice] + ([hca[1]] if hca else [])
        if hca is not None:
            out.append(
                Cause(
                    f"NCCL_IB_HCA={hca[0]} matches no usable HCA port",
                    "list the HCAs with `ibv_devinfo` on a compute node and fix or unset "
                    "NCCL_IB_HCA (site config network.nccl_ib_hca)",
                    lines,
                )
            )
        out.append(
            Cause(
                "no InfiniBand device is visible to NCCL (typically inside the container)",
                "make the HCA visible where NCCL runs: /dev/infiniband and /sys/class/infiniband "
                "(Apptainer shares the host /dev unless --contain/--containall is used; Docker "
                "needs --device /dev/infiniband), the image needs rdma-core (libibverbs + mlx5 "
                "provider); check with `ibv_devinfo` inside the container",
                [s.ib_nodevice],
            )
        )
    ifn = s.env.get("NCCL_SOCKET_IFNAME")
    if s.no_ip_if:
        lines = [s.no_ip_if] + ([ifn[1]] if ifn else [])
        out.append(
            Cause(
                "no network interface matches NCCL_SOCKET_IFNAME"
                + (f"={ifn[0]}" if ifn else "")
                + " (NET/IB needs one for its out-of-band setup)",
                "set NCCL_SOCKET_IFNAME to an interface that exists on every node "
                "(`ip -br addr`), e.g. ib0 (site config network.nccl_socket_ifname)",
                lines,
            )
        )
    elif ifn is not None:
        out.append(
            Cause(
                f"sockets run over NCCL_SOCKET_IFNAME={ifn[0]}; an IPoIB interface (ib0) still "
                "means TCP, not RDMA",
                "fix IB visibility rather than the interface; NCCL_SOCKET_IFNAME only picks the "
                "TCP/bootstrap interface",
                [ifn[1]],
            )
        )
    if not out:
        lines = [x for x in (s.socket_using, *s.selected.values()) if x][:2]
        out.append(
            Cause(
                "NCCL fell back to TCP sockets without saying why in these lines",
                "run `ibv_devinfo` inside the job's container; check NCCL_IB_DISABLE, NCCL_NET, "
                "NCCL_IB_HCA; rerun with NCCL_DEBUG_SUBSYS=INIT,NET for the network setup lines",
                lines,
            )
        )
    return out


def gdr_causes(s: RunFacts) -> list[Cause]:
    """Why InfiniBand runs without GPUDirect RDMA."""
    out: list[Cause] = []
    lvl = s.env.get("NCCL_NET_GDR_LEVEL")
    if lvl is not None:
        out.append(
            Cause(
                f"NCCL_NET_GDR_LEVEL={lvl[0]} limits GPUDirect RDMA to closer GPU/NIC pairs",
                "unset NCCL_NET_GDR_LEVEL (or raise it, e.g. PHB or SYS) after checking "
                "`nvidia-smi topo -m`",
                [lvl[1]],
            )
        )
    rd = s.env.get("NCCL_NET_GDR_READ")
    if rd is not None and rd[0].strip() == "0":
        out.append(Cause("NCCL_NET_GDR_READ=0 turns GDR off for sends", "unset it", [rd[1]]))
    if out and not s.gdr_disabled:
        return out
    peer = [s.gdr_disabled] if s.gdr_disabled else []
    out.append(
        Cause(
            "the NIC cannot read/write GPU memory: the nvidia-peermem (or legacy nv_peer_mem) "
            "kernel module is not loaded, and DMA-BUF is not available",
            "ask the admins to load it (`modprobe nvidia_peermem`; check `lsmod | grep -e "
            "nvidia_peermem -e nv_peer_mem`) or use a driver/kernel with DMA-BUF support",
            peer,
        )
    )
    return out
