"""Which executor reaches a site's scheduler: this machine, or SSH to its first login host."""

from __future__ import annotations

import fnmatch
import shutil
import socket

from hpcserve.cluster.executor import Executor, LocalExecutor
from hpcserve.errors import UsageError
from hpcserve.sites.schema import Site


def on_login_node(site: Site, hostname: str | None = None) -> bool:
    """True when this machine (``hostname``, default its own) matches one of the site's
    ``scheduler.login_hostnames`` (full name or first label)."""
    name = (hostname if hostname is not None else socket.gethostname()).lower()
    names = {name, name.split(".", 1)[0]}
    patterns = [p.lower() for p in site.scheduler.login_hostnames]
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def submits_locally(site: Site, hostname: str | None = None) -> bool:
    """True when ``sbatch`` runs on this machine for ``site``.

    ``auto``: a site with login hosts submits through the first of them unless this machine is
    one of its login nodes (:func:`on_login_node`), never to whatever ``sbatch`` is on PATH; a
    site without login hosts submits here when ``sbatch`` is on PATH.
    """
    mode = site.scheduler.submit
    if mode != "auto":
        return mode == "local"
    if site.login:
        return on_login_node(site, hostname)
    return shutil.which("sbatch") is not None


def executor_for(site: Site) -> Executor:
    """LocalExecutor when the site submits locally, else an SSH executor to its first login host.

    paramiko is imported only here, and only for remote sites.
    """
    if submits_locally(site):
        return LocalExecutor()
    if not site.login:
        raise UsageError(
            f"site {site.name}: sbatch is not on PATH here and the site has no login host "
            f"(scheduler.submit is {site.scheduler.submit!r})"
        )
    from hpcserve.cluster.ssh import SshExecutor  # lazy: paramiko

    executor: Executor = SshExecutor(site)
    return executor


def expand_home(path: str, home: str) -> str:
    """``~`` or ``~/x`` against ``home``; other paths unchanged."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return home.rstrip("/") + path[1:]
    return path
