"""A tunnel that follows a service: same local port and key, the head of whichever job serves.

:class:`ChainFollower` reads the service's ``current`` file (``JOB ADDR PORT RESTART``, written
by the job that became ready) every :data:`POLL_S` seconds through its own executor and calls
``retarget`` when the job, its restart or its address changes; the forward
(:meth:`hpcserve.net.tunnel.Forwarder.retarget`) sends new requests there and lets those in
flight finish on the old head, which drains before it exits (``lead.SWITCH_S`` after the
handover at the earliest, so followers polling this often have moved by then).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from hpcserve.cluster.executor import Executor
from hpcserve.errors import HpcserveError, RemoteError
from hpcserve.jobs.record import JobRecord
from hpcserve.service import chain
from hpcserve.service.remote import Service, service_info

POLL_S = 2.0

Current = tuple[str, str, int, int]  # job, addr, port, restart
ExecutorOpener = Callable[[], Executor]


def read_current(record: JobRecord, executor: Executor) -> Current | None:
    """What the ``current`` file of ``record``'s service says, or None."""
    from hpcserve.cluster.slurm import Slurm

    return Service(record, executor, Slurm(executor)).current()


def serving_now(record: JobRecord, opener: ExecutorOpener) -> Current:
    """The job serving the service now and its head; HpcserveError when none does yet."""
    executor = opener()
    try:
        current = read_current(record, executor)
    finally:
        executor.close()
    if current is None:
        info = service_info(record)
        where = f" ({info.dir}/{chain.CURRENT} is not there yet)" if info else ""
        raise HpcserveError(
            f"service {record.name or record.job_id} has no job serving yet{where}: check "
            "`hpcserve status` or `hpcserve wait`"
        )
    return current


class ChainFollower:
    """Re-targets a forward to the service's current head (see the module)."""

    def __init__(
        self,
        record: JobRecord,
        opener: ExecutorOpener,
        retarget: Callable[[tuple[str, int]], bool],
        note: Callable[[str], None],
        *,
        poll_s: float = POLL_S,
    ) -> None:
        self.record = record
        self.opener = opener
        self.retarget = retarget
        self.note = note
        self.poll_s = poll_s
        self.seen: Current | None = None
        self.moves = 0
        self._executor: Executor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.record.name or self.record.job_id

    def look(self) -> Current | None:
        """One look at the ``current`` file; re-target when it names another head."""
        try:
            if self._executor is None:
                self._executor = self.opener()
            current = read_current(self.record, self._executor)
        except (HpcserveError, OSError):
            self._drop_executor()
            return self.seen
        if current is None or current == self.seen:
            return self.seen
        before, self.seen = self.seen, current
        job, addr, port, restart = current
        if self.retarget((addr, port)) or before is not None:
            self.moves += 1
            again = f" (restart {restart})" if restart else ""
            self.note(
                f"service {self.name}: job {job}{again} serves now at {addr}:{port}; new "
                "requests go there, those in flight finish where they are"
            )
        return current

    def _drop_executor(self) -> None:
        if self._executor is not None:
            with contextlib.suppress(HpcserveError, RemoteError, OSError):
                self._executor.close()
            self._executor = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.look()

    def start(self, first: Current | None = None) -> ChainFollower:
        """Follow in a background thread (``first``: what the tunnel was opened to)."""
        self.seen = first
        self._thread = threading.Thread(target=self._run, daemon=True, name="service-follow")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._drop_executor()
