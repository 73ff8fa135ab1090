"""The site-config field reference, generated from the schema's dataclass metadata.

``hpcserve sites schema`` prints it as text, ``--markdown`` as the page committed in
``docs/site-config.md`` (a test keeps the two equal, so the docs cannot drift).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import textwrap
from typing import Any

from hpcserve.sites.schema import Site
from hpcserve.sites.walk import (
    default_of,
    describe,
    is_dataclass_type,
    list_item,
    type_hints,
    unwrap_optional,
    walk,
)

_INTRO = """\
A site file is one YAML file per cluster. Its keys mirror the dataclasses in
`hpcserve/sites/schema.py`; this page is generated from them by `hpcserve sites schema --markdown`
(do not edit it by hand). Check a file with `hpcserve sites validate FILE...`.

Sites are looked up in the shipped `site_configs/`, then `~/.config/hpcserve/sites/`, then each
directory or file listed in `$HPCSERVE_SITES` (separated by `:`); a later file replaces an earlier
one with the same `name`. A broken file blocks only the site it defines (every site, when not
even its `name` can be read); `hpcserve sites list` shows the others and the problems.

Rules beyond the types below:

- Unknown keys are errors (with a did-you-mean); all problems of a file are reported at once,
  each as `FILE:LINE: FIELD: problem`.
- Text fields take numbers as written (`time: 01:00:00` stays `"01:00:00"`); quote `yes`/`no`.
- `container.image` is required when `container.runtime` is `apptainer` or `singularity`;
  `container.venv` is only used (and `container.image` never) with runtime `none`.
- At least one `login` host is needed unless `scheduler.submit` is `local`. `login` takes a list
  of host mappings, or one mapping.
- `scheduler.time` is a Slurm time; `scheduler.extra_sbatch` entries are options without
  `#SBATCH`; `network.nccl_env` names start with `NCCL_`.
- `unconfirmed` entries must be dotted field names of this schema (e.g. `node.memory_gb`).
"""


def _type_text(f: dataclasses.Field[Any], hint: Any) -> str:
    text = describe(hint)
    if "choices" in f.metadata:
        text += ": one of " + ", ".join(_show(c) for c in f.metadata["choices"])
    if "min" in f.metadata:
        text += f", >= {f.metadata['min']}"
    return text


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "unset"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _default_text(f: dataclasses.Field[Any]) -> str:
    value = default_of(f)
    if value is dataclasses.MISSING:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return _show(value)


def _doc(f: dataclasses.Field[Any], hint: Any) -> str:
    doc = str(f.metadata.get("doc", ""))
    inner, _ = unwrap_optional(hint)
    item = list_item(inner)
    if not doc and is_dataclass_type(inner):
        doc = inspect.cleandoc(inner.__doc__ or "")
    if item is not None and is_dataclass_type(item):
        doc += f" Each entry is a mapping (see `{f.name}` below); one mapping alone is accepted."
    elif is_dataclass_type(inner):
        doc += f" See `{f.name}` below."
    if "example" in f.metadata:
        doc += f" Example: `{f.metadata['example']}`."
    return doc.strip()


def _sections() -> list[tuple[str, type]]:
    """``[("", Site), ("login", LoginHost), ("scheduler", Scheduler), ...]`` in schema order."""
    out: list[tuple[str, type]] = [("", Site)]
    for dotted, _, hint in walk(Site):
        inner, _ = unwrap_optional(hint)
        item = list_item(inner)
        if is_dataclass_type(inner):
            out.append((dotted, inner))
        elif item is not None and is_dataclass_type(item):
            out.append((dotted, item))
    return out


def _rows(cls: type) -> list[tuple[str, str, str, str]]:
    hints = type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal", False):
            continue
        hint = hints[f.name]
        rows.append((f.name, _type_text(f, hint), _default_text(f), _doc(f, hint)))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The reference as a Markdown page (``docs/site-config.md``)."""
    lines = ["# Site configuration reference", "", _INTRO.rstrip(), ""]
    for dotted, cls in _sections():
        title = f"`{dotted}`" if dotted else "Top level"
        lines += [f"## {title}", "", inspect.cleandoc(cls.__doc__ or ""), ""]
        lines += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for name, type_text, default, doc in _rows(cls):
            key = f"{dotted}.{name}" if dotted else name
            lines.append(f"| `{key}` | {_cell(type_text)} | {_cell(default)} | {_cell(doc)} |")
        lines.append("")
    return "\n".join(lines)


def text() -> str:
    """The reference as plain text for a terminal: one dotted field per entry."""
    out = []
    for dotted, cls in _sections():
        out.append(f"[{dotted or 'top level'}] {inspect.cleandoc(cls.__doc__ or '')}")
        for name, type_text, default, doc in _rows(cls):
            key = f"{dotted}.{name}" if dotted else name
            out.append(f"  {key}  ({type_text}; default {default})")
            out.extend(textwrap.wrap(doc, 96, initial_indent="      ", subsequent_indent="      "))
        out.append("")
    return "\n".join(out)
