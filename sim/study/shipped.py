"""The ready scenarios and studies that ship with commsim, found by name.

    commsim run quickstart            # scenarios/quickstart.yaml
    commsim sweep uplink_bandwidth    # scenarios/studies/uplink_bandwidth.yaml
    commsim list scenarios            # every shipped name

Where they are: the checkout's ``scenarios/`` folder (also for an editable
install).  A wheel carries the same files as the data-only package
``commsim_scenarios``, which pyproject.toml maps to ``scenarios/``; it is
installed next to ``sim/``.  :func:`folder` looks for either beside ``sim/``.

A name is a file's path below that folder without ``.yaml`` (``quickstart``,
``papers/sasg_mnist``, ``studies/latency``), or its stem alone where no other
shipped file of the same kind has it (``latency``).  The kind is read from the
file: a sweep has ``axes``, a scenario does not.

:func:`resolve` (run, validate, sweep, and the Python API): an existing path
wins; otherwise a shipped name of that kind; an unknown bare name (no folder,
no ``.yaml``) is a ConfigError listing the shipped names.  Anything else is
left as the path it is, so a missing file says "no such file" as before.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml

from sim.errors import ConfigError

Kind = Literal["scenario", "sweep"]
_HERE = Path(__file__).resolve().parents[2]          # the folder that holds sim/
CANDIDATES = (_HERE / "commsim_scenarios", _HERE / "scenarios")   # a wheel's, a checkout's


def folder() -> Path:
    """The folder of the shipped scenarios."""
    for d in CANDIDATES:
        if (d / "quickstart.yaml").is_file():
            return d
    raise ConfigError(f"the shipped scenarios are missing (looked in {', '.join(map(str, CANDIDATES))}); "
                      "reinstall commsim, or give the path of a scenario file")


def _kind(path: Path) -> Kind | None:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    return "sweep" if "axes" in data else "scenario"


def catalogue() -> dict[Kind, dict[str, Path]]:
    """kind -> {name: path}: every long name (path below the folder) and every unique stem."""
    root = folder()
    files: dict[Kind, dict[str, Path]] = {"scenario": {}, "sweep": {}}
    for p in sorted(root.rglob("*.yaml")):
        kind = _kind(p)
        if kind is not None:
            files[kind][p.relative_to(root).with_suffix("").as_posix()] = p
    out: dict[Kind, dict[str, Path]] = {}
    for kind, by_long in files.items():
        stems: dict[str, list[str]] = {}
        for long in by_long:
            stems.setdefault(long.rsplit("/", 1)[-1], []).append(long)
        names = dict(by_long)
        names.update({stem: by_long[longs[0]] for stem, longs in stems.items() if len(longs) == 1})
        out[kind] = names
    return out


def short_names(kind: Kind) -> list[str]:
    """One name per shipped file of ``kind``: the stem where it is unique, else the long name."""
    names = catalogue()[kind]
    seen: dict[Path, str] = {}
    for name, path in names.items():
        if path not in seen or len(name) < len(seen[path]):
            seen[path] = name
    return sorted(seen.values(), key=lambda n: (n.count("/"), n))


def resolve(arg: str | Path, kind: Kind) -> str:
    """The path to read for a command-line argument (see the module docstring)."""
    text = str(arg)
    try:
        if Path(text).exists():
            return text
    except (OSError, ValueError):    # too long for a file name, a NUL byte: not a path here
        pass
    cat = catalogue()
    if text in cat[kind]:
        return str(cat[kind][text])
    other: Kind = "sweep" if kind == "scenario" else "scenario"
    if text in cat[other]:
        command = "sweep" if other == "sweep" else "run (or validate)"
        raise ConfigError(f"{text!r} is a shipped {other}, not a {kind}; use it with `{command}`", file=text)
    if "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        return text
    raise ConfigError(f"no such file, and no shipped {kind} of that name; allowed: a path, or one of "
                      f"{', '.join(short_names(kind))} (`commsim list scenarios`)", file=text)
