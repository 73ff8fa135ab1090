"""The small input rules every command applies alike: job name, SLURM time, DURATION, env-var name,
dtype.

Each rule is one function here; ``plan``, ``render``, ``submit``, the site loader, the registry
and the scheduler parsers call it instead of keeping their own pattern.
"""

from __future__ import annotations

import re

from hpcserve.errors import UsageError

# --------------------------------------------------------------------------- job name

_JOB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")


def is_job_name(name: str) -> bool:
    """A letter, then up to 63 letters, digits, '.', '_' or '-'.

    The first character is a letter so that a name can never be mistaken for a SLURM job id
    where commands accept either.
    """
    return bool(_JOB_NAME.match(name))


def check_job_name(name: str, what: str = "job name") -> str:
    """``name`` if :func:`is_job_name`, else a UsageError naming ``what`` (e.g. ``--name``)."""
    if not is_job_name(name):
        raise UsageError(
            f"{what} {name!r} is not valid: start with a letter, then up to 63 letters, "
            "digits, '.', '_' or '-'"
        )
    return name


# --------------------------------------------------------------------------- SLURM time

# sbatch(1) --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds"; Slurm's time_str2secs
# (src/common/parse_time.c) also takes UNLIMITED/INFINITE in any case for "no limit".
_TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+))?(?::(\d+))?|(\d+)(?::(\d+))?(?::(\d+))?)$")
UNLIMITED = ("UNLIMITED", "INFINITE")


def parse_slurm_time(text: str) -> int | None:
    """Seconds in a SLURM time limit; None for UNLIMITED/INFINITE; ValueError if it is none.

    A bare number is minutes and two fields are minutes:seconds (sbatch(1)), so ``"4:31"`` is
    271 s; with a day part the fields are hours, minutes, seconds.
    """
    text = text.strip()
    if text.upper() in UNLIMITED:
        return None
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"not a SLURM time: {text!r}")
    days, dh, dm, ds, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:
        h, mi, s = dh or 0, dm or 0, ds or 0
    elif c is not None:
        days, h, mi, s = 0, a or 0, b or 0, c
    else:
        days, h, mi, s = 0, 0, a or 0, b or 0
    return ((days * 24 + h) * 60 + mi) * 60 + s


def is_slurm_time(text: str) -> bool:
    """Whether sbatch accepts ``text`` as ``--time`` (see :func:`parse_slurm_time`)."""
    try:
        parse_slurm_time(text)
    except ValueError:
        return False
    return True


def check_slurm_time(text: str, what: str = "--time") -> str:
    """``text`` unchanged when it is a SLURM time, else a UsageError naming ``what``."""
    if not is_slurm_time(str(text)):
        raise UsageError(
            f"{what} {text!r}: expected a SLURM time such as 30 (minutes), 01:00:00 or "
            "2-00:00:00 ([D-]HH:MM:SS, MM:SS or minutes)"
        )
    return text


def format_slurm_time(seconds: int | float) -> str:
    """``D-HH:MM:SS`` (days only when there are any): a form sbatch and squeue both use."""
    s = max(int(seconds), 0)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


# --------------------------------------------------------------------------- DURATION

# ``--idle-stop`` and ``--until``: numbers with a unit each, largest first, e.g. 90s, 10m, 1h30m,
# 2d. A unit is required: a bare number would read as seconds here and minutes in ``--time``.
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration_text(text: str) -> int:
    """Seconds in a DURATION such as ``90s``, ``10m``, ``1h30m`` or ``2d``; ValueError if none."""
    m = _DURATION.match(text.strip().lower())
    if not m or not any(m.groups()):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(g) * unit for g, (_, unit) in zip(m.groups(), _UNITS, strict=True) if g)


def check_duration(text: str, what: str = "--idle-stop") -> int:
    """Seconds in ``text`` (:func:`parse_duration_text`), at least 1; else a one-line UsageError."""
    try:
        seconds = parse_duration_text(str(text))
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise UsageError(
            f"{what} {text!r}: expected a duration such as 90s, 10m, 1h30m or 2d "
            "(a number and a unit, s, m, h or d)"
        )
    return seconds


def format_duration_text(seconds: int | float) -> str:
    """``seconds`` in the DURATION form :func:`parse_duration_text` reads: 90 -> ``1m30s``."""
    left = max(int(seconds), 0)
    parts = []
    for name, unit in _UNITS:
        count, left = divmod(left, unit)
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts) or "0s"


def parse_until(text: str, now: float, what: str = "--until") -> float:
    """The Unix time ``--until`` names: a DURATION from ``now`` (``3d``), or an ISO 8601 date or
    date and time (``2026-12-24``, ``2026-12-24T18:00``; local time unless it has an offset).
    A time that is not in the future is a UsageError."""
    import datetime as dt

    text = str(text).strip()
    try:
        when = now + parse_duration_text(text)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(
                f"{what} {text!r}: expected a date (2026-12-24), a date and time "
                "(2026-12-24T18:00) or a duration from now (3d, 12h)"
            ) from None
        when = parsed.timestamp()
    if when <= now:
        raise UsageError(f"{what} {text!r}: that time has already passed")
    return when


# --------------------------------------------------------------------------- env-var name

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_env_name(name: str) -> bool:
    """A portable environment variable name: a letter or '_', then letters, digits or '_'.

    POSIX (XBD 8.1) names of the shell: what ``export NAME=...`` and ``${NAME}`` accept.
    """
    return bool(_ENV_NAME.match(name))


# --------------------------------------------------------------------------- dtype

# vLLM's ``--dtype`` choices: ``ModelDType`` in vllm/config/model.py; ``half`` and ``float`` are
# aliases (``_STR_DTYPE_TO_TORCH_DTYPE``: half -> float16, float -> float32).
DTYPES: tuple[str, ...] = ("auto", "half", "float16", "bfloat16", "float", "float32")
DTYPE_ALIASES: dict[str, str] = {"half": "float16", "float": "float32"}

# vLLM's ``--kv-cache-dtype`` choices common to recent releases (``CacheDType`` in
# vllm/config/cache.py); anything newer still passes through ``--vllm-arg``.
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc")


def resolve_dtype(dtype: str) -> str:
    """The canonical name of a ``--dtype`` value (``half`` -> ``float16``); UsageError if unknown.

    ``auto`` stays ``auto``: what it means depends on the checkpoint (the planner decides).
    """
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPE_ALIASES.get(dtype, dtype)


def serving_dtype(
    dtype: str, checkpoint: str, supported: tuple[str, ...], device: str = "GPU"
) -> tuple[str, str | None]:
    """The dtype vLLM serves in, and a note when it is not the checkpoint's: ``(dtype, note)``.

    ``dtype`` is a ``--dtype`` word (:func:`resolve_dtype`), ``checkpoint`` the config's
    ``torch_dtype``, ``supported`` the device's dtypes, preferred first. As
    ``_resolve_auto_dtype`` in vLLM's ``vllm/config/model.py``: ``auto`` downcasts float32 to
    the preferred dtype and keeps a supported checkpoint dtype, else takes the preferred one
    (vLLM warns); an explicit bfloat16 the device lacks is refused as
    ``CudaPlatform.check_if_supports_dtype`` refuses it.
    """
    word = resolve_dtype(dtype)
    checkpoint = DTYPE_ALIASES.get(checkpoint, checkpoint)
    if word != "auto":
        if word not in supported:
            raise UsageError(
                f"--dtype {dtype}: {device} cannot run {word} ({word} needs compute capability "
                "8.0); use --dtype half (float16)"
            )
        return word, None
    if checkpoint not in ("float16", "bfloat16", "float32"):
        return "auto", None  # not a dtype vLLM compares: the planner keeps its own reading
    if checkpoint == "float32":
        return supported[0], None
    if checkpoint in supported:
        return checkpoint, None
    return supported[0], (
        f"dtype auto: {device} has no {checkpoint}, so vLLM serves this {checkpoint} "
        f"checkpoint in {supported[0]} (pass --dtype {supported[0]} to say so)"
    )
