"""Files a scenario names (bandwidth traces, GraphML), pinned by path and content.

A relative path is taken relative to the scenario file's folder.  When a
scenario is loaded, each such path is resolved to an absolute one and the
file's SHA-256 is recorded next to it (``trace_sha256``, ``graphml_sha256``),
so the ``scenario.yaml`` a run writes names exactly the bytes it used:
``replay`` finds the file from any working directory, and refuses, saying so,
when the file changed since the run (a replay of another trace would describe
something other than what ran).  A user may write the hash too, to pin a file.

Where a file is read: :func:`local_path`.  A scenario always names (and
records) the path it has on the machine that planned the run; a Ray task on
another node reads the copy that reached it through ``runtime_env``
(sim/study/shipping.py installs the mapping with :func:`located`), so the
``scenario.yaml`` a point writes is the same on every node.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

from sim.errors import ConfigError, os_reason

SHA256_PATTERN = r"^[0-9a-f]{64}$"

_LOCATED: dict[str, str] = {}      # a path as the driver names it -> where it is on this node


def local_path(path: str | Path) -> Path:
    """Where the file or folder a scenario names as ``path`` is on this machine:
    ``path`` itself, unless this process runs a Ray task that received it (or
    a folder holding it) through ``runtime_env``."""
    if not _LOCATED:
        return Path(path)
    raw = str(path)
    full = os.path.normpath(os.path.abspath(os.path.expanduser(raw)))
    for key in (raw, full):
        if key in _LOCATED:
            return Path(_LOCATED[key])
    for src, dst in _LOCATED.items():              # a file inside a folder that was sent
        if os.path.isabs(src) and full.startswith(src.rstrip(os.sep) + os.sep):
            return Path(dst) / os.path.relpath(full, src)
    return Path(path)


@contextlib.contextmanager
def located(mapping: dict[str, str]) -> Iterator[None]:
    """Within the block, :func:`local_path` maps the paths in ``mapping``."""
    before = dict(_LOCATED)
    _LOCATED.update(mapping)
    try:
        yield
    finally:
        _LOCATED.clear()
        _LOCATED.update(before)


def pin(path: str, base: Path, recorded_sha256: str | None, field: str, what: str) -> tuple[Path, str]:
    """(absolute path, sha256 of its bytes) of the file a scenario names; a
    missing file, a folder, an unreadable file or one whose hash differs from
    ``recorded_sha256`` is a ConfigError naming ``field``."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = base / p
    p = p.resolve()
    here = local_path(p)
    if here.is_dir():
        raise ConfigError(f"{str(p)!r} is a folder; allowed: a {what}", field=field)
    if not here.is_file():
        raise ConfigError(f"{what} {str(p)!r} not found (a relative path is taken from the scenario's folder)",
                          field=field)
    try:
        digest = hashlib.sha256(here.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"{str(p)!r} cannot be read: {os_reason(exc)}", field=field) from None
    if recorded_sha256 is not None and recorded_sha256 != digest:
        raise ConfigError(f"{p} changed since this scenario was recorded (sha256 {recorded_sha256[:12]}... then, "
                          f"{digest[:12]}... now): the results were made with other bytes; restore the file, or "
                          "drop the *_sha256 field to accept the new one", field=field)
    return p, digest


def scenario_inputs(scn, base: str | Path) -> list[tuple[str, str]]:
    """(field, path) of every file and folder a point of ``scn`` reads besides
    the installed code: its scenario file ``base``, the bandwidth traces, the
    GraphML files and a local data set's ``data.root``.  ``scn`` is loaded
    (load_scenario), so the traces and GraphML files are absolute already."""
    out = [("base", str(base))]
    net = scn.network
    for name in ("uplink", "downlink", "server"):
        trace = getattr(getattr(net, name, None), "trace", None)
        if trace:
            out.append((f"network.{name}.trace", trace))
    topo = net.topology
    if getattr(topo, "graphml", None):
        out.append(("network.topology.graphml", topo.graphml))
    for i, edge in enumerate(getattr(topo, "edges", None) or []):
        if getattr(edge, "trace", None):
            out.append((f"network.topology.edges.{i}.trace", edge.trace))
    for k, algo in enumerate(scn.algorithms):
        graph = getattr(algo, "graph", None)
        if graph is not None and graph.kind == "graphml" and graph.file:
            out.append((f"algorithms.{k}.graph.file", graph.file))
    if scn.data.root:
        out.append(("data.root", scn.data.root))
    return out
