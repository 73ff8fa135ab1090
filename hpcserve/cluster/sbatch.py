"""``#SBATCH`` directives, the submitit way: the valid options are the parameters of ONE function.

:func:`sbatch_directives` is the single source of truth. ``--sbatch-arg KEY=VALUE`` is checked
against its signature (:func:`parse_sbatch_args`), so an unknown key fails with the list of valid
ones, and site ``scheduler.extra_sbatch`` lines are appended verbatim after a safety check.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from hpcserve.errors import UsageError
from hpcserve.rules import check_slurm_time


def sbatch_directives(
    *,
    job_name: str,
    nodes: int,
    time: str,
    output: str | None = None,
    chdir: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    constraint: str | None = None,
    reservation: str | None = None,
    gres: str | None = None,
    gpus_per_node: int | None = None,
    cpus_per_task: int | None = None,
    mem: str | None = None,
    exclusive: bool = False,
    ntasks_per_node: int = 1,
    signal: str | None = None,
    mail_type: str | None = None,
    mail_user: str | None = None,
    comment: str | None = None,
    licenses: str | None = None,
    hint: str | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """The ``#SBATCH`` option strings (without ``#SBATCH``), e.g. ``['--nodes=2', ...]``.

    ``None``/``False`` leave an option out; ``extra`` lines (site ``extra_sbatch``) come last,
    verbatim, after :func:`check_extra_line`.
    """
    values: dict[str, Any] = {
        "job_name": job_name,
        "nodes": nodes,
        "ntasks_per_node": ntasks_per_node,
        "time": time,
        "output": output,
        "chdir": chdir,
        "partition": partition,
        "account": account,
        "qos": qos,
        "constraint": constraint,
        "reservation": reservation,
        "gres": gres,
        "gpus_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task,
        "mem": mem,
        "exclusive": exclusive,
        "signal": signal,
        "mail_type": mail_type,
        "mail_user": mail_user,
        "comment": comment,
        "licenses": licenses,
        "hint": hint,
    }
    check_slurm_time(str(time))
    out = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        opt = "--" + key.replace("_", "-")
        if value is True:
            out.append(opt)
        else:
            out.append(f"{opt}={_directive_value(key, value)}")
    for line in extra:
        out.append(check_extra_line(line))
    return out


def valid_keys() -> list[str]:
    """The option names :func:`sbatch_directives` accepts (``extra`` excluded), dash-spelt."""
    params = inspect.signature(sbatch_directives).parameters
    return sorted(p.replace("_", "-") for p in params if p != "extra")


def parse_sbatch_args(args: Iterable[str]) -> dict[str, Any]:
    """``["time=02:00:00", "mem=0"]`` -> keyword arguments for :func:`sbatch_directives`."""
    params = inspect.signature(sbatch_directives).parameters
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or name not in params or name == "extra":
            what = f"unknown sbatch option {key!r}" if sep else f"{arg!r} is not KEY=VALUE"
            raise UsageError(f"--sbatch-arg {what}; valid keys: {', '.join(valid_keys())}")
        annotation = str(params[name].annotation)
        value: Any = raw
        if annotation.startswith("bool"):
            if raw.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise UsageError(f"--sbatch-arg {key}: expected true or false, got {raw!r}")
            value = raw.lower() in ("true", "yes", "1")
        elif annotation.startswith("int"):
            if not raw.isdigit():
                raise UsageError(f"--sbatch-arg {key}: expected a whole number, got {raw!r}")
            value = int(raw)
        out[name] = value
    return out


def check_extra_line(line: str) -> str:
    """A site ``extra_sbatch`` entry, returned unchanged if it is one safe ``--option[=value]``."""
    if not isinstance(line, str) or not line.startswith("--") or len(line) < 3:
        raise UsageError(f"scheduler.extra_sbatch {line!r}: must start with '--'")
    if any(c in line for c in "\n\r\0"):
        raise UsageError(f"scheduler.extra_sbatch {line!r}: must be one line")
    return line


def _directive_value(key: str, value: Any) -> str:
    text = str(value)
    if any(c in text for c in "\n\r\0"):
        raise UsageError(f"sbatch {key}: value must be one line, got {text!r}")
    if text == "":
        raise UsageError(f"sbatch {key}: empty value")
    if any(c.isspace() for c in text) or '"' in text:
        # sbatch splits directive lines on blanks and understands double quotes
        if '"' in text:
            raise UsageError(f"sbatch {key}: value may not contain double quotes: {text!r}")
        return f'"{text}"'
    return text


def merged(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by the overrides that are not None."""
    out = dict(defaults)
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out
