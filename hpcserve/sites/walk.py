"""Generic walking of the site-config dataclasses: fields, type hints, defaults, dotted names.

The loader (:mod:`hpcserve.sites.loader`) and the reference generator (:mod:`hpcserve.sites.docs`)
both read the schema through these helpers, so neither keeps its own list of fields.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from typing import Any

NoneType = type(None)


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass (the schema uses postponed annotations)."""
    return typing.get_type_hints(cls)


def settable_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """Fields a site file may set, in declaration order (``internal`` ones are the loader's)."""
    return {
        f.name: f
        for f in dataclasses.fields(cls)
        if f.init and not f.metadata.get("internal", False)
    }


def is_required(f: dataclasses.Field[Any]) -> bool:
    """True when the field has neither a default nor a default factory."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The field's default value (calling its factory), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
        raise TypeError(f"schema: unsupported union {hint!r}")
    return hint, False


def is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def list_item(hint: Any) -> Any | None:
    """``list[X]`` -> ``X``; anything else -> None."""
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0]
    return None


def dict_types(hint: Any) -> tuple[Any, Any] | None:
    """``dict[K, V]`` -> ``(K, V)``; anything else -> None."""
    if typing.get_origin(hint) is dict:
        key, value = typing.get_args(hint)
        return key, value
    return None


_SCALAR_NAMES = {str: "text", int: "integer", float: "number", bool: "true/false"}
_ARTICLE = {str: "", int: "an ", float: "a ", bool: ""}


def describe(hint: Any, article: bool = False) -> str:
    """Human name of a schema type, e.g. ``list of text`` or ``integer or null``."""
    inner, optional = unwrap_optional(hint)
    if inner in _SCALAR_NAMES:
        text = (_ARTICLE[inner] if article else "") + _SCALAR_NAMES[inner]
    elif is_dataclass_type(inner):
        text = ("a " if article else "") + "mapping"
    elif (item := list_item(inner)) is not None:
        text = ("a " if article else "") + "list of " + _plural(item)
    elif (kv := dict_types(inner)) is not None:
        text = ("a " if article else "") + f"mapping of {describe(kv[0])} to {describe(kv[1])}"
    else:
        raise TypeError(f"schema: unsupported type {hint!r}")
    return f"{text} or null" if optional else text


def _plural(hint: Any) -> str:
    inner, _ = unwrap_optional(hint)
    if is_dataclass_type(inner):
        return f"{inner.__name__} mappings"
    if inner is str:
        return "text"
    return describe(hint) + "s"


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """Every settable field below ``cls`` as ``(dotted name, field, type hint)``, depth first.

    Lists of dataclasses (``login``) contribute their item fields as ``login.host`` etc.
    """
    hints = type_hints(cls)
    for name, f in settable_fields(cls).items():
        dotted = f"{prefix}{name}"
        hint = hints[name]
        yield dotted, f, hint
        inner, _ = unwrap_optional(hint)
        item = list_item(inner)
        if is_dataclass_type(inner):
            yield from walk(inner, dotted + ".")
        elif item is not None and is_dataclass_type(item):
            yield from walk(item, dotted + ".")


def dotted_names(cls: type) -> list[str]:
    """All dotted field names of the schema (sections included), e.g. ``node.gpus``."""
    return [dotted for dotted, _, _ in walk(cls)]
