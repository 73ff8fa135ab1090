"""Failed TCP socket connections in NCCL logs: which peer, what error, where, and likely causes.

The line formats, by NCCL version (``WARN`` lines unless said otherwise):

* ``Connect to %s failed : %s`` (2.7-2.9, ``src/include/socket.h``), ``Net : Connect to %s
  failed : %s`` (2.12-2.14, ``src/misc/socket.cc``), ``socketStartConnect: Connect to %s failed :
  %s`` (2.16-2.2x, ``src/misc/socket.cc``), ``socketPollConnect: Connect to %s returned %d(%s)
  errno %d(%s)`` (2.19+), ``ncclOsSocketPollConnect to %s failed with error %s`` (2.28+,
  ``src/os/linux.cc``);
* ``Net : Connection closed by remote peer`` (2.7-2.9, no address), ``Net : Connection closed by
  remote peer %s`` (2.12-2.14), ``socketProgress: Connection closed by remote peer %s`` (2.16+);
* ``socketStartConnect|socketPollConnect: exceeded retries|timeouts (%d)`` (2.16+);
* the peer is ``address<port>`` (``ncclSocketToString``), a hostname when NCCL prints it in
  "numeric host form 0" (the closed-by-peer line);
* the error trail (``NCCLCHECK``, ``src/include/checks.h``) says which layer failed:
  ``transport/net_socket.cc`` is the NET/Socket transport (data between nodes),
  ``bootstrap.cc`` the bootstrap ring every communicator sets up over TCP first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcserve.nccl.report import Cause

_CONNECT_RE = re.compile(
    r"(?:^|: )Connect to (\S+) (?:failed : (.+)|returned .*?errno \d+\((.*)\))$"
)
_OS_CONNECT_RE = re.compile(r"^ncclOsSocketPollConnect to (\S+) failed with error (.+)$")
_CLOSED_RE = re.compile(r"Connection closed by remote peer ?(\S*)$")
_RETRIES_RE = re.compile(r"^(socketStartConnect|socketPollConnect): exceeded (retries|timeouts)")
# "transport/net_socket.cc:336 -> 2", "bootstrap.cc:270 (bootstrapInit) -> 2"
TRAIL_RE = re.compile(r"^((?:[\w.-]+/)*[\w.-]+\.(?:cc|h|cpp)):\d+(?: \([^)]*\))? -> \d+")

# Where in NCCL a trail or WARN file puts the failure (the first that is seen wins).
LAYERS = (
    ("transport/net_socket.cc", "the NET/Socket transport (data between nodes over TCP)"),
    ("bootstrap.cc", "NCCL's bootstrap (the TCP ring every communicator sets up first)"),
    ("proxy.cc", "NCCL's proxy thread (setting up network connections)"),
)


@dataclass(frozen=True)
class SocketFailure:
    """One failed socket operation: ``connect`` (refused, timed out, unreachable, ...),
    ``closed`` (the peer closed the connection), ``retries`` (NCCL gave up retrying) or
    ``error`` (an error trail through the socket code with no WARN line saying what failed, as
    ``socketPollConnect`` can fail silently: NVIDIA/nccl#1099)."""

    kind: str
    peer: str | None
    error: str | None


def parse_socket_failure(msg: str) -> SocketFailure | None:
    """The failure a WARN message reports, or None (formats in the module docstring)."""
    if "onnect" not in msg and "exceeded" not in msg:
        return None
    m = _CONNECT_RE.search(msg)
    if m is not None:
        return SocketFailure("connect", m.group(1), (m.group(2) or m.group(3) or "").strip())
    m = _OS_CONNECT_RE.search(msg)
    if m is not None:
        return SocketFailure("connect", m.group(1), m.group(2).strip())
    m = _CLOSED_RE.search(msg)
    if m is not None:
        return SocketFailure("closed", m.group(1) or None, "connection closed by remote peer")
    m = _RETRIES_RE.search(msg)
    if m is not None:
        return SocketFailure("retries", None, f"{m.group(1)} exceeded its {m.group(2)}")
    return None


def trail_failure(files: dict[str, str]) -> tuple[SocketFailure, str] | None:
    """A failure shown only by an error trail: through ``transport/net_socket.cc``, or through
    ``misc/socket.cc`` into ``bootstrap.cc``; None otherwise."""

    def first(name: str) -> str | None:
        return next((ln for f, ln in files.items() if f == name or f.endswith("/" + name)), None)

    sock, low = first("transport/net_socket.cc"), first("misc/socket.cc")
    line = sock or (low if first("bootstrap.cc") else None)
    if line is None:
        return None
    return SocketFailure("error", None, "an error in NCCL's socket code (no WARN line)"), line


def layer_of(files: dict[str, str]) -> tuple[str | None, str | None]:
    """The NCCL layer a failure happened in, from the files of its trail, and the trail line."""
    for name, what in LAYERS:
        for f, line in files.items():
            if f == name or f.endswith("/" + name):
                return what, line
    return None, None


def failure_causes(
    first: SocketFailure, iface_lines: list[str], ifname: tuple[str, str] | None
) -> list[Cause]:
    """Likely causes of a failed socket connection between nodes, most likely first.

    The variables are NCCL's (https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html:
    NCCL_SOCKET_IFNAME picks the interface for bootstrap and the socket transport).
    """
    err = (first.error or "").lower()
    peer = first.peer or "the peer"
    iface = Cause(
        "NCCL picked an interface whose address the other node cannot reach (a docker/virtual "
        "bridge, a management or IPoIB network not routed between the nodes)"
        + (f"; NCCL_SOCKET_IFNAME={ifname[0]}" if ifname else ""),
        "set NCCL_SOCKET_IFNAME to the interface of the network that joins the compute nodes "
        "(`ip -br addr` on each node; e.g. ib0 or the cluster Ethernet), the same on every node "
        "(site config network.nccl_socket_ifname)",
        iface_lines + ([ifname[1]] if ifname else []),
    )
    firewall = Cause(
        f"a firewall drops or rejects TCP to {peer}: NCCL listens on ephemeral ports, not a "
        "fixed one",
        "allow TCP between the compute nodes on all ports (host firewall, security group, "
        "container network policy); test with `nc -zv <peer address> <port>` from the node",
        [],
    )
    causes = [firewall, iface] if "refused" in err or "timed out" in err else [iface, firewall]
    if first.kind == "closed":
        causes.insert(
            0,
            Cause(
                f"{peer} closed the connection: the process there failed or exited first",
                "read that host's log for its first NCCL WARN; this error follows from it",
                [],
            ),
        )
    return causes
