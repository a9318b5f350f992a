"""Plugins: a user's own algorithms, compressors, skip rules, models, data sets,
partitions, topologies (and compute models, learning-rate schedules) in their own file or
package, registered through the same registries and decorators as the built-ins
(docs/plugins.md).

Where plugins come from, loaded in this order, each at most once:

1. the ``commsim.plugins`` entry-point group of the installed packages
   (``[project.entry-points."commsim.plugins"] name = "pkg.module"``; an entry
   point naming a function, ``pkg.module:register``, is called after the import);
2. ``COMMSIM_PLUGINS``: paths or module names separated by ``os.pathsep``;
3. ``--plugin FILE_OR_MODULE`` (repeatable) on run, validate, sweep, replay,
   list and check.

A spec ending in ``.py`` or holding a path separator is a file, imported as the
module named by its stem (so it pickles, and Ray's ``py_modules`` finds it under
the same name); anything else is a module name (``importlib.import_module``).

Plugins are never loaded from a scenario: a scenario is data, and running
someone's scenario must not run their code (a ``plugins:`` key is an unknown
key like any other).  A plugin that fails to import is one message naming the
plugin and the error (exit 2); whatever it registered before failing is taken
back.

What was loaded is recorded in each run folder's ``host.yaml`` (``plugins:``:
spec, module, file, sha256 and the kinds it registered), so a replay of that
run (or a sweep resuming it) that lacks a plugin says which one
(:func:`explain_missing`).  Sweeps hand :func:`worker_specs` to their
processes and Ray tasks (sim/study/backends.py), which load them with
:func:`load_specs` before running a point.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sim.errors import ConfigError

ENV_VAR = "COMMSIM_PLUGINS"
ENTRY_POINT_GROUP = "commsim.plugins"
FLAG_HELP = ("import a plugin first: a .py file or an importable module that registers algorithms, compressors, "
             "skip rules, models, data sets, partitions or topologies (repeatable; also COMMSIM_PLUGINS; "
             "docs/plugins.md)")


class PluginError(ConfigError):
    """A plugin that cannot be loaded: one message naming it (exit 2)."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(message, file=plugin)
        self.plugin = plugin

    def __str__(self) -> str:
        return f"plugin {self.plugin}: {self.message}"


@dataclass(frozen=True)
class Plugin:
    spec: str                      # as given (a path, a module name, or an entry point's value)
    how: str                       # "file" | "module" | "entry point"
    source: str                    # "--plugin" | "COMMSIM_PLUGINS" | "entry point NAME"
    module: str                    # its name in sys.modules
    file: str | None               # the file it was imported from (absolute), if any
    sha256: str | None             # of that file
    registered: dict[str, list[str]] = field(default_factory=dict)   # registry kind -> names added

    def describe(self) -> str:
        added = "; ".join(f"{what} {', '.join(names)}" for what, names in self.registered.items()) or "nothing"
        return f"{self.spec} ({self.source}, module {self.module}): {added}"

    def record(self) -> dict[str, Any]:
        """What host.yaml keeps of it."""
        out: dict[str, Any] = {"plugin": self.spec, "how": self.how, "module": self.module}
        if self.file:
            out["file"] = self.file
        if self.sha256:
            out["sha256"] = self.sha256
        out["registered"] = {k: list(v) for k, v in self.registered.items()}
        return out

    def worker_spec(self) -> dict[str, str]:
        """What another process needs to load the same plugin (load_specs)."""
        if self.how == "file":
            return {"how": "file", "file": self.file or self.spec, "module": self.module}
        if self.how == "entry point":
            return {"how": "entry point", "value": self.spec, "name": self.source.split(" ", 2)[-1]}
        return {"how": "module", "module": self.spec}


_LOADED: list[Plugin] = []


def registries() -> dict[str, Any]:
    """Every registry a plugin can add to, by the name its messages use."""
    import algorithms
    from algorithms.schedules import SCHEDULES
    from sim.learn.compute import COMPUTE_MODELS
    from sim.learn.data import DATASETS, PARTITIONS
    from sim.learn.models import MODELS
    from topologies import TOPOLOGIES
    regs = [algorithms.ALGORITHMS, algorithms.COMPRESSORS, algorithms.SKIP_RULES, MODELS, DATASETS, PARTITIONS,
            TOPOLOGIES, COMPUTE_MODELS, SCHEDULES]
    return {r.kind: r for r in regs}


def loaded() -> list[Plugin]:
    """The plugins loaded in this process, in load order."""
    return list(_LOADED)


def worker_specs() -> list[dict[str, str]]:
    return [p.worker_spec() for p in _LOADED]


def facts() -> dict[str, Any]:
    """For host.yaml: ``{"plugins": [...]}`` when any plugin is loaded, else nothing."""
    return {"plugins": [p.record() for p in _LOADED]} if _LOADED else {}


# --- loading -------------------------------------------------------------------
def load_all(specs: list[str] | None = None, env: bool = True, entry_points: bool = True) -> list[Plugin]:
    """Entry points, then COMMSIM_PLUGINS, then ``specs`` (--plugin), each once."""
    out: list[Plugin] = []
    if entry_points:
        for ep in sorted(_entry_points(), key=lambda e: (e.name, e.value)):
            out.append(load_entry_point(ep))
    if env:
        for spec in (os.environ.get(ENV_VAR) or "").split(os.pathsep):
            if spec.strip():
                out.append(load(spec.strip(), source=ENV_VAR))
    for spec in specs or []:
        out.append(load(spec, source="--plugin"))
    return out


def _entry_points() -> list[Any]:
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # noqa: BLE001 - a broken installed distribution must not stop commsim
        return []


def is_file_spec(spec: str) -> bool:
    """A path (ends in .py or holds a separator), not a module name."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def load(spec: str, source: str = "--plugin") -> Plugin:
    """Import one plugin (a file or a module name); returns what it registered.
    Loading the same file or module again returns the first load's record."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(repr(spec), "empty plugin name; allowed: a .py file or an importable module name")
    spec = spec.strip()
    if is_file_spec(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise PluginError(spec, f"no such file ({source}); allowed: a .py file or an importable module name")
        if path.is_dir():
            raise PluginError(spec, f"is a folder ({source}); allowed: a .py file, or a package's module name "
                                    "(with its folder on PYTHONPATH)")
        path = path.resolve()
        for p in _LOADED:
            if p.file == str(path) and p.how == "file":
                return p
        name = path.stem
        if not name.isidentifier():
            raise PluginError(spec, f"{path.name!r} is not a valid module name (it is imported as the module "
                                    "named by the file's stem); allowed: letters, digits and '_', not starting "
                                    "with a digit")
        _refuse_shadowing(spec, name, path)
        return _import(spec, "file", source, name, lambda: _exec_file(name, path), path)
    if not all(part.isidentifier() for part in spec.split(".")):
        raise PluginError(spec, f"not a file (no .py, no path) and not a module name ({source}); allowed: "
                                "a .py file or an importable module name such as mypkg.plugin")
    for p in _LOADED:
        if p.how == "module" and p.spec == spec:
            return p
    return _import(spec, "module", source, spec, lambda: importlib.import_module(spec), None)


def load_entry_point(ep: Any) -> Plugin:
    source = f"entry point {ep.name}"
    for p in _LOADED:
        if p.how == "entry point" and p.spec == ep.value:
            return p

    def run() -> Any:
        obj = ep.load()
        if getattr(ep, "attr", None) and inspect.isfunction(obj):
            obj()                          # pkg.module:register names a function: call it
        return sys.modules[ep.module]

    dist = getattr(getattr(ep, "dist", None), "name", None)
    label = f"{ep.value} (entry point {ep.name!r} of {ENTRY_POINT_GROUP}{', package ' + dist if dist else ''})"
    return _import(ep.value, "entry point", source, ep.module, run, None, label=label)


def _refuse_shadowing(spec: str, name: str, path: Path) -> None:
    """A file named like an imported or installed module would replace it."""
    mod = sys.modules.get(name)
    where = getattr(mod, "__file__", None) if mod is not None else None
    if mod is None:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        where = getattr(found, "origin", None) if found is not None else None
        if found is None:
            return
    if where and (Path(where).resolve() == path or _same_bytes(Path(where), path)):
        return                             # itself, or a copy of it (Ray's py_modules ships one)
    raise PluginError(spec, f"the file's name {name!r} is already the name of the module {where or name} "
                            "(a plugin file is imported by its stem); allowed: a file name no module has, "
                            "e.g. my_" + name + ".py")


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _exec_file(name: str, path: Path) -> Any:
    if name in sys.modules and Path(getattr(sys.modules[name], "__file__", "") or "").resolve() == path:
        return sys.modules[name]           # imported already (by the user's own code)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _snapshot() -> dict[str, dict[str, Any]]:
    return {what: reg.snapshot() for what, reg in registries().items()}


def _import(spec: str, how: str, source: str, module_name: str, run, path: Path | None,
            label: str | None = None) -> Plugin:
    label = label or spec
    for p in _LOADED:                  # the same module by another route (a file and its module name, ...)
        if p.module == module_name and (path is None or p.file == str(path)):
            return p
    regs = registries()
    before = _snapshot()
    had = set(sys.modules)
    try:
        module = run()
    except KeyboardInterrupt:
        _roll_back(before, had, module_name)
        raise
    except BaseException as exc:  # noqa: BLE001 - any fault of the plugin's code is one message
        _roll_back(before, had, module_name)
        if isinstance(exc, ModuleNotFoundError) and how != "file" and \
                exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise PluginError(label, f"no module named {exc.name!r} ({source}); allowed: a .py file or a module "
                                     "importable here (installed, or its folder on PYTHONPATH)") from None
        raise PluginError(label, f"failed to import ({source}): {_describe(exc, path)}") from None
    added = {what: sorted(set(reg.names()) - set(before[what])) for what, reg in regs.items()}
    added = {k: v for k, v in added.items() if v}
    file = getattr(module, "__file__", None)
    file = str(Path(file).resolve()) if file else None
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file and Path(file).is_file() else None
    plugin = Plugin(spec, how, source, module_name, file, digest, added)
    _LOADED.append(plugin)
    return plugin


def _roll_back(before: dict[str, dict[str, Any]], had: set[str], module_name: str) -> None:
    for what, reg in registries().items():
        reg.restore(before[what])
    for name in list(sys.modules):
        if name not in had and (name == module_name or name.startswith(module_name + ".")):
            del sys.modules[name]


def _describe(exc: BaseException, path: Path | None) -> str:
    """``Type: message (file:line)``, the line in the plugin's own code where it failed."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if path is not None and Path(f.filename).resolve() == path] or \
          [f for f in frames if "importlib" not in f.filename and not _ours(f.filename)]
    if own:
        f = own[-1]
        text += f" (at {f.filename}, line {f.lineno})"
    return text


def _ours(filename: str) -> bool:
    root = Path(__file__).resolve().parents[1]
    try:
        Path(filename).resolve().relative_to(root)
    except ValueError:
        return False
    return True


def load_specs(specs: list[dict[str, str]] | tuple = ()) -> None:
    """In a sweep's worker process or Ray task: load the driver's plugins
    (worker_specs) before running a point.  A file plugin that is not at the same
    path on this machine is imported by its module name (Ray's ``py_modules``
    ships the file under it)."""
    from sim.study.inputs import local_path     # on a Ray node: the copy the sweep sent
    for s in specs:
        if s["how"] == "file":
            here = local_path(s["file"])
            if here.is_file():
                load(str(here), source="the sweep's driver")
            else:
                load(s["module"], source=f"the sweep's driver (file {s['file']} shipped as module)")
        elif s["how"] == "entry point":
            ep = importlib.metadata.EntryPoint(s["name"], s["value"], ENTRY_POINT_GROUP)
            load_entry_point(ep)
        else:
            load(s["module"], source="the sweep's driver")


def ray_py_modules() -> list[str]:
    """The file plugins, for a Ray task's ``runtime_env`` ``py_modules``."""
    return [p.file for p in _LOADED if p.how == "file" and p.file]


# --- run folders ----------------------------------------------------------------
def recorded(folder: str | Path, _depth: int = 0) -> list[dict[str, Any]]:
    """The plugins a run folder's host.yaml lists (none if it lists none or is
    unreadable); a replay's folder: those of the run it replays (replay.yaml)."""
    import yaml
    folder = Path(folder)
    try:
        if not (folder / "host.yaml").is_file() and (folder / "replay.yaml").is_file() and _depth < 8:
            source = yaml.safe_load((folder / "replay.yaml").read_text())
            if isinstance(source, dict) and isinstance(source.get("source"), str):
                return recorded(source["source"], _depth + 1)
        data = yaml.safe_load((folder / "host.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return []
    plugins = data.get("plugins") if isinstance(data, dict) else None
    return [p for p in plugins if isinstance(p, dict)] if isinstance(plugins, list) else []


def missing(folder: str | Path) -> list[dict[str, Any]]:
    """The recorded plugins whose kinds are not all registered now."""
    regs = registries()
    out = []
    for p in recorded(folder):
        reg = p.get("registered") or {}
        if not isinstance(reg, dict):
            continue
        if any(what in regs and name not in regs[what] for what, names in reg.items() for name in names or []):
            out.append(p)
    return out


@contextlib.contextmanager
def explain_missing(folder: str | Path) -> Iterator[None]:
    """A ConfigError raised inside (a scenario of that folder failing to
    validate) also names the plugins its run had loaded that are missing now."""
    try:
        yield
    except ConfigError as exc:
        gone = missing(folder)
        if not gone:
            raise
        def spec(p: dict) -> str:     # a file by its path; a module (or an entry point's) by its name
            how = p.get("how")
            return str(p.get("file") if how == "file" else p.get("module") if how == "entry point"
                       else p.get("plugin"))
        names = "; ".join(
            f"{spec(p)} (registered "
            + ", ".join(f"{w} {', '.join(n)}" for w, n in (p.get("registered") or {}).items()) + ")"
            for p in gone)
        hint = " ".join(f"--plugin {spec(p)}" for p in gone)
        raise ConfigError(f"{exc.message}\n  note: {folder} was run with plugin(s) not loaded now: {names}; "
                          f"load them: {hint} (or COMMSIM_PLUGINS)", field=exc.field, file=exc.file) from None


# --- tests ------------------------------------------------------------------------
@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Registries, loaded plugins and plugin modules as they were before (tests:
    plugins register into global registries)."""
    from sim.registry import all_registries
    registries()                       # every registry exists before the snapshot
    snaps = [(r, r.snapshot()) for r in all_registries()]
    plugins = list(_LOADED)
    modules = set(sys.modules)
    try:
        yield
    finally:
        for r, snap in snaps:
            r.restore(snap)
        for p in _LOADED[len(plugins):]:
            for name in list(sys.modules):
                if name not in modules and (name == p.module or name.startswith(p.module + ".")):
                    del sys.modules[name]
        _LOADED[:] = plugins
