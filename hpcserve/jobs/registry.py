"""The local job registry: one JSON record per submitted job under the XDG state directory.

Layout under the root (``$HPCSERVE_STATE_DIR``, else ``$XDG_STATE_HOME/hpcserve``, else
``~/.local/state/hpcserve``)::

    ROOT/registry.lock                 fcntl.flock'ed around every read-modify-write
    ROOT/jobs/SITE/JOB_ID.json         one JobRecord each (0600)
    ROOT/secrets/SITE/JOB_ID/KIND      secrets of one job, e.g. the API key (0600)

Directories are 0700 and files 0600. Records are written atomically (temporary file in the same
directory, fsync, rename), so a reader never sees half a record, and writers serialise on the
lock file, so concurrent ``hpcserve`` processes never lose each other's jobs.

A job is referred to by its job id, by ``SITE:JOB_ID`` (when two sites reuse an id), or by the
short name the user gave at submit (unique in the registry).

A record that cannot be read (truncated, not JSON: a full disk, an editor) is moved aside to
``JOB_ID.json.damaged-TIME`` next to it, under the lock, with one warning; the other records are
untouched, and a later reference to that job names the kept copy.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from hpcserve.errors import HpcserveError, UsageError
from hpcserve.jobs.record import JobRecord
from hpcserve.rules import check_job_name

_SAFE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
DAMAGED = ".damaged-"  # JOB_ID.json.damaged-YYYYmmddTHHMMSS: a record that could not be read


class RegistryWarning(UserWarning):
    """A registry record that could not be read was set aside (shown as one ``warning:`` line)."""


class _Damaged(Exception):
    """A record file that exists but holds no readable record."""


def default_root() -> Path:
    """The state directory the registry uses when none is given."""
    explicit = os.environ.get("HPCSERVE_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "hpcserve"
    return Path.home() / ".local" / "state" / "hpcserve"


def check_name(name: str) -> str:
    """Validate a user-given job name (:func:`hpcserve.rules.check_job_name`)."""
    return check_job_name(name)


def _safe(part: str, what: str) -> str:
    if not _SAFE_RE.match(part) or part in (".", ".."):
        raise UsageError(f"{what} {part!r} cannot be used as a file name in the registry")
    return part


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same dir, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Registry:
    """The user's submitted jobs, one JSON file each (see the module docstring)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self._held = 0  # how deep this process is inside :meth:`locked`

    # -- paths -------------------------------------------------------------------------------
    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def _record_path(self, site: str, job_id: str) -> Path:
        return self.jobs_dir / _safe(site, "site name") / f"{_safe(job_id, 'job id')}.json"

    def _ensure(self) -> None:
        _mkdir_private(self.root)
        _mkdir_private(self.jobs_dir)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (for read-modify-write sequences)."""
        self._ensure()
        if self._held:  # flock is per open file: this process holds it already
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        fd = os.open(self.root / "registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held = 1
            yield
        finally:
            self._held = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- reading -----------------------------------------------------------------------------
    def _load(self, path: Path) -> JobRecord | None:
        """The record in ``path``; None when it is not there; _Damaged when it is unreadable."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise _Damaged(str(e)) from e
        try:
            return JobRecord.from_dict(json.loads(text))
        except (ValueError, TypeError, AttributeError) as e:
            raise _Damaged(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e

    def _read(self, path: Path) -> JobRecord | None:
        """The record in ``path``, or None (vanished, or damaged and now set aside)."""
        try:
            return self._load(path)
        except _Damaged:
            self._set_aside(path)
            return None

    def _set_aside(self, path: Path) -> None:
        """Move a damaged record to ``JOB_ID.json.damaged-TIME`` (under the lock, after reading
        it again: a writer may have replaced it meanwhile) and warn once, in one line."""
        with self.locked():
            try:
                self._load(path)
                return  # readable now (or gone)
            except _Damaged as e:
                why = str(e)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            kept = path.with_name(f"{path.name}{DAMAGED}{stamp}")
            try:
                os.replace(path, kept)
            except OSError as e:
                kept_note = f"it could not be moved aside ({e.strerror or e})"
            else:
                kept_note = f"kept as {kept}"
        site, job_id = path.parent.name, path.name.removesuffix(".json")
        warnings.warn(
            f"the registry record of job {site}:{job_id} ({path}) is unreadable ({why}): "
            f"{kept_note}; the other records are intact and the job itself is untouched",
            RegistryWarning,
            stacklevel=2,
        )

    def damaged(self, job_id: str) -> builtins.list[Path]:
        """Kept copies of unreadable records of ``job_id`` (any site), oldest first."""
        if not self.jobs_dir.is_dir() or not _SAFE_RE.match(job_id):
            return []
        return sorted(self.jobs_dir.glob(f"*/{job_id}.json{DAMAGED}*"))

    def list(self) -> list[JobRecord]:
        """All records, oldest submission first (an unreadable one is set aside, with a
        :class:`RegistryWarning`)."""
        if not self.jobs_dir.is_dir():
            return []
        out = []
        for path in sorted(self.jobs_dir.glob("*/*.json")):
            rec = self._read(path)
            if rec is not None:
                out.append(rec)
        out.sort(key=lambda r: (r.submitted_at, r.site, r.job_id))
        return out

    def find(self, ref: str) -> JobRecord | None:
        """The record ``ref`` names (name, id or SITE:ID), or None; UsageError if ambiguous."""
        ref = ref.strip()
        records = self.list()
        if ":" in ref:
            site, _, job_id = ref.partition(":")
            for r in records:
                if r.site == site and r.job_id == job_id:
                    return r
        for r in records:
            if r.name is not None and r.name == ref:
                return r
        matches = [r for r in records if r.job_id == ref]
        if len(matches) > 1:
            sites = ", ".join(f"{r.site}:{r.job_id}" for r in matches)
            raise UsageError(f"job id {ref} is known on several sites; name one of: {sites}")
        return matches[0] if matches else None

    def get(self, ref: str) -> JobRecord:
        """The record ``ref`` names; UsageError when there is none."""
        rec = self.find(ref)
        if rec is None:
            kept = self.damaged(ref.partition(":")[2] or ref)
            if kept:
                raise HpcserveError(
                    f"the registry record of job {ref} was unreadable and is kept as "
                    f"{kept[-1]}; the job itself is untouched (its logs are in its job "
                    "directory on the cluster)"
                )
            known = self.list()
            hint = (
                "`hpcserve list` shows the known jobs"
                if known
                else "no jobs are registered yet (`hpcserve submit` adds them)"
            )
            raise UsageError(f"no job {ref!r} in the registry ({self.root}); {hint}")
        return rec

    # -- writing -----------------------------------------------------------------------------
    def _write(self, rec: JobRecord) -> None:
        path = self._record_path(rec.site, rec.job_id)
        _mkdir_private(path.parent)
        atomic_write(path, json.dumps(rec.to_dict(), indent=2, sort_keys=True) + "\n")

    def check_free_name(self, name: str) -> None:
        """UsageError unless ``name`` is a valid job name that no registered job uses."""
        check_name(name)
        for other in self.list():
            if other.name == name:
                raise UsageError(
                    f"the name {name!r} is already used by job {other.site}:{other.job_id}; "
                    f"choose another --name or `hpcserve cancel --forget {name}` first"
                )

    def add(self, rec: JobRecord) -> None:
        """Register a new job; UsageError if its name is taken or the job is already known."""
        if rec.name is not None:
            check_name(rec.name)
        with self.locked():
            path = self._record_path(rec.site, rec.job_id)
            if path.exists():
                raise UsageError(f"job {rec.site}:{rec.job_id} is already in the registry")
            if rec.name is not None:
                self.check_free_name(rec.name)
            self._write(rec)

    def add_submitted(self, rec: JobRecord) -> JobRecord | None:
        """Register a job the scheduler has just accepted; returns the stale record it replaced.

        Records are keyed ``SITE:JOB_ID``. slurmctld gives a new job only an id that no job it
        holds has (``_set_job_id`` in slurmctld's job_mgr.c skips ids in use), so a record already
        under that key names a job the scheduler no longer knows: its id came round again after
        MaxJobId wrapped to FirstJobId, or after the controller lost its StateSaveLocation (a
        rebuilt cluster, a lab brought up afresh). That record is replaced, with its secrets;
        refusing it would leave the running job unrecorded. A name held by another job is still
        refused (``submit`` checks it before ``sbatch``).
        """
        if rec.name is not None:
            check_name(rec.name)
        with self.locked():
            path = self._record_path(rec.site, rec.job_id)
            reused = path.exists()
            stale = self._read(path) if reused else None
            if rec.name is not None and (stale is None or stale.name != rec.name):
                self.check_free_name(rec.name)
            if reused:
                self._forget_secrets(rec.site, rec.job_id)
            self._write(rec)
            return stale

    def update(self, rec: JobRecord) -> None:
        """Replace a known job's record (e.g. once endpoint.json gave the head address)."""
        with self.locked():
            if not self._record_path(rec.site, rec.job_id).exists():
                raise UsageError(f"job {rec.site}:{rec.job_id} is not in the registry")
            self._write(rec)

    def modify(self, ref: str, change: Callable[[JobRecord], None]) -> JobRecord:
        """Read, change and write one record under the lock; returns the new record."""
        with self.locked():
            rec = self.get(ref)
            change(rec)
            self._write(rec)
            return rec

    def remove(self, job_id: str) -> JobRecord:
        """Forget a job (by id, SITE:ID or name) and its local secrets; returns the record."""
        with self.locked():
            rec = self.get(job_id)
            with contextlib.suppress(FileNotFoundError):
                self._record_path(rec.site, rec.job_id).unlink()
            self._forget_secrets(rec.site, rec.job_id)
            return rec

    def _forget_secrets(self, site: str, job_id: str) -> None:
        secrets = self.root / "secrets" / site / job_id
        if secrets.is_dir():
            shutil.rmtree(secrets, ignore_errors=True)

    def prune(
        self, older_than_s: float, keep: Callable[[JobRecord], bool] = lambda r: False
    ) -> builtins.list[JobRecord]:
        """Remove records submitted more than ``older_than_s`` ago unless ``keep(rec)``.

        ``keep`` lets the caller spare jobs the scheduler still lists.
        """
        cutoff = time.time() - older_than_s
        victims = [r for r in self.list() if r.submitted_at < cutoff and not keep(r)]
        removed = []
        for r in victims:
            with contextlib.suppress(UsageError):
                removed.append(self.remove(f"{r.site}:{r.job_id}"))
        return removed

    # -- secrets -----------------------------------------------------------------------------
    def secret_path(self, job_id: str, kind: str, site: str | None = None) -> Path:
        """A 0600 file (created empty if missing) for one secret of a job, e.g. ``api_key``.

        ``site`` defaults to the site of the registered job ``job_id``; pass it when the job is
        not registered yet.
        """
        if site is None:
            rec = self.find(job_id)
            site = rec.site if rec is not None else "unregistered"
            job_id = rec.job_id if rec is not None else job_id
        self._ensure()
        d = self.root / "secrets"
        for part in (_safe(site, "site name"), _safe(job_id, "job id")):
            _mkdir_private(d)
            d = d / part
        _mkdir_private(d)
        path = d / _safe(kind, "secret kind")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        return path
