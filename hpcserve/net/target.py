"""What ``tunnel``/``query``/``chat``/``bench`` talk to: a registered job, or a bare ``--url``.

:func:`resolve` applies the one rule for the ``JOB`` / ``--url`` pair; :func:`api_key_for` picks
the API key (``--api-key-file``, else the job's key file, else ``$HPCSERVE_API_KEY`` for a bare
URL); :func:`open_client` yields an API client for a base URL that works from here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpcserve.errors import UsageError
from hpcserve.jobs.record import JobRecord
from hpcserve.sites.schema import Site

if TYPE_CHECKING:
    from hpcserve.net.api import Client


@dataclass
class Target:
    """A job from the registry (``record`` and its ``site``), or a bare ``url``.

    ``key`` names the target in state files: the job id, ``url``, or ``remote-ADDR-PORT``.
    """

    key: str
    record: JobRecord | None = None
    site: Site | None = None
    url: str | None = None

    @property
    def phase(self) -> str | None:
        """The job's last known server phase (for "not ready yet" messages)."""
        extra = self.record.extra if self.record is not None else None
        phase = (extra or {}).get("phase")
        return str(phase) if phase else None


def lookup_job(ref: str) -> tuple[JobRecord, Site]:
    """The registered job ``ref`` names (id or name) and its site (UsageError when unknown)."""
    from hpcserve.jobs.registry import Registry
    from hpcserve.sites.loader import load_site

    rec = Registry().get(ref)
    return rec, load_site(rec.site)


def job_target(ref: str) -> Target:
    """The :class:`Target` of registered job ``ref``."""
    rec, site = lookup_job(ref)
    return Target(key=rec.job_id, record=rec, site=site)


def resolve(job: str | None, url: str | None) -> Target:
    """``--url`` (``http(s)://HOST:PORT``, a trailing ``/v1`` dropped) wins over ``JOB``; one of
    them is needed."""
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must look like http://HOST:PORT, not {url!r}")
        return Target(key="url", url=url.rstrip("/").removesuffix("/v1"))
    if not job:
        raise UsageError("name a job (id or name from `hpcserve list`) or give --url")
    return job_target(job)


def read_key_file(path: str) -> str | None:
    """The key in ``--api-key-file`` (None when the file is empty)."""
    try:
        with open(os.path.expanduser(path)) as f:
            return f.read().strip() or None
    except OSError as e:
        raise UsageError(f"cannot read --api-key-file {path}: {e.strerror}") from e


def api_key_for(t: Target, api_key_file: str | None) -> str | None:
    """``--api-key-file``, else the job's own key, else ``$HPCSERVE_API_KEY`` (bare URL)."""
    if api_key_file:
        return read_key_file(api_key_file)
    if t.record is not None:
        from hpcserve.net.endpoint import api_key

        return api_key(t.record)
    return os.environ.get("HPCSERVE_API_KEY") or None


@contextlib.contextmanager
def base_url(t: Target) -> Iterator[str]:
    """The target's API base (``http://host:port``): the URL itself, or the job's endpoint as
    :func:`hpcserve.net.endpoint.api_base` reaches it (tunnelling for the block if needed)."""
    if t.url:
        yield t.url
        return
    from hpcserve.net.endpoint import api_base

    assert t.record is not None  # resolve() gives a job target when there is no URL
    with api_base(t.record, t.site) as base:
        yield base


@contextlib.contextmanager
def open_client(t: Target, api_key_file: str | None) -> Iterator[Client]:
    """An API :class:`~hpcserve.net.api.Client` for the target, open for the block."""
    from hpcserve.net.api import Client

    with base_url(t) as base:
        yield Client(base, api_key_for(t, api_key_file), phase=t.phase)


def parse_remote(text: str) -> tuple[str, int]:
    """``--remote HOST:PORT`` (``[v6]:PORT`` too) as ``(host, port)``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--remote must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)
