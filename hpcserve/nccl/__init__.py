"""How NCCL traffic flows, read from NCCL_DEBUG=INFO logs (``hpcserve nccl``).

Pure logic, no I/O of its own beyond reading the streams it is handed:

* :mod:`~hpcserve.nccl.lines`: the line parser (an NCCL line, a connection line);
* :mod:`~hpcserve.nccl.facts`: the per-run model, bounded, one line at a time;
* :mod:`~hpcserve.nccl.scanner`: the fast reader of logs and byte streams (:class:`NcclScanner`);
* :mod:`~hpcserve.nccl.verdict` and :mod:`~hpcserve.nccl.causes`: the verdict rules;
* :mod:`~hpcserve.nccl.report`: the result (:class:`NcclReport`, the JSON of ``--json``);
* :mod:`~hpcserve.nccl.status`: the one-line summary for ``hpcserve status``.
"""

from hpcserve.nccl.lines import Conn, Line, net_kind, parse_connection, split_line
from hpcserve.nccl.report import Cause, CrossNode, NcclReport, NodeSummary
from hpcserve.nccl.scanner import NcclScanner, open_log, scan_lines, scan_paths, wrap_stream
from hpcserve.nccl.status import nccl_summary_for_status, one_line

__all__ = [
    "Cause",
    "Conn",
    "CrossNode",
    "Line",
    "NcclReport",
    "NcclScanner",
    "NodeSummary",
    "nccl_summary_for_status",
    "net_kind",
    "one_line",
    "open_log",
    "parse_connection",
    "scan_lines",
    "scan_paths",
    "split_line",
    "wrap_stream",
]
