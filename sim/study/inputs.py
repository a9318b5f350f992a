"""Files a scenario names (bandwidth traces, GraphML), pinned by path and content.

A relative path is taken relative to the scenario file's folder.  When a
scenario is loaded, each such path is resolved to an absolute one and the
file's SHA-256 is recorded next to it (``trace_sha256``, ``graphml_sha256``),
so the ``scenario.yaml`` a run writes names exactly the bytes it used:
``replay`` finds the file from any working directory, and refuses, saying so,
when the file changed since the run (a replay of another trace would describe
something other than what ran).  A user may write the hash too, to pin a file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from sim.errors import ConfigError, os_reason

SHA256_PATTERN = r"^[0-9a-f]{64}$"


def pin(path: str, base: Path, recorded_sha256: str | None, field: str, what: str) -> tuple[Path, str]:
    """(absolute path, sha256 of its bytes) of the file a scenario names; a
    missing file, a folder, an unreadable file or one whose hash differs from
    ``recorded_sha256`` is a ConfigError naming ``field``."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = base / p
    p = p.resolve()
    if p.is_dir():
        raise ConfigError(f"{str(p)!r} is a folder; allowed: a {what}", field=field)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} not found (a relative path is taken from the scenario's folder)",
                          field=field)
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"{str(p)!r} cannot be read: {os_reason(exc)}", field=field) from None
    if recorded_sha256 is not None and recorded_sha256 != digest:
        raise ConfigError(f"{p} changed since this scenario was recorded (sha256 {recorded_sha256[:12]}... then, "
                          f"{digest[:12]}... now): the results were made with other bytes; restore the file, or "
                          "drop the *_sha256 field to accept the new one", field=field)
    return p, digest
