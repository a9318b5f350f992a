"""Reading the YAML files people write: every fault is a ConfigError naming the file.

* the path must be a readable regular file (a folder, a missing path or a
  permission problem is named as such, with the errno);
* the bytes must be UTF-8 text (a UTF-16 file or a binary is named, with the
  line of the first bad byte);
* a key given twice in one mapping is refused with both lines (YAML's
  last-value-wins would silently drop the first);
* booleans are YAML 1.2's ``true``/``false`` only.  PyYAML follows YAML 1.1,
  where ``on``, ``off``, ``yes`` and ``no`` are booleans too, so
  ``replay: off`` would arrive as ``False`` in a field whose allowed values are
  words.  Here those four stay words; fields typed ``bool`` still accept them
  (pydantic reads "on"/"off"/"yes"/"no" as booleans), so both kinds of field
  read them as people mean them.

libyaml's parser is used when PyYAML has it (10x faster on a run's resolved
scenario); the constructor and resolver are PyYAML's Python ones either way,
so both give the same data.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sim.errors import ConfigError, os_reason

MAX_YAML_BYTES = 16 * 1024 ** 2   # a scenario or sweep file larger than this is not one a person wrote

_BOOL_TAG = "tag:yaml.org,2002:bool"
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Loader(_Base):  # type: ignore[misc, valid-type]
    """SafeLoader with YAML 1.2 booleans and duplicate keys refused."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
        for first, resolvers in _Base.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue   # `<<: *anchor` merges; explicit keys may override merged ones
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:   # an unhashable key: SafeConstructor names it below
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given at line {first.start_mark.line + 1}); "
                        "a key may appear once in a mapping (the later value would silently replace "
                        "the earlier one)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def loads(text: str, file: str) -> Any:
    """Parse YAML text; malformed YAML is a ConfigError with the line and column."""
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if not isinstance(exc, yaml.constructor.ConstructorError):   # a syntax error
            where = f"malformed YAML at {where}" if where else "malformed YAML"
        raise ConfigError(f"{where}: {problem}" if where else problem, file=file) from None


def read_text(path: str | Path, what: str = "YAML file", limit: int = MAX_YAML_BYTES) -> str:
    """The UTF-8 text of a file people give on the command line; any fault is a
    ConfigError naming the file and what is allowed."""
    file = str(path)
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"is a folder; allowed: the path of a {what}", file=file)
    if not p.exists():
        raise ConfigError(f"no such file; allowed: the path of a {what}", file=file)
    if not p.is_file():
        raise ConfigError(f"not a regular file (a device, socket or pipe); allowed: the path of a {what}", file=file)
    try:
        size = p.stat().st_size
        if size > limit:
            raise ConfigError(f"is {size:,} bytes; a {what} is at most {limit:,} bytes", file=file)
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot be read: {os_reason(exc)}", file=file) from None
    return decode(raw, file, what)


def decode(raw: bytes, file: str, what: str = "YAML file") -> str:
    """UTF-8 bytes to text (a UTF-8 byte-order mark is allowed); anything else is
    a ConfigError saying what the file looks like and where the first bad byte is."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"is UTF-16 text (it starts with a UTF-16 byte-order mark); allowed: a {what} "
                          "in UTF-8: save it as UTF-8", file=file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"is not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} cannot be decoded "
                          f"(a binary file?); allowed: a {what} in UTF-8", file=file) from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ConfigError(f"holds a NUL byte at line {line} (a binary file?); allowed: a {what} in UTF-8",
                          file=file)
    return text.removeprefix("\ufeff")


def read(path: str | Path, what: str = "YAML file") -> Any:
    """A YAML file's data (see the module docstring for what is refused)."""
    return loads(read_text(path, what), str(path))


# --- writing ----------------------------------------------------------------
_SECTIONS: dict[tuple[str, str], str] = {}   # (repr(key), repr(value)) -> its text (see dump_sections)
_SECTIONS_KEPT = 256


def dump_sections(data: dict) -> str:
    """``yaml.safe_dump(data, sort_keys=False)`` of a mapping, bitwise, with the
    text of each top-level entry remembered: a sweep writes one scenario.yaml
    per point, and its points differ in a section or two (the network), so
    the other sections' text is reused instead of emitted again (PyYAML's
    emitter was a tenth of a replayed point).

    Why the pieces are the whole: in block style every top-level entry starts
    on its own line at column 0, so the emitter's output for a mapping is the
    concatenation of its output for each one-entry mapping (tests/test_replay.py
    checks it on every shipped scenario and on generated data).  The one
    exception is shared objects: the representer writes a list or dict met
    twice as an anchor and aliases numbered across the whole document, so data
    with any container met twice is dumped whole.  A section's key is the
    repr of its key and value, which tells apart every value safe_dump writes
    differently (1, 1.0, True and "1"; -0.0 and 0.0).
    """
    if not isinstance(data, dict) or not data or _has_shared(data):
        return yaml.safe_dump(data, sort_keys=False)
    parts = []
    for k, v in data.items():
        key = (repr(k), repr(v))
        text = _SECTIONS.get(key)
        if text is None:
            text = yaml.safe_dump({k: v}, sort_keys=False)
            if len(_SECTIONS) >= _SECTIONS_KEPT:
                _SECTIONS.clear()
            _SECTIONS[key] = text
        parts.append(text)
    return "".join(parts)


def forget_sections() -> None:
    """Drop the remembered section texts (a benchmark's sweeps start as fresh processes do)."""
    _SECTIONS.clear()


def _has_shared(data: Any) -> bool:
    """Whether a container (anything but a scalar) appears twice in ``data``,
    where PyYAML's representer would write an anchor and an alias."""
    seen: set[int] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if node is None or isinstance(node, (str, bytes, bool, int, float)) or (isinstance(node, tuple) and node == ()):
            continue                       # SafeRepresenter.ignore_aliases: never aliased
        if id(node) in seen:
            return True
        seen.add(id(node))
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return False
