"""A service's chain on the cluster, read and changed through an executor.

A service is registered like a job (its name, the first job's id), with
``record.extra["service"] = {"dir": SERVICE_DIR, "first": FIRST_JOB_ID}``; the chain itself lives
in ``SERVICE_DIR`` (:mod:`hpcserve.service.chain`), so every client that reaches the cluster sees
the same one. :class:`Service` reads it, says which job is current, and cancels every job of the
chain and nothing else; :func:`start_chain` writes the first lines of a new one.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from hpcserve.cluster.executor import Executor
from hpcserve.cluster.slurm import SchedJob, Slurm
from hpcserve.errors import RemoteError
from hpcserve.jobs.record import JobRecord
from hpcserve.service import chain
from hpcserve.service.view import ChainView

KEY = "service"  # JobRecord.extra[KEY] of a service

# Appends each argument as one line, stamped with the cluster's clock (as the launcher does).
_APPEND = 'f=$1; shift; for l in "$@"; do printf "%s %s\\n" "$(date +%s)" "$l" >>"$f"; done'


@dataclass(frozen=True)
class ServiceInfo:
    """Where a service's chain is, and its first job."""

    dir: str
    first: str


def service_info(rec: JobRecord) -> ServiceInfo | None:
    """The service a registry record stands for, or None for a plain job."""
    data = rec.extra.get(KEY) if rec.extra else None
    if not isinstance(data, dict) or not data.get("dir"):
        return None
    return ServiceInfo(str(data["dir"]), str(data.get("first") or rec.job_id))


def mark_service(rec: JobRecord, service_dir: str) -> JobRecord:
    """``rec`` (the first job's) as the record of the service in ``service_dir``."""
    extra = {**rec.extra, KEY: {"dir": service_dir, "first": rec.job_id}}
    return replace(rec, job_dir=job_dir(service_dir, rec.job_id), extra=extra)


def job_dir(service_dir: str, job_id: str) -> str:
    """The directory of one job of the chain."""
    return posixpath.join(service_dir, chain.JOBS_DIR, job_id)


def append_events(executor: Executor, path: str, events: Sequence[str]) -> None:
    """Append ``events`` (``"KIND JOB KEY=VALUE..."``) to the chain log at ``path``."""
    res = executor.run(["bash", "-c", _APPEND, "hpcserve-chain", path, *events], timeout=30)
    if not res.ok:
        raise RemoteError(f"cannot write the chain log {path}: {res.describe()}")


def start_chain(
    executor: Executor, service_dir: str, *, name: str, job_id: str, until: float | None
) -> None:
    """The first lines of a service's chain log: the service, and its first job submitted."""
    head = f"service {job_id} name={name}" + (f" until={int(until)}" if until else "")
    append_events(
        executor, posixpath.join(service_dir, chain.LOG), [head, f"submitted {job_id} by=user"]
    )


class Service:
    """One service's chain through ``executor`` (see the module)."""

    def __init__(self, record: JobRecord, executor: Executor, scheduler: Slurm) -> None:
        info = service_info(record)
        if info is None:
            raise ValueError(f"job {record.job_id} is not a service")
        self.record = record
        self.info = info
        self.executor = executor
        self.scheduler = scheduler

    @property
    def name(self) -> str:
        return self.record.name or self.info.first

    def path(self, name: str) -> str:
        return posixpath.join(self.info.dir, name)

    def _read(self, name: str) -> str:
        try:
            return self.executor.read_text(self.path(name))
        except (OSError, RemoteError):
            return ""

    def read(self) -> chain.ChainState:
        """The chain as its log says now (empty before the first line is written)."""
        return chain.fold(chain.parse_log(self._read(chain.LOG)))

    def current(self) -> tuple[str, str, int, int] | None:
        """``(job, addr, port, restart)`` of the job serving now, from the ``current`` file."""
        return chain.parse_current(self._read(chain.CURRENT))

    def job_record(self, job_id: str) -> JobRecord:
        """A record for one job of the chain (not stored: the registry keeps the service's)."""
        if job_id == self.record.job_id:
            return self.record
        return replace(
            self.record,
            job_id=job_id,
            job_dir=job_dir(self.info.dir, job_id),
            head_addr=None,
            head_host=None,
            api_port=None,
            master_port=None,
            extra={KEY: self.record.extra[KEY]},
        )

    def focus(self, state: chain.ChainState | None = None) -> str:
        """The job to look at: the current one, else the next one (unless the chain was
        stopped), else the one that served last, else the last one."""
        st = state if state is not None else self.read()
        ids = st.job_ids()
        following = st.next_job if st.stopped is None else None
        return st.current or following or st.last_current or (ids[-1] if ids else self.info.first)

    def view(self) -> ChainView:
        """The chain with one scheduler query for all its jobs."""
        st = self.read()
        ids = st.job_ids() or [self.info.first]
        sched = self.scheduler.query(ids)
        focus = sched.get(self.focus(st))
        return ChainView(self.name, st, sched, focus.time_limit_s if focus else None)

    def stop(self, cause: str) -> None:
        """Mark the chain stopped: no job of it submits another (the launcher checks)."""
        self.executor.write_text(self.path(chain.STOP), f"{cause} user\n", 0o600)
        append_events(self.executor, self.path(chain.LOG), [f"stopped user cause={cause}"])

    def cancel(
        self,
        timeout_s: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> tuple[list[str], dict[str, SchedJob]]:
        """Stop the chain, scancel each of its jobs still queued or running (a successor
        submitted meanwhile too) and wait until none is; ``(cancelled ids, last states)``."""
        self.stop("cancel")
        start = clock()
        cancelled: list[str] = []
        while True:
            ids = self.read().job_ids() or [self.info.first]
            states = self.scheduler.query(ids)
            active = [j for j in ids if states[j].active]
            fresh = [j for j in active if j not in cancelled]
            for job in fresh:
                self.scheduler.cancel(job)
            cancelled += fresh
            if not active:
                return cancelled, states
            if clock() - start > timeout_s:
                raise RemoteError(
                    f"scancel sent, but after {timeout_s:g} s jobs {', '.join(active)} of "
                    f"service {self.name} are still in the queue"
                )
            sleep(1.0)
