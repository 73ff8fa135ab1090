"""hpcserve: serve a vLLM model across SLURM nodes and reach it from a laptop.

The Python API (docs/python-api.md)::

    import hpcserve
    job = hpcserve.submit("Qwen/Qwen3-8B", "meluxina", nodes=2)
    job.wait(timeout_s=1800)
    print(job.query("Hello"))
    job.cancel()

Its names are imported on first use (module ``__getattr__``), so ``import hpcserve`` and the
command line's cold start (``hpcserve render``) import neither paramiko nor requests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "plan": "hpcserve.client",
    "render": "hpcserve.client",
    "submit": "hpcserve.client",
    "dry_run": "hpcserve.client",
    "download": "hpcserve.client",
    "doctor": "hpcserve.client",
    "open_job": "hpcserve.client",
    "load_site": "hpcserve.client",
    "Job": "hpcserve.jobs.handle",
    "Jobs": "hpcserve.jobs.handle",
    "Endpoint": "hpcserve.jobs.handle",
    "CancelResult": "hpcserve.jobs.handle",
    "WaitTiming": "hpcserve.jobs.watch",
    "WaitResult": "hpcserve.jobs.watch",
    "JobStatus": "hpcserve.jobs.state",
    "JobRecord": "hpcserve.jobs.record",
    "Registry": "hpcserve.jobs.registry",
    "Site": "hpcserve.sites.schema",
    "HpcserveError": "hpcserve.errors",
    "UsageError": "hpcserve.errors",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # the same names for type checkers (redundant aliases mark re-exports)
    from hpcserve.client import doctor as doctor
    from hpcserve.client import download as download
    from hpcserve.client import dry_run as dry_run
    from hpcserve.client import load_site as load_site
    from hpcserve.client import open_job as open_job
    from hpcserve.client import plan as plan
    from hpcserve.client import render as render
    from hpcserve.client import submit as submit
    from hpcserve.errors import HpcserveError as HpcserveError
    from hpcserve.errors import UsageError as UsageError
    from hpcserve.jobs.handle import CancelResult as CancelResult
    from hpcserve.jobs.handle import Endpoint as Endpoint
    from hpcserve.jobs.handle import Job as Job
    from hpcserve.jobs.handle import Jobs as Jobs
    from hpcserve.jobs.record import JobRecord as JobRecord
    from hpcserve.jobs.registry import Registry as Registry
    from hpcserve.jobs.state import JobStatus as JobStatus
    from hpcserve.jobs.watch import WaitResult as WaitResult
    from hpcserve.jobs.watch import WaitTiming as WaitTiming
    from hpcserve.sites.schema import Site as Site


def __getattr__(name: str) -> object:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'hpcserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
