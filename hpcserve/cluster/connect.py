"""Which executor reaches a site's scheduler: this machine, or SSH to its first login host."""

from __future__ import annotations

import shutil

from hpcserve.cluster.executor import Executor, LocalExecutor
from hpcserve.errors import UsageError
from hpcserve.sites.schema import Site


def submits_locally(site: Site) -> bool:
    """True when ``sbatch`` runs on this machine for ``site``."""
    mode = site.scheduler.submit
    return mode == "local" or (mode == "auto" and shutil.which("sbatch") is not None)


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
