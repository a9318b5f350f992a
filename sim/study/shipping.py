"""What a Ray cluster's nodes need to run the jobs, sent with the tasks (Ray's ``runtime_env``).

:func:`runtime_env_for` collects, from the jobs (``Job.paths``: the scenario
file, bandwidth traces, GraphML files and data roots of each point, see
sim/study/inputs.py) and from ``extra_paths`` (more files a job needs, e.g.
user plugins), every path the tasks will read, and lays them out in one
folder that Ray uploads once and unpacks on each node as the tasks' working
directory (``runtime_env["working_dir"]``):

    sim/ algorithms/ topologies/ analysis/ run_sim.py      this commsim (the driver's own code)
    _commsim_files/NNN/NAME                                 each needed file or folder
    _commsim_files/index.json                               driver path -> its place here

The folder holds symbolic links, not copies; Ray zips what they point to.
The driver's code travels too, so every node runs exactly the driver's
commsim (Ray puts the working directory first on the import path, ahead of a
commsim installed there); a node needs only Python and the dependencies
(torch, numpy, ...).

On the node, :func:`node_paths` reads the index and tells where each needed
path is: the copy that was sent, or, for a path that was not sent (larger
than ``SHIP_MAX_BYTES``, or missing on the driver), the same path on the
node (a shared filesystem).  A path found in neither place is a clear error
that names it, its field and the node.  The task then runs with
:func:`sim.study.inputs.located`, so a point reads the copies but records the
driver's paths (its ``scenario.yaml`` is the same on every node).
"""
from __future__ import annotations

import importlib
import itertools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

PROJECT_MODULES = ("sim", "algorithms", "topologies", "analysis", "run_sim")
FILES_DIR = "_commsim_files"
INDEX = "index.json"
SHIP_MAX_BYTES = 200 * 1024 ** 2      # a path larger than this is not sent (Ray's upload limit is 512 MiB in all)
EXCLUDES = ["__pycache__/", "*.pyc", ".git/"]


@dataclass
class Shipment:
    """A runtime_env and what it leaves out."""
    runtime_env: dict
    staging: Path | None                      # the folder of links (remove with close())
    index: dict[str, str] = field(default_factory=dict)
    not_sent: list[tuple[str, str, str]] = field(default_factory=list)   # (field, path, why)

    def close(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def _full(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=True):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _module_path(name: str) -> str:
    mod = importlib.import_module(name)
    file = Path(mod.__file__ or "")
    return str(file.parent if file.name == "__init__.py" else file)


def needed_paths(jobs: Iterable, extra_paths: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(field, path) of what the jobs read (``Job.paths``) and ``extra_paths``
    (field ``extra``), each path once, in the order first named."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for fld, path in itertools.chain(*(getattr(j, "paths", ()) for j in jobs),
                                     (("extra", str(p)) for p in extra_paths)):
        if _full(path) not in seen:
            seen.add(_full(path))
            out.append((fld, path))
    return out


def runtime_env_for(jobs: Iterable, extra_paths: Iterable[str] = (), max_bytes: int = SHIP_MAX_BYTES) -> Shipment:
    """The runtime_env that takes this commsim and every path the jobs need
    (plus ``extra_paths``) to every node; see the module docstring."""
    staging = Path(tempfile.mkdtemp(prefix="commsim-ship-"))
    try:
        for name in PROJECT_MODULES:
            src = _module_path(name)
            os.symlink(src, staging / Path(src).name)
        files = staging / FILES_DIR
        files.mkdir()
        index: dict[str, str] = {}
        not_sent: list[tuple[str, str, str]] = []
        for k, (fld, path) in enumerate(needed_paths(jobs, extra_paths)):
            full = _full(path)
            if not os.path.exists(full):
                not_sent.append((fld, path, "it does not exist on the driver"))
                continue
            size = _size(full)
            if size > max_bytes:
                not_sent.append((fld, path, f"{size / 1024 ** 2:,.0f} MiB is more than the {max_bytes / 1024 ** 2:,.0f} "
                                            "MiB sent with the tasks"))
                continue
            rel = f"{FILES_DIR}/{k:03d}/{os.path.basename(full) or 'root'}"
            (staging / rel).parent.mkdir()
            os.symlink(full, staging / rel)
            index[full] = rel
            index[path] = rel
        (files / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    env = {"working_dir": str(staging), "excludes": list(EXCLUDES)}
    return Shipment(env, staging, index, not_sent)


class MissingInput(Exception):
    """A path a task needs is on neither the node nor in what was sent."""


def node_paths(paths: Iterable[tuple[str, str]], where: str = "") -> dict[str, str]:
    """On a Ray node, in a task: {path as the driver names it: where it is
    here} for the paths that were sent (the others must exist at the same
    path).  Raises MissingInput naming the first path found in neither place."""
    root = Path.cwd()
    index_file = root / FILES_DIR / INDEX
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    out: dict[str, str] = {}
    for fld, path in paths:
        rel = index.get(path) or index.get(_full(path))
        if rel is not None and os.path.exists(root / rel):
            out[path] = out[_full(path)] = str(root / rel)
        elif not os.path.exists(_full(path)):
            node = f" ({where})" if where else ""
            raise MissingInput(
                f"{fld}: {path} is not on this node{node} and was not sent with the task (it exists only on the "
                "driver, or nowhere); allowed: a path the driver can send (at most "
                f"{SHIP_MAX_BYTES / 1024 ** 2:,.0f} MiB each, sim/study/shipping.py), or one at the same absolute "
                "path on every node (a shared filesystem)")
    return out


def warn_not_sent(shipment: Shipment) -> None:
    """One note on stderr per path that was not sent: each node must have it."""
    for fld, path, why in shipment.not_sent:
        print(f"note: {fld}: {path} is not sent to the Ray nodes ({why}); each node must have it at that path",
              file=sys.stderr)
