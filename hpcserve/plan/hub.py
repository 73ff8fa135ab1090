"""Fetch a model's ``config.json`` and ``model.safetensors.index.json`` from the Hugging Face Hub.

Only :func:`hpcserve.plan.modelinfo.locate_model` calls this, after the local places; it imports
``huggingface_hub`` here so that commands which never fetch do not pay for the import.
``hf_hub_download`` stores the files in the HF cache and honours ``HF_ENDPOINT`` and ``HF_TOKEN``
(or a stored ``hf auth login``); ``HF_HUB_OFFLINE`` is read here at each call. Errors are told
apart as ``huggingface_hub.utils.hf_raise_for_status`` classifies the hub's ``X-Error-Code``.
The token is handed to the library only, never put in a message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcserve.errors import HpcserveError, UsageError

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
DEFAULT_ENDPOINT = "https://huggingface.co"


def is_offline(env: Mapping[str, str]) -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set true, as ``huggingface_hub.constants``
    reads it."""
    value = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HubRequest:
    """One model on one hub, as ``env`` configures it."""

    model: str
    revision: str | None
    env: Mapping[str, str]
    cache_dir: Path

    @property
    def endpoint(self) -> str:
        return self.env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT

    def how_to_get(self, filename: str) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return (
            f"on a machine with internet run `hf download {self.model} {filename}{rev}` "
            "(it fills the HF cache), or pass --config-json PATH"
        )


@contextmanager
def _library_quiet() -> Iterator[None]:
    """Hold the library's own warnings (one per retry of a failed connection) for the call: the
    outcome is said in one line by :func:`_explain`."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download(req: HubRequest, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    with _library_quiet():
        path = hf_hub_download(
            req.model,
            filename,
            revision=req.revision,
            cache_dir=req.cache_dir,
            endpoint=req.env.get("HF_ENDPOINT") or None,
            token=req.env.get("HF_TOKEN") or None,
        )
    return Path(path)


def _gated_message(req: HubRequest) -> str:
    page = f"{req.endpoint.rstrip('/')}/{req.model}"
    if req.env.get("HF_TOKEN"):
        return (
            f"model {req.model!r} is gated and HF_TOKEN does not grant access: accept its licence "
            f"at {page} with the account the token belongs to"
        )
    return (
        f"model {req.model!r} is gated: accept its licence at {page}, then set HF_TOKEN "
        "to a read token of that account (or run `hf auth login`)"
    )


def _http_message(req: HubRequest, filename: str, err: Any) -> str:
    """The line for an HTTP error from the hub (``err`` a ``HfHubHTTPError``)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError) or status == 403:
        return _gated_message(req)
    if isinstance(err, RevisionNotFoundError):
        return f"model {req.model!r}: revision {req.revision!r} does not exist on {req.endpoint}"
    if isinstance(err, RepositoryNotFoundError) and status == 401:
        return (
            f"model {req.model!r} does not exist on {req.endpoint}, or is private: check the id; "
            "for a private or gated model set HF_TOKEN"
        )
    if isinstance(err, RepositoryNotFoundError):
        return f"model {req.model!r} does not exist on {req.endpoint}: check the id"
    return f"{req.endpoint} answered HTTP {status} for {req.model}/{filename}"


def missing_message(req: HubRequest, filename: str) -> str:
    """The line for a file that is not in the HF cache when the hub is out of reach."""
    cause = "HF_HUB_OFFLINE is set" if is_offline(req.env) else f"could not reach {req.endpoint}"
    return (
        f"no {filename} for model {req.model!r}: not in the HF cache ({req.cache_dir}) and "
        f"{cause}; {req.how_to_get(filename)}"
    )


def _explain(req: HubRequest, filename: str, err: Exception) -> HpcserveError:
    """One line saying what went wrong fetching ``filename`` and what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
    )

    if isinstance(err, LocalEntryNotFoundError):
        return UsageError(missing_message(req, filename))
    if isinstance(err, EntryNotFoundError):
        return UsageError(
            f"model {req.model!r} has no {filename} on {req.endpoint}; pass --config-json PATH"
        )
    if isinstance(err, HFValidationError):
        return UsageError(
            f"model {req.model!r}: not a local directory, and not a hub id (ORG/NAME)"
        )
    if isinstance(err, HfHubHTTPError):
        status = getattr(err.response, "status_code", 0) or 0
        cls = UsageError if 400 <= status < 500 else HpcserveError
        return cls(_http_message(req, filename, err))
    text = str(err)
    token = req.env.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return HpcserveError(f"fetching {filename} of {req.model} from {req.endpoint} failed: {text}")


def fetch_config(req: HubRequest) -> Path:
    """The cached path of the model's ``config.json``, downloaded when not cached yet.

    Offline (``HF_HUB_OFFLINE``), the caller has already looked in the cache: the miss is said
    without importing the library, whose offline switch is read once, at import.
    """
    if is_offline(req.env):
        raise UsageError(missing_message(req, CONFIG))
    try:
        return _download(req, CONFIG)
    except Exception as err:  # the library's boundary: every failure becomes one line
        raise _explain(req, CONFIG, err) from None


def fetch_index(req: HubRequest) -> Path | None:
    """The model's safetensors index, or None when it has none (single-file checkpoints) or it
    cannot be had: it only refines the weight estimate."""
    if is_offline(req.env):
        return None
    try:
        return _download(req, INDEX)
    except Exception:  # any failure: the estimate from the config stands
        return None
