"""A tiny name -> object registry, so factories are lookups, not if/elif chains.

Every registry in commsim (datasets, models, algorithms, compressors, skip rules,
topologies, ...) is an instance of :class:`Registry`; the conformance tests iterate over them, so a
new entry is tested the moment it is registered.

Plugins (sim/plugins.py, docs/plugins.md) register into the same registries, after
the schema's pydantic models were built.  So a config union of a registry
(:meth:`Registry.config_union`) looks ``kind`` up in the registry when a scenario is
validated: a built-in kind is validated by the static discriminated union, exactly
as before; a kind registered later by its class, with the same strictness (unknown
keys refused); a kind nobody registered is refused naming every registered kind
and how to load a plugin (:data:`PLUGIN_HINT`).
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

# How a kind from a plugin becomes known (appended to "unknown ... kind" messages).
PLUGIN_HINT = ("a kind from a plugin needs the plugin loaded: --plugin FILE_OR_MODULE or "
               "COMMSIM_PLUGINS (see docs/plugins.md)")

_ALL: list["Registry"] = []      # every registry made, in order (snapshots for plugin tests)
_generation = [0]                # bumped by every change to any registry (caches key on it)


def generation() -> int:
    """A number that changes whenever an entry is added to or removed from any registry."""
    return _generation[0]


def all_registries() -> list["Registry"]:
    return list(_ALL)


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # "dataset", "model", ... used in error messages
        self._entries: dict[str, T] = {}
        _ALL.append(self)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            _generation[0] += 1
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
            ) from None

    def get(self, name: str) -> T | None:
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(k, self._entries[k]) for k in self.names()]

    # --- snapshots (plugin tests register into these global registries) -------------
    def snapshot(self) -> dict[str, T]:
        return dict(self._entries)

    def restore(self, snapshot: dict[str, T]) -> None:
        if snapshot != self._entries:
            self._entries = dict(snapshot)
            _generation[0] += 1

    # --- the schema -----------------------------------------------------------------
    def config_union(self, discriminator: str = "kind") -> Any:
        """The pydantic type of a ``{kind: ..., ...}`` entry of this registry (its
        entries are pydantic config classes): a discriminated union of the entries
        registered now, which also accepts the kinds registered later (plugins)."""
        return RegistryUnion(self.kind, self.names, self.get, discriminator).annotated(
            [c for _, c in self.items()])


class RegistryUnion:
    """Pydantic metadata for a discriminated union whose members may grow after
    the models using it were built (see the module docstring).

    ``names()`` lists the registered kinds and ``lookup(kind)`` gives a kind's
    pydantic class (or None).  The members known when the union was made (the
    built-ins) are validated, serialised and described in the JSON schema by the
    ordinary tagged union; the others by their own class."""

    def __init__(self, what: str, names: Callable[[], list[str]], lookup: Callable[[str], Any],
                 discriminator: str = "kind") -> None:
        self.what = what
        self.names = names
        self.lookup = lookup
        self.discriminator = discriminator
        self.static: dict[str, type] = {}

    def annotated(self, classes: list[type]) -> Any:
        from typing import Annotated, Union

        from pydantic import Field
        for cls in classes:
            self.static[cls.model_fields[self.discriminator].default] = cls
        return Annotated[Union[tuple(classes)], Field(discriminator=self.discriminator), self]

    def members(self) -> list[type]:
        """Every class the union accepts now, the static ones first (sim/study/fields.py)."""
        out = list(self.static.values())
        for name in self.names():
            cls = self.lookup(name)
            if cls is not None and cls not in out:
                out.append(cls)
        return out

    def _extra(self) -> list[type]:
        static = set(self.static.values())
        return [c for c in self.members() if c not in static]

    # pydantic hooks
    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic import BaseModel
        from pydantic_core import PydanticCustomError, core_schema

        inner = handler(source)
        static_classes = tuple(self.static.values())
        key = self.discriminator

        def validate(value: Any, next_: Any) -> Any:
            tag = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, dict) and key in value and not (isinstance(tag, str) and tag in self.static):
                cls = self.lookup(tag) if isinstance(tag, str) else None
                if cls is None:
                    tags = ", ".join(repr(n) for n in self.names())
                    raise PydanticCustomError(
                        "union_tag_invalid",
                        "Input tag '{tag}' found using {discriminator} does not match any of the "
                        "expected tags: {expected_tags}",
                        {"discriminator": repr(key), "tag": str(tag), "expected_tags": tags,
                         "registry": self.what})
                return _validate_strict(cls, value)
            if isinstance(value, BaseModel) and type(value) not in static_classes \
                    and type(value) in self._extra():
                return value
            return next_(value)

        def serialize(value: Any, next_: Any, info: Any) -> Any:
            # exact types: a plugin's class may subclass a built-in one (and has its own kind)
            if isinstance(value, BaseModel) and type(value) not in static_classes:
                return value.__pydantic_serializer__.to_python(
                    value, mode=info.mode, by_alias=info.by_alias, exclude_unset=info.exclude_unset,
                    exclude_defaults=info.exclude_defaults, exclude_none=info.exclude_none,
                    round_trip=info.round_trip)
            return next_(value)

        return core_schema.no_info_wrap_validator_function(
            validate, inner,
            serialization=core_schema.wrap_serializer_function_ser_schema(serialize, info_arg=True, schema=inner))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        js = handler(schema)
        extra = self._extra()
        if extra and isinstance(js, dict) and "oneOf" in js:
            js = {**js, "oneOf": list(js["oneOf"])}
            for cls in extra:
                js["oneOf"].append(handler(cls.__pydantic_core_schema__))
        return js


def _validate_strict(cls: Any, value: dict) -> Any:
    """``cls.model_validate(value)``, refusing unknown keys even where the class
    itself would ignore them (a plugin's config: the same strictness as built-ins)."""
    from pydantic import ValidationError
    if cls.model_config.get("extra") != "forbid":
        known: set[str] = set()
        for name, info in cls.model_fields.items():
            known.add(name)
            for alias in (info.alias, info.validation_alias):
                if isinstance(alias, str):
                    known.add(alias)
        extra = [k for k in value if k not in known]
        if extra:
            raise ValidationError.from_exception_data(
                cls.__name__, [{"type": "extra_forbidden", "loc": (k,), "input": value[k]} for k in extra])
    return cls.model_validate(value)
