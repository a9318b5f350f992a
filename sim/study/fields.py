"""Dotted field paths of the scenario schema, for checking sweep axes and
``set:`` keys before anything runs.

``check_key("network.uplink.bandwith")`` returns why a key names no field of
:class:`sim.study.config.Scenario` (with the nearest valid paths) or ``None`` when it
does.  The schema is walked from the pydantic models (``model_fields`` and each
field's annotation):

* a model's fields by name; a union (a discriminated union of algorithm,
  model, topology or compressor configs included) offers the fields of every
  member, so ``algorithms.0.ratio`` is valid although only some kinds have it;
* a list (or tuple) of anything: an integer index segment (``algorithms.0.lr``,
  ``seeds.1``, ``network.uplink.bandwidth.2``), then the element's fields;
* a dict, ``Any`` or a model that allows extra keys: any key below;
* every prefix of a valid path is valid (``algorithms``, ``network.uplink``:
  the whole value is replaced).

It errs on the side of accepting: a key it accepts can still fail when the
point's scenario is validated (a field of another algorithm kind, an index past
the end of the list), and such a point is reported as failed.
"""
from __future__ import annotations

import difflib
from collections import abc
import functools
import types
import typing
from typing import Any, Union

from pydantic import BaseModel

_ANY = object()          # anything goes below this point
_MAX_DEPTH = 12          # enumeration guard (the schema is not recursive today)
_INDEX = "0"             # how a list index is written in enumerated paths


def _members(tp: Any) -> list[Any]:
    """The concrete types an annotation stands for: Annotated, Optional and
    unions flattened; ``_ANY`` for Any (or something unknown but permissive)."""
    if tp is Any or tp is object:
        return [_ANY]
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        from sim.registry import RegistryUnion
        for meta in getattr(tp, "__metadata__", ()):
            if isinstance(meta, RegistryUnion):      # a registry's union: plugins' kinds included
                return meta.members()
        return _members(typing.get_args(tp)[0])
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out += _members(arg)
        return out
    if isinstance(tp, typing.TypeVar) or isinstance(tp, (str, typing.ForwardRef)):
        return [_ANY]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _open(tp: Any) -> bool:
    """Any key is accepted below a value of this type."""
    if tp is _ANY:
        return True
    if _is_model(tp):
        return tp.model_config.get("extra") == "allow"
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, abc.Mapping)


def _sequence_items(tp: Any) -> list[Any] | None:
    """The element types of a list/tuple/set annotation, or None."""
    origin = typing.get_origin(tp) or tp
    if not isinstance(origin, type) or issubclass(origin, (str, bytes)) or \
            not issubclass(origin, (abc.Sequence, abc.Set)):
        return None
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args or [Any]


def _annotation(info: Any) -> Any:
    """A field's annotation; a registry's union (pydantic keeps its metadata on
    the field) stays an Annotated one, so _members sees its plugins' kinds."""
    from sim.registry import RegistryUnion
    for meta in info.metadata:
        if isinstance(meta, RegistryUnion):
            return typing.Annotated[info.annotation, meta]
    return info.annotation


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """name -> annotation, aliases included."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        out[name] = _annotation(info)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                out[alias] = _annotation(info)
    return out


def _step(types_: list[Any], segment: str) -> list[Any]:
    """The types reachable from any of ``types_`` by one path segment."""
    out: list[Any] = []
    for tp in types_:
        if _open(tp):
            return [_ANY]
        if _is_model(tp):
            fields = _fields(tp)
            if segment in fields:
                out += _members(fields[segment])
            continue
        items = _sequence_items(tp)
        if items is not None and segment.lstrip("-").isdigit():
            for item in items:
                out += _members(item)
    return out


def _root() -> list[Any]:
    from sim.study.config import Scenario
    return [Scenario]


def is_valid(key: str) -> bool:
    """Whether a dotted key names a field (or a part of one) of the scenario."""
    if not key or any(not s for s in key.split(".")):
        return False
    current = _root()
    for segment in key.split("."):
        current = _step(current, segment)
        if not current:
            return False
        if _ANY in current:
            return True
    return True


def field_paths() -> tuple[str, ...]:
    """Every dotted field path of the scenario schema (list indices written as
    ``0``; nothing below dict or ``Any`` fields), sorted; computed again when a
    registry changed (a plugin's kinds bring their fields)."""
    from sim.registry import generation
    return _field_paths(generation())


@functools.lru_cache(maxsize=1)
def _field_paths(generation: int) -> tuple[str, ...]:
    found: set[str] = set()

    def walk(types_: list[Any], prefix: str, depth: int, seen: frozenset) -> None:
        if depth > _MAX_DEPTH:
            return
        children: dict[str, list[Any]] = {}
        for tp in types_:
            if tp is _ANY or _open(tp):
                continue
            if _is_model(tp):
                if tp in seen:
                    continue
                for name, info in tp.model_fields.items():
                    children.setdefault(name, []).extend(_members(_annotation(info)))
                continue
            items = _sequence_items(tp)
            if items is not None:
                for item in items:
                    children.setdefault(_INDEX, []).extend(_members(item))
        models = frozenset(t for t in types_ if _is_model(t))
        for name, sub in children.items():
            path = f"{prefix}{name}"
            found.add(path)
            walk(sub, path + ".", depth + 1, seen | models)

    walk(_root(), "", 0, frozenset())
    return tuple(sorted(found))


def _longest_valid_prefix(segments: list[str]) -> int:
    n = 0
    for i in range(1, len(segments) + 1):
        if not is_valid(".".join(segments[:i])):
            break
        n = i
    return n


def _normal(segments: list[str]) -> list[str]:
    return [_INDEX if s.isdigit() else s for s in segments]


def _children(prefix: list[str]) -> list[str]:
    """The next segments below a (normalised) valid prefix in field_paths()."""
    head = ".".join(prefix)
    out = []
    for p in field_paths():
        parts = p.split(".")
        if len(parts) == len(prefix) + 1 and (not prefix or p.startswith(head + ".")):
            out.append(parts[-1])
    return out


def nearest(key: str, n: int = 3) -> list[str]:
    """The valid field paths closest to ``key`` (the user's list indices kept):
    first the fields next to where ``key`` stops being valid whose names are
    close to the wrong segment, else whole paths close to ``key``."""
    segments = key.split(".")
    keep = _longest_valid_prefix(segments)
    out: list[str] = []
    if keep < len(segments):
        wrong, rest = segments[keep], segments[keep + 1:]
        for name in difflib.get_close_matches(wrong, _children(_normal(segments[:keep])), n=n, cutoff=0.6):
            fixed = [*segments[:keep], name]
            if rest and is_valid(".".join([*fixed, *rest])):
                fixed += rest
            out.append(".".join(fixed))
    if not out:
        indices = iter([s for s in segments if s.isdigit()])
        for p in difflib.get_close_matches(".".join(_normal(segments)), field_paths(), n=n, cutoff=0.75):
            out.append(".".join(next(indices, s) if s == _INDEX else s for s in p.split(".")))
    return out[:n]


def check_key(key: str) -> str | None:
    """None when ``key`` names a field of the scenario; otherwise why not,
    with the nearest valid field paths (or the fields allowed where it goes wrong)."""
    if is_valid(key):
        return None
    segments = key.split(".")
    keep = _longest_valid_prefix(segments)
    where = ".".join(segments[:keep])
    msg = f"{key!r} is not a field of the scenario"
    if where and keep < len(segments):
        msg += f" ({where} has no {segments[keep]!r})"
    near = nearest(key)
    if near:
        return msg + f"; nearest valid: {', '.join(near)}"
    names = sorted(set(_children(_normal(segments[:keep]))), key=lambda s: (s.isdigit(), s))
    if names:
        msg += f"; allowed{' under ' + where if where else ''}: {', '.join(names)}"
    return msg
