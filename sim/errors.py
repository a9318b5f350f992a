"""Errors that the CLI turns into one clear message and exit code 2."""
from __future__ import annotations


class ScenarioError(Exception):
    """Bad user input: names the file, the field path and what is allowed.

    ``field`` is a dotted path into the scenario (``network.uplink.bandwidth``,
    ``algorithms.1.kind``) or ``None`` when the whole file is at fault.
    ``str(exc)`` is the message the CLI prints after ``error: `` (and exits 2);
    the Python API (sim/api.py) raises the same exception, so both say the same.
    """

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.file = file

    def with_file(self, file: str) -> "ScenarioError":
        if self.file is None:
            self.file = file
        return self

    def __str__(self) -> str:
        where = self.file or "<scenario>"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


# The name used throughout commsim's own code: one class, so everything raised as a
# ConfigError is caught as the public ScenarioError.
ConfigError = ScenarioError


class DataError(ConfigError):
    """A data set that cannot be read (missing files, wrong format)."""


def os_reason(exc: OSError) -> str:
    """An OSError as people read it: "No space left on device (errno 28 ENOSPC)"."""
    import errno as _errno
    name = _errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc} (errno {exc.errno}{' ' + name if name else ''})"


def refuse_file_out(out, file: str) -> None:
    """--out must be a folder: refuse a path that is a file or lies below one
    (before anything is written; run, replay and sweep)."""
    from pathlib import Path
    out = Path(out)
    for p in [out, *out.parents]:
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"is below {p}, which is a file"
                raise ConfigError(f"--out {out} {what}; allowed: a folder", field="--out", file=file)
            return


class OutputError(Exception):
    """Results could not be written (a read-only folder, a full disk): the CLI
    prints one line naming the path and the errno and exits 1.  What was
    written before stays whole (sim/study/results.py writes whole lines)."""

    def __init__(self, path, exc: OSError) -> None:
        self.path = str(path)
        self.errno = exc.errno
        self.reason = os_reason(exc)
        super().__init__(f"cannot write {self.path}: {self.reason}")


def interrupted_by(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a KeyboardInterrupt (Ctrl-C,
    or SIGTERM turned into one).  Ctrl-C landing inside a torch.func transform can
    surface as a RuntimeError from functorch's own clean-up ("dynamicLayerStack"),
    with the KeyboardInterrupt as its context: the run was interrupted, not failed."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
