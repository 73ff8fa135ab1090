"""Load and validate site YAML files against :mod:`hpcserve.sites.schema`, and find sites by name.

A file is composed (not constructed) with PyYAML so every node keeps its line. The node tree is
then checked against the dataclasses' fields and type hints generically: unknown keys (with a
did-you-mean), missing required fields, wrong types, ``choices`` and ``min`` from the field
metadata, and a few cross-field rules a site admin would want. All problems of a file are
collected and raised together as one :class:`ConfigError`, one line each::

    site_configs/x.yaml:7: node.gpu: unknown key (did you mean 'gpus'?)

Sites are searched in the shipped ``site_configs/``, then ``~/.config/hpcserve/sites/``, then
each directory or file in ``$HPCSERVE_SITES`` (``os.pathsep``-separated). A later file of a
site's ``name`` sets just the fields it gives (mappings merge, lists are replaced); the merged
site is validated, each problem naming the file that set the value. :func:`apply_overrides` lays
the command line's per-user values on top, :func:`check_values` names what a site still lacks.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from hpcserve.errors import ConfigError, UsageError
from hpcserve.plan.gpus import known_names, memory_mib
from hpcserve.resources import site_configs_dir
from hpcserve.rules import is_env_name, is_slurm_time
from hpcserve.sites.schema import Site
from hpcserve.sites.walk import (
    describe,
    dict_types,
    dotted_names,
    is_dataclass_type,
    is_required,
    list_item,
    settable_fields,
    type_hints,
    unwrap_optional,
)

ENV_VAR = "HPCSERVE_SITES"
SUFFIXES = (".yaml", ".yml")

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CTOR = yaml.constructor.SafeConstructor()
_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_INVALID: Any = object()  # a value that failed validation (its problem is already recorded)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- problems


class SiteFileError(ConfigError):
    """A broken site file; ``name`` is the site it defines when that much could be read."""

    def __init__(self, problems: list[str], name: str | None = None) -> None:
        super().__init__(problems)
        self.name = name


class Loc(NamedTuple):
    """Where a value was set: the file as shown to the user, and the line."""

    file: str
    line: int


@dataclass
class _Report:
    """Problems of one site, and where every key seen was set (for cross-field checks and
    ``sites show``). ``files`` are the site's files, earliest first (problems sort by them)."""

    file: str
    problems: list[tuple[int, int, int, str]] = field(default_factory=list)  # file, line, seq
    lines: dict[str, Loc] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)  # dotted fields whose value was rejected

    def broken(self, dotted: str) -> bool:
        """True when ``dotted``, a part of it or a section holding it was rejected."""
        return any(_related(dotted, bad) for bad in self.invalid)

    def add(self, loc: Loc, dotted: str, message: str) -> None:
        where = f"{dotted}: " if dotted else ""
        text = f"{loc.file}:{loc.line}: {where}{message}"
        order = self.files.index(loc.file) if loc.file in self.files else len(self.files)
        self.problems.append((order, loc.line, len(self.problems), text))

    def line_of(self, dotted: str) -> Loc:
        """Where ``dotted`` or its nearest parent was set (else line 1 of the last file)."""
        while dotted:
            if dotted in self.lines:
                return self.lines[dotted]
            dotted = dotted.rpartition(".")[0]
        return Loc(self.file, 1)

    def sorted(self) -> list[str]:
        return [text for *_, text in sorted(self.problems)]


def _related(a: str, b: str) -> bool:
    """``a`` and ``b`` are the same field, or one holds the other (``x`` and ``x.y``/``x[0]``)."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return long.startswith((short + ".", short + "["))


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _loc(node: yaml.Node) -> Loc:
    """Where ``node`` is: files are composed under their shown name (:func:`_compose`)."""
    return Loc(str(node.start_mark.name), _line(node))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def did_you_mean(word: str, candidates: list[str]) -> str | None:
    """The closest candidate to ``word``, if one is close enough."""
    import difflib

    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _found(node: yaml.Node) -> str:
    """How a node reads in an error message: ``text 'x'``, ``integer 3``, ``a list``."""
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    value = str(node.value)
    shown = value if len(value) <= 40 else value[:37] + "..."
    if node.tag == _NULL:
        return "nothing (null)"
    if node.tag == _BOOL:
        return f"true/false {shown!r}"
    if node.tag == _INT:
        return f"integer {shown}"
    if node.tag == _FLOAT:
        return f"number {shown}"
    return f"text {shown!r}"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


# --------------------------------------------------------------------------- conversion


def _convert(node: yaml.Node, hint: Any, dotted: str, rep: _Report) -> Any:
    """Convert ``node`` to the schema type ``hint``, recording problems; ``_INVALID`` if any."""
    inner, optional = unwrap_optional(hint)
    if _is_null(node):
        if optional:
            return None
        # An empty section or list means "all defaults" / "none".
        if is_dataclass_type(inner) and not any(map(is_required, settable_fields(inner).values())):
            return inner()
        if list_item(inner) is not None:
            return []
        if dict_types(inner) is not None:
            return {}
    if is_dataclass_type(inner):
        return _convert_dataclass(node, inner, dotted, rep)
    item = list_item(inner)
    if item is not None:
        return _convert_list(node, item, dotted, rep)
    kv = dict_types(inner)
    if kv is not None:
        return _convert_dict(node, kv[1], dotted, rep)
    return _convert_scalar(node, inner, dotted, rep)


def _expected(node: yaml.Node, hint: Any, dotted: str, rep: _Report, hint_text: str = "") -> Any:
    extra = f" ({hint_text})" if hint_text else ""
    rep.add(
        _loc(node), dotted, f"expected {describe(hint, article=True)}, found {_found(node)}{extra}"
    )
    return _INVALID


def _convert_dataclass(node: yaml.Node, cls: type, dotted: str, rep: _Report) -> Any:
    """A dataclass instance even when some fields were rejected (they get their default, or
    None when required), so that cross-field rules can still look at the rest; the rejected
    fields are in ``rep.invalid`` and the caller never returns such an instance."""
    if not isinstance(node, MappingNode):
        return _expected(node, cls, dotted, rep)
    _CTOR.flatten_mapping(node)  # resolve YAML merge keys (<<: *anchor)
    fields = settable_fields(cls)
    hints = type_hints(cls)
    seen: dict[str, int] = {}
    values: dict[str, Any] = {}
    for key, sub, line, value_node in _entries(node, dotted, rep, (_STR, _INT, _FLOAT), seen):
        if key not in fields:
            rep.add(line, sub, "unknown key " + _suggest(key, list(fields)))
            continue
        rep.lines[sub] = line
        value = _convert(value_node, hints[key], sub, rep)
        if value is not _INVALID:
            value = _check_metadata(value, fields[key], value_node, sub, rep)
        if value is _INVALID:
            rep.invalid.add(sub)
            continue
        values[key] = value
    for name, f in fields.items():
        if name not in values and is_required(f):
            sub = _join(dotted, name)
            if name not in seen:
                line = rep.line_of(dotted) if dotted else _loc(node)
                expected = _expectation(f, hints[name])
                rep.add(line, sub, f"required field is missing (expected {expected})")
            rep.invalid.add(sub)
            values[name] = None
    return cls(**values)


def _entries(
    node: MappingNode,
    dotted: str,
    rep: _Report,
    key_tags: tuple[str, ...],
    seen: dict[str, int],
) -> Iterator[tuple[str, str, Loc, yaml.Node]]:
    """(key, dotted path, line, value node) of each entry of a mapping; keys that are not
    text (a tag in ``key_tags``) or repeat an earlier one are reported and skipped. ``seen``
    collects the line of each key given."""
    for key_node, value_node in node.value:
        line = _loc(key_node)
        if not isinstance(key_node, ScalarNode) or key_node.tag not in key_tags:
            rep.add(line, dotted, f"keys must be text, found {_found(key_node)}")
            continue
        key = str(key_node.value)
        sub = _join(dotted, key)
        if key in seen:
            rep.add(line, sub, f"duplicate key (first given on line {seen[key]})")
            continue
        seen[key] = line.line
        yield key, sub, line, value_node


def _expectation(f: dataclasses.Field[Any], hint: Any) -> str:
    """What a field takes, for messages: ``an integer >= 1``, ``one of 'a', 'b'``."""
    if "choices" in f.metadata:
        return "one of " + ", ".join(repr(c) for c in f.metadata["choices"])
    text = describe(hint, article=True)
    if "min" in f.metadata:
        text += f" >= {f.metadata['min']}"
    return text


def _suggest(key: str, valid: list[str]) -> str:
    close = did_you_mean(key, valid)
    if close:
        return f"(did you mean {close!r}?)"
    return "(valid keys: " + ", ".join(valid) + ")"


def _convert_list(node: yaml.Node, item: Any, dotted: str, rep: _Report) -> Any:
    item_inner, _ = unwrap_optional(item)
    if isinstance(node, MappingNode) and is_dataclass_type(item_inner):
        # Convenience: a single mapping where a list of mappings is expected (login: {host: x}).
        return [_convert(node, item, dotted, rep)]
    if not isinstance(node, SequenceNode):
        return _expected(node, list[item], dotted, rep)
    out = []
    for i, child in enumerate(node.value):
        sub = f"{dotted}[{i}]"
        rep.lines[sub] = _loc(child)
        value = _convert(child, item, sub, rep)
        if value is _INVALID:
            rep.invalid.add(sub)
        else:
            out.append(value)
    return out


def _convert_dict(node: yaml.Node, value_hint: Any, dotted: str, rep: _Report) -> Any:
    if not isinstance(node, MappingNode):
        return _expected(node, dict[str, value_hint], dotted, rep)
    _CTOR.flatten_mapping(node)
    out: dict[str, Any] = {}
    for key, sub, line, value_node in _entries(node, dotted, rep, (_STR, _INT), {}):
        rep.lines[sub] = line
        value = _convert(value_node, value_hint, sub, rep)
        if value is _INVALID:
            rep.invalid.add(sub)
        else:
            out[key] = value
    return out


def _convert_scalar(node: yaml.Node, hint: Any, dotted: str, rep: _Report) -> Any:
    if not isinstance(node, ScalarNode):
        return _expected(node, hint, dotted, rep)
    convert = next((fn for t, fn in _SCALARS if hint is t), None)
    if convert is None:
        raise TypeError(f"schema: unsupported scalar type {hint!r}")
    return convert(node, hint, dotted, rep)


def _scalar_str(node: ScalarNode, hint: Any, dotted: str, rep: _Report) -> Any:
    # Numbers are read as their text, as written: `time: 01:00:00` stays "01:00:00"
    # (YAML 1.1 would make it the integer 3600), `account: 12345` becomes "12345".
    if node.tag in (_BOOL, _NULL):
        return _expected(node, hint, dotted, rep, "quote it if you mean the text")
    return str(node.value)


def _scalar_bool(node: ScalarNode, hint: Any, dotted: str, rep: _Report) -> Any:
    if node.tag == _BOOL:
        return bool(_CTOR.construct_yaml_bool(node))
    return _expected(node, hint, dotted, rep)


def _scalar_int(node: ScalarNode, hint: Any, dotted: str, rep: _Report) -> Any:
    if node.tag == _INT:
        return int(_CTOR.construct_yaml_int(node))
    return _expected(node, hint, dotted, rep)


def _scalar_float(node: ScalarNode, hint: Any, dotted: str, rep: _Report) -> Any:
    if node.tag == _INT:
        return float(_CTOR.construct_yaml_int(node))
    if node.tag == _FLOAT:
        return float(_CTOR.construct_yaml_float(node))
    return _expected(node, hint, dotted, rep)


_SCALARS: tuple[tuple[type, Callable[[ScalarNode, Any, str, _Report], Any]], ...] = (
    (str, _scalar_str),
    (bool, _scalar_bool),
    (int, _scalar_int),
    (float, _scalar_float),
)


def _check_metadata(
    value: Any, f: dataclasses.Field[Any], node: yaml.Node, dotted: str, rep: _Report
) -> Any:
    """Apply the field's ``choices`` and ``min`` metadata."""
    if value is None:
        return value
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        close = did_you_mean(str(value), [str(c) for c in choices if c])
        hint = f" (did you mean {close!r}?)" if close else ""
        rep.add(_loc(node), dotted, f"expected one of {listed}, found {value!r}{hint}")
        return _INVALID
    minimum = f.metadata.get("min")
    if minimum is not None and isinstance(value, (int, float)) and value < minimum:
        rep.add(_loc(node), dotted, f"expected a value >= {minimum}, found {value}")
        return _INVALID
    return value


# --------------------------------------------------------------------------- cross-field rules


def _check_site(site: Site, rep: _Report) -> None:
    """Rules that involve several fields, or formats the type alone does not say.

    A rule is skipped when a field it reads was already rejected (its problem is reported).
    """
    for check in _SITE_RULES:
        check(site, rep)


def _check_name(site: Site, rep: _Report) -> None:
    if not rep.broken("name") and not _NAME_RE.match(site.name):
        rep.add(
            rep.line_of("name"),
            "name",
            f"expected letters, digits, '.', '_' or '-', found {site.name!r}",
        )


def _check_container(site: Site, rep: _Report) -> None:
    if rep.broken("container"):
        return
    c, at = site.container, rep.line_of
    if c.runtime in ("apptainer", "singularity") and not c.image and not _user_sets(site, "image"):
        rep.add(
            at("container.image"),
            "container.image",
            f"required when container.runtime is {c.runtime!r} (the .sif image on the cluster)",
        )
    if c.runtime == "none" and c.image:
        rep.add(
            at("container.image"),
            "container.image",
            "not used when container.runtime is 'none' (remove it, or set a runtime)",
        )
    if c.runtime != "none" and c.venv:
        rep.add(
            at("container.venv"),
            "container.venv",
            f"only used when container.runtime is 'none', not {c.runtime!r}",
        )


def _user_sets(site: Site, key: str) -> bool:
    """The site says the user supplies ``container.KEY`` (``must_set``): unset is not an error."""
    return f"container.{key}" in site.must_set


def _check_must_set(site: Site, rep: _Report) -> None:
    if rep.broken("must_set"):
        return
    known = dotted_names(Site)
    for name in site.must_set:
        if name not in known:
            rep.add(
                rep.line_of(f"must_set.{name}"),
                f"must_set.{name}",
                f"{name!r} is not a site field {_suggest_field(name, known)}",
            )


def _check_login(site: Site, rep: _Report) -> None:
    if rep.broken("login") or rep.broken("scheduler.submit"):
        return
    at = rep.line_of
    if not site.login and site.scheduler.submit != "local":
        rep.add(
            at("login"),
            "login",
            "at least one login host is needed unless scheduler.submit is 'local'",
        )
    for i, host in enumerate(site.login):
        key = f"login[{i}]" if f"login[{i}]" in rep.lines else "login"
        if host.port > 65535:
            msg = f"expected a port <= 65535, found {host.port}"
            rep.add(at(f"{key}.port"), f"{key}.port", msg)
        if not host.host.strip() or any(ch.isspace() for ch in host.host):
            msg = f"expected a host name, found {host.host!r}"
            rep.add(at(f"{key}.host"), f"{key}.host", msg)


def _check_node(site: Site, rep: _Report) -> None:
    """Memory per GPU comes from one place: gpu_memory_mib, gpu_memory_gb or the GPU table."""
    if rep.broken("node"):
        return
    node, at = site.node, rep.line_of
    if node.gpu_memory_mib is not None and node.gpu_memory_gb is not None:
        rep.add(
            at("node.gpu_memory_gb"),
            "node.gpu_memory_gb",
            "give gpu_memory_mib or gpu_memory_gb, not both",
        )
    if memory_mib(node.gpu_model, node.gpu_memory_mib, node.gpu_memory_gb) is None:
        close = did_you_mean(node.gpu_model, known_names())
        hint = f"did you mean {close!r}? " if close else ""
        rep.add(
            at("node.gpu_model"),
            "node.gpu_model",
            f"{node.gpu_model!r} is not in the GPU table ({hint}known: "
            f"{', '.join(known_names())}): name one, or give node.gpu_memory_mib",
        )


def _check_engine_port(site: Site, rep: _Report) -> None:
    if not rep.broken("engine.port") and site.engine.port > 65535:
        msg = f"expected a port <= 65535, found {site.engine.port}"
        rep.add(rep.line_of("engine.port"), "engine.port", msg)


def _check_time(site: Site, rep: _Report) -> None:
    at, broken = rep.line_of, rep.broken
    if not broken("scheduler.time") and not is_slurm_time(site.scheduler.time):
        rep.add(
            at("scheduler.time"),
            "scheduler.time",
            f"expected a Slurm time such as 01:00:00 or 2-00:00:00, found {site.scheduler.time!r}",
        )


def _check_extra_sbatch(site: Site, rep: _Report) -> None:
    if rep.broken("scheduler.extra_sbatch"):
        return
    for i, opt in enumerate(site.scheduler.extra_sbatch):
        if not opt.startswith("-"):
            rep.add(
                rep.line_of(f"scheduler.extra_sbatch[{i}]"),
                f"scheduler.extra_sbatch[{i}]",
                f"expected an sbatch option such as '--hint=nomultithread' "
                f"(without '#SBATCH'), found {opt!r}",
            )


def _check_env_names(site: Site, rep: _Report) -> None:
    at = rep.line_of
    for name in site.network.nccl_env:
        if not name.startswith("NCCL_") or not is_env_name(name):
            rep.add(
                at(f"network.nccl_env.{name}"),
                f"network.nccl_env.{name}",
                "expected an environment variable name starting with NCCL_",
            )
    for name in site.engine.env:
        if not is_env_name(name):
            rep.add(
                at(f"engine.env.{name}"),
                f"engine.env.{name}",
                "expected an environment variable name (letters, digits, '_')",
            )


def _check_unconfirmed(site: Site, rep: _Report) -> None:
    if rep.broken("unconfirmed"):
        return
    known = dotted_names(Site)
    for i, name in enumerate(site.unconfirmed):
        plain = re.sub(r"\[\d+\]", "", name)
        if plain not in known:
            rep.add(
                rep.line_of(f"unconfirmed[{i}]"),
                f"unconfirmed[{i}]",
                f"{name!r} is not a site field {_suggest_field(plain, known)}",
            )


# In this order: problems on one line are listed as the rules find them.
_SITE_RULES: tuple[Callable[[Site, _Report], None], ...] = (
    _check_name,
    _check_container,
    _check_login,
    _check_node,
    _check_engine_port,
    _check_time,
    _check_extra_sbatch,
    _check_env_names,
    _check_unconfirmed,
    _check_must_set,
)


def _suggest_field(name: str, known: list[str]) -> str:
    close = did_you_mean(name, known)
    return f"(did you mean {close!r}?)" if close else "(see `hpcserve sites schema`)"


# --------------------------------------------------------------------------- files


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _syntax_error(e: yaml.MarkedYAMLError) -> str:
    """``LINE:COL: YAML syntax error: problem (context at LINE:COL)`` from a PyYAML error."""
    mark = e.problem_mark or e.context_mark
    where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1"
    text = f"{where}: YAML syntax error: {e.problem or e.context or 'invalid YAML'}"
    if e.context and e.problem:
        cm = e.context_mark
        at = f" at line {cm.line + 1}, column {cm.column + 1}" if cm and cm is not mark else ""
        text += f" ({e.context}{at})"
    return text


def _compose(text: str, file: str) -> MappingNode:
    """The top-level mapping of a site file, its nodes marked with ``file`` (:func:`_loc`)."""
    stream = io.StringIO(text)
    stream.name = file
    try:
        root = yaml.compose(stream, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        raise SiteFileError([f"{file}:{_syntax_error(e)}"]) from None
    except yaml.YAMLError as e:
        raise SiteFileError([f"{file}:1: YAML error: {e}"]) from None
    if root is None:
        raise SiteFileError(
            [f"{file}:1: the file is empty (expected a mapping with 'name' and 'node')"]
        )
    if not isinstance(root, MappingNode):
        raise SiteFileError(
            [
                f"{file}:{_line(root)}: expected a mapping of site settings "
                f"at the top level, found {_found(root)}"
            ]
        )
    return root


def _name_in(root: MappingNode) -> str | None:
    """The ``name`` a composed site file gives, if it is plain text."""
    for key, value in root.value:
        if isinstance(key, ScalarNode) and key.value == "name" and isinstance(value, ScalarNode):
            return str(value.value) if value.tag in (_STR, _INT, _FLOAT) else None
    return None


def _key(node: yaml.Node) -> object:
    return str(node.value) if isinstance(node, ScalarNode) else id(node)


def _sub_hints(hint: Any) -> Callable[[object], Any] | None:
    """For a section or a name -> value mapping: the type of each key; None for anything else."""
    inner, _ = unwrap_optional(hint)
    if is_dataclass_type(inner):
        hints = type_hints(inner)
        return lambda key: hints.get(str(key))
    kv = dict_types(inner)
    if kv is not None:
        return lambda key: kv[1]
    return None


def _merge(base: yaml.Node, over: yaml.Node, hint: Any) -> yaml.Node:
    """``over`` laid on ``base``: sections and name -> value mappings merge key by key (deep),
    anything else (lists, text, numbers) is replaced as a whole."""
    sub_hint = _sub_hints(hint)
    if sub_hint is None or not (isinstance(base, MappingNode) and isinstance(over, MappingNode)):
        return over
    _CTOR.flatten_mapping(base)
    _CTOR.flatten_mapping(over)
    given = {_key(k) for k, _ in over.value}
    entries = [(k, v) for k, v in base.value if _key(k) not in given]
    earlier = {_key(k): v for k, v in base.value}
    for k, v in over.value:
        key = _key(k)
        if key in earlier:
            v = _merge(earlier.pop(key), v, sub_hint(key))
        entries.append((k, v))
    return MappingNode(over.tag, entries, over.start_mark, over.end_mark)


@dataclass
class _Layer:
    """One file of a site: where it was found (shipped, user, $HPCSERVE_SITES) and its tree."""

    origin: str
    path: Path
    shown: str
    root: MappingNode


def _build(layers: list[_Layer]) -> Site:
    """The site the files define together, later files setting just the fields they give;
    checked after the merge, each problem naming the file and line that set the value."""
    root: yaml.Node = layers[0].root
    for layer in layers[1:]:
        root = _merge(root, layer.root, Site)
    files = [layer.shown for layer in layers]
    rep = _Report(files[-1], files=files)
    site: Site = _convert(root, Site, "", rep)  # a Site: the root is a mapping
    _check_site(site, rep)
    if rep.problems:
        raise SiteFileError(rep.sorted(), None if rep.broken("name") else site.name)
    origin = {layer.shown: layer.origin for layer in layers}
    site.provenance = {
        dotted: f"{origin.get(loc.file, 'file')}: {loc.file}:{loc.line}"
        for dotted, loc in rep.lines.items()
    }
    return site


def parse_site(text: str, file: str) -> Site:
    """Validate the YAML ``text`` of a site file; ``file`` names it in the messages."""
    return _build([_Layer("file", Path(file), file, _compose(text, file))])


def _read(p: Path, shown: str) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such site file") from None
    except IsADirectoryError:
        raise UsageError(f"{shown}: is a directory, not a site file") from None
    except UnicodeDecodeError as e:
        raise SiteFileError([f"{shown}:1: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except OSError as e:
        raise UsageError(f"{shown}: cannot read: {e.strerror}") from None


def load_site_file(path: str | os.PathLike[str]) -> Site:
    """Load and validate one site file on its own; :class:`ConfigError` lists all its problems."""
    p = Path(path).expanduser()
    shown = display_path(p)
    site = _build([_Layer("file", p, shown, _compose(_read(p, shown), shown))])
    site.path = str(p.resolve())
    return site


# --------------------------------------------------------------------------- search path


class SiteWarning(UserWarning):
    """A site file that was skipped, or a value a site still needs (the CLI prints
    ``warning: ...``)."""


def user_sites_dir() -> Path:
    """``~/.config/hpcserve/sites``: the user's own site files."""
    return Path.home() / ".config" / "hpcserve" / "sites"


def search_path() -> list[tuple[str, Path]]:
    """Where sites come from, earliest first, as ``(origin, path)``; later ones win by field."""
    out: list[tuple[str, Path]] = [("shipped", site_configs_dir()), ("user", user_sites_dir())]
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            out.append((ENV_VAR, Path(entry).expanduser()))
    return out


def _files_in(origin: str, path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if path.is_file():
        return [path]
    if origin == ENV_VAR:
        raise UsageError(f"${ENV_VAR} names {str(path)!r}, which does not exist")
    return []  # the shipped or user directory may simply not be there


@dataclass
class SiteScan:
    """Every site file on the search path, loaded or not."""

    sites: dict[str, Site] = field(default_factory=dict)  # valid sites by name
    origins: dict[str, str] = field(default_factory=dict)  # name -> e.g. shipped+user
    broken: dict[str, list[str]] = field(default_factory=dict)  # name -> problems

    @property
    def problems(self) -> list[str]:
        return [p for ps in self.broken.values() for p in ps]


def _add_file(
    origin: str, f: Path, here: dict[str, str], scan: SiteScan, layers: dict[str, list[_Layer]]
) -> None:
    """Compose one file into the layers of the site it names (its file name when the ``name``
    cannot be read: ``meluxina.yaml`` is taken to be about ``meluxina``)."""
    shown = display_path(f)
    try:
        root = _compose(_read(f, shown), shown)
    except SiteFileError as e:
        scan.broken.setdefault(e.name or f.stem, []).extend(e.problems)
        return
    name = _name_in(root) or f.stem
    if name in here:
        scan.broken.setdefault(name, []).append(
            f"{shown}:1: name: site {name!r} is also defined in {here[name]} (same directory)"
        )
        return
    here[name] = shown
    layers.setdefault(name, []).append(_Layer(origin, f, shown, root))


def scan_sites() -> SiteScan:
    """Load every site on the search path; a later file of a site's name sets just the fields
    it gives (mappings merged, lists replaced), and the merged site is validated.

    A broken file breaks only the site it is about: its problems are kept under that name.
    """
    scan = SiteScan()
    layers: dict[str, list[_Layer]] = {}
    for origin, entry in search_path():
        here: dict[str, str] = {}
        for f in _files_in(origin, entry):
            _add_file(origin, f, here, scan, layers)
    for name, stack in layers.items():
        if name in scan.broken:
            continue
        try:
            site = _build(stack)
        except SiteFileError as e:
            scan.broken[name] = e.problems
            continue
        site.path = str(stack[-1].path.resolve())
        scan.sites[name] = site
        scan.origins[name] = "+".join(dict.fromkeys(layer.origin for layer in stack))
    return scan


def _warn_broken(scan: SiteScan, wanted: str) -> None:
    for name, problems in scan.broken.items():
        if name != wanted:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            warnings.warn(
                SiteWarning(f"site {name!r} is skipped: {problems[0]}{more}"), stacklevel=3
            )


def load_site(name: str) -> Site:
    """The site called ``name`` (a path to a .yaml file works too); a broken file of another
    site is a :class:`SiteWarning`, not an error."""
    if name.endswith(SUFFIXES) or os.sep in name:
        return load_site_file(name)
    scan = scan_sites()
    if name in scan.broken:
        raise ConfigError(scan.broken[name])
    _warn_broken(scan, name)
    if name in scan.sites:
        return scan.sites[name]
    known = sorted(set(scan.sites) | set(scan.broken))
    close = did_you_mean(name, known)
    hint = f" (did you mean {close!r}?)" if close else ""
    listed = ", ".join(known) if known else "none"
    raise UsageError(f"unknown site {name!r}{hint}; known sites: {listed}")


def origin_of(site: Site, dotted: str) -> str:
    """Where a value of ``site`` came from: ``shipped: FILE:LINE``, ``user: FILE:LINE``,
    ``$HPCSERVE_SITES: FILE:LINE``, ``option: --image`` or ``default``."""
    single = re.sub(r"\[0\]", "", dotted, count=1)  # `login: {host: x}` sets login.host
    return site.provenance.get(dotted) or site.provenance.get(single) or "default"


# --------------------------------------------------------------------------- per-user values

# The one image every shipped container site and apptainer/README.md name (apptainer/vllm.def).
PINNED_IMAGE = "docker://vllm/vllm-openai:v0.33.0"
IMAGE_FILE = "~/hpcserve/vllm-openai-v0.33.0.sif"

# Value -> the command-line option that sets it (render, submit, download, sites show).
OPTIONS = {
    "scheduler.account": "--account",
    "container.image": "--image",
    "container.venv": "--venv",
    "storage.hf_cache": "--hf-cache",
}
_PLACEHOLDERS = {"container.image": IMAGE_FILE, "storage.hf_cache": "DIR", "container.venv": "DIR"}


def apply_overrides(
    site: Site,
    *,
    account: str | None = None,
    image: str | None = None,
    venv: str | None = None,
    hf_cache: str | None = None,
) -> Site:
    """``site`` with the per-user values given on the command line (a copy; ``site`` itself
    when none is given), checked as the site file's own rules check them."""
    given = {
        "scheduler.account": account,
        "container.image": image,
        "container.venv": venv,
        "storage.hf_cache": hf_cache,
    }
    values = {k: v for k, v in given.items() if v is not None}
    if not values:
        return site
    out = copy.deepcopy(site)
    for dotted, value in values.items():
        _check_override(out, OPTIONS[dotted], value)
        section, key = dotted.split(".")
        setattr(getattr(out, section), key, value)
        out.provenance[dotted] = f"option: {OPTIONS[dotted]}"
    return out


def _check_override(site: Site, option: str, value: str) -> None:
    runtime = site.container.runtime
    if not value.strip():
        raise UsageError(f"{option}: expected a value, found {value!r}")
    if option == "--image" and runtime == "none":
        raise UsageError(
            f"--image: site {site.name} runs vLLM from a venv (container.runtime is 'none'); "
            "use --venv"
        )
    if option == "--venv" and runtime != "none":
        raise UsageError(
            f"--venv: site {site.name} runs vLLM in a container "
            f"(container.runtime is {runtime!r}); use --image"
        )


@dataclass(frozen=True)
class Missing:
    """A value ``site`` needs before a job can run there, and why."""

    site: str
    field: str
    why: str
    runtime: str = "apptainer"

    def message(self) -> str:
        """``SITE: FIELD is not set (WHY): how to set it`` (the option and the user-file line)."""
        section, _, key = self.field.rpartition(".")
        value = _PLACEHOLDERS.get(self.field, "VALUE")
        pull = ""
        if self.field == "container.image":
            pull = f"on the login node run `{pull_command(self.runtime)}`, then "
        option = OPTIONS.get(self.field)
        line = f"`{section}: {{{key}: {value}}}`" if section else f"`{key}: {value}`"
        return (
            f"{self.site}: {self.field} is not set ({self.why}): {pull}"
            + (f"pass {option} {value} or " if option else "")
            + f"add {line} to ~/.config/hpcserve/sites/{self.site}.yaml (with `name: {self.site}`)"
        )


def pull_command(runtime: str = "apptainer") -> str:
    """The one ``apptainer pull`` (or ``singularity pull``) of the pinned image."""
    tool = "singularity" if runtime == "singularity" else "apptainer"
    return f"{tool} pull {IMAGE_FILE} {PINNED_IMAGE}"


def _value(site: Site, dotted: str) -> object:
    value: object = site
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def missing_values(site: Site) -> list[Missing]:
    """Every must-have value ``site`` lacks: those its file lists in ``must_set``, the image of
    a container runtime, and the shared HF cache when compute nodes are offline."""
    wanted = dict(site.must_set)
    if site.container.runtime != "none":
        wanted.setdefault("container.image", "the vLLM image on the cluster")
    if site.storage.offline:
        wanted.setdefault("storage.hf_cache", "compute nodes are offline: models come from it")
    runtime = site.container.runtime
    return [
        Missing(site.name, dotted, why, runtime)
        for dotted, why in wanted.items()
        if _value(site, dotted) in (None, "", [], {})
    ]


# What the launcher itself cannot be written without (render stops; other values only warn).
_RENDER_NEEDS = frozenset({"container.image"})


def check_values(site: Site, *, submitting: bool) -> None:
    """Before anything contacts the cluster: every missing must-have value is an error when
    ``submitting`` (one line each), else a :class:`SiteWarning` (render)."""
    missing = missing_values(site)
    fatal = [m for m in missing if submitting or m.field in _RENDER_NEEDS]
    for m in missing:
        if m not in fatal:
            warnings.warn(SiteWarning(m.message()), stacklevel=2)
    if fatal:
        raise ConfigError([m.message() for m in fatal])
