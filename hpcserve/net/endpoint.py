"""A base URL for a job's API that works from here, whatever "here" is.

:func:`api_base` yields, in order of preference: the job's running background tunnel; the head
address itself when it answers a TCP connect within a second (on the login node, or in the local
lab); otherwise a tunnel opened through the site's login node for the duration of the block.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator

from hpcserve.errors import HpcserveError
from hpcserve.jobs.record import JobRecord
from hpcserve.sites.schema import Site


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connect to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def remote_of(record: JobRecord) -> tuple[str, int]:
    """The job's head ``(addr, api_port)``, or a sentence saying it is not known yet."""
    addr, port = record.head_addr, record.api_port
    if not addr or not port:
        phase = (record.extra or {}).get("phase")
        where = f" (phase: {phase})" if phase else ""
        raise HpcserveError(
            f"job {record.job_id} has no API endpoint yet{where}: it is published once the job "
            "runs; check `hpcserve status` or `hpcserve wait`"
        )
    return str(addr), int(port)


def api_key(record: JobRecord) -> str | None:
    """The job's API key from its 0600 key file (None when the job has none)."""
    path = record.api_key_file
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError as e:
        raise HpcserveError(f"cannot read the job's API key file {path}: {e.strerror}") from e


def tunnel_key(record: JobRecord) -> str:
    """The name of a job's background tunnel: its id; a service's: its first job's id (the
    tunnel stays while the chain moves on)."""
    from hpcserve.service.remote import service_info

    info = service_info(record)
    return info.first if info is not None else record.job_id


def _head_of(record: JobRecord, site: Site | None) -> tuple[str, int]:
    """The head to reach: the job's, or for a service the head of the job serving now."""
    from hpcserve.service.remote import service_info

    if service_info(record) is None or site is None:
        return remote_of(record)
    from hpcserve.cluster.connect import executor_for
    from hpcserve.service.follow import serving_now

    current = serving_now(record, lambda: executor_for(site))
    return current[1], current[2]


@contextlib.contextmanager
def api_base(record: JobRecord, site: Site | None, *, quiet: bool = False) -> Iterator[str]:
    """Yield a base URL (``http://host:port``) for ``record``'s API reachable from here.

    Without ``site`` no tunnel can be opened: then an unreachable head is an error.
    """
    from hpcserve.net import tunnel

    state = tunnel.read_state(tunnel_key(record))
    if state is not None and state.status == "up":
        yield state.url
        return
    addr, port = _head_of(record, site)
    if reachable(addr, port):
        yield f"http://{addr}:{port}"
        return
    if site is None:
        raise HpcserveError(
            f"job {record.job_id}'s API at {addr}:{port} does not answer from here, and no site "
            "is known to tunnel through"
        )
    from hpcserve.cluster import ssh

    login = ssh.login_from_site(site)

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    fwd = tunnel.Forwarder(lambda: ssh.connect(login), (addr, port), 0, log=log)
    with fwd:
        log(f"opened a tunnel for this command: {fwd.url} -> {addr}:{port} via {login.host}")
        yield fwd.url
