"""Tidy results written as they are produced.

metrics.csv gets one row per evaluation, appended and flushed at once, so an
interrupted run loses nothing already computed.  Floats are written with
``repr`` (shortest round-trip form), so the same run gives the same bytes.

Every file is written in whole lines: a line goes out in one ``os.write``
call, and if the disk fills up (or the folder turns read-only) part-way, the
file is cut back to its last whole line and :class:`sim.errors.OutputError`
names the path and the errno.  A reader never sees half a row.
"""
from __future__ import annotations

import csv
import io
import itertools
import os
from pathlib import Path

from sim.errors import OutputError

METRICS_COLUMNS = ["algorithm", "seed", "round", "sim_time_s", "uploads", "bytes_up", "bytes_down",
                   "train_loss", "test_loss", "test_acc", "worker_acc_mean", "worker_acc_min", "consensus_distance"]
# The last three are for decentralized algorithms (sim/gossip.py), empty for the others:
# the test accuracy of the workers' own models (mean, worst) and (1/n) sum ||x_i - x_bar||^2.
SUMMARY_COLUMNS = ["algorithm", "seed", "model_params", "target_acc", "reached", "time_to_target_s",
                   "rounds_to_target", "uploads_to_target", "bytes_up_to_target", "final_test_acc",
                   "final_sim_time_s", "final_round", "diverged", "skipped_fraction", "server_state_bytes",
                   "compression_rate", "spectral_gap", "status"]
PHASE_COLUMNS = ["algorithm", "seed", "round", "start_s", "end_s", "download_s", "compute_s", "upload_s",
                 "server_s", "wait_s", "exchange_s", "arrived", "critical_worker"]
LINK_COLUMNS = ["algorithm", "seed", "link", "src", "dst", "bandwidth_bps", "latency_s", "messages",
                "bytes_carried", "busy_s", "utilization"]
# Per-round quantities an algorithm reports about its own math (long format: one
# row per round and quantity), e.g. the sketching methods' recall of the true
# top-k (algorithms/sketched.py).  Empty (the header only) for the others.
DIAGNOSTIC_COLUMNS = ["algorithm", "seed", "round", "quantity", "value"]
# Event-driven algorithms (sim/eventsim.py): one row per applied gradient, keyed by
# the server version it produced.  Empty (the header only) for synchronous ones.
# sim_time_s: when the server processed it; params_sent_s / compute_start_s /
# upload_start_s: when the worker's parameters left the server, when it began
# computing (they arrived) and when it began uploading (the Gantt figure).
UPDATE_COLUMNS = ["algorithm", "seed", "version", "sim_time_s", "worker", "computed_at", "staleness",
                  "step_size", "params_sent_s", "compute_start_s", "upload_start_s"]
RESULT_COLUMNS = {"metrics": METRICS_COLUMNS, "summary": SUMMARY_COLUMNS, "phases": PHASE_COLUMNS,
                  "links": LINK_COLUMNS, "diagnostics": DIAGNOSTIC_COLUMNS, "updates": UPDATE_COLUMNS}


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


class LineFile:
    """A file written in whole lines (see the module docstring).  ``write``
    buffers; ``flush`` sends the buffer in one call, or cuts the file back to
    what it held before and raises OutputError."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as exc:
            raise OutputError(self.path, exc) from None
        self._size = 0          # bytes of whole lines on disk
        self._buf: list[str] = []

    def write(self, text: str) -> None:
        self._buf.append(text)

    def flush(self) -> None:
        if not self._buf:
            return
        data = memoryview("".join(self._buf).encode())
        self._buf = []
        total = len(data)
        try:
            while data:
                data = data[self._raw_write(data):]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise OutputError(self.path, exc) from None
        self._size += total

    def _raw_write(self, data: memoryview) -> int:
        return os.write(self._fd, data)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1


class MemoryLines:
    """A :class:`LineFile` that keeps its lines in memory (a run of the Python API
    without ``out``: nothing is written); ``keep=False`` drops them (the trace)."""

    def __init__(self, keep: bool = True) -> None:
        self._parts: list[str] = []
        self._keep = keep

    def write(self, text: str) -> None:
        if self._keep:
            self._parts.append(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self._parts)


_CSV_PLAIN = frozenset({float, int, str, bool})   # types csv.writer formats as _fmt does


def csv_text(rows: list[list]) -> str:
    """Rows of values as CSV lines (one writer for them all), each value as :func:`_fmt`
    words it.  When every value is a plain float, int, str or bool, csv.writer is given the
    values themselves: it writes a float as repr(float) and anything else as str(), which
    is _fmt (it differs for None and for float subclasses such as numpy's, which take the
    _fmt path); the types are checked by one C-level pass (map(type, ...))."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if _CSV_PLAIN.issuperset(map(type, itertools.chain.from_iterable(rows))):
        w.writerows(rows)
    else:
        w.writerows([[_fmt(v) for v in values] for values in rows])
    return buf.getvalue()


def csv_line(values: list) -> str:
    return csv_text([values])


class CsvAppender:
    """Append rows with fixed columns to a CSV file, each row written (whole) at once."""

    def __init__(self, path: Path | None, columns: list[str], fh: LineFile | MemoryLines | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.columns = columns
        self._fh = fh if fh is not None else LineFile(self.path)
        self._line = io.StringIO()              # one row formatted here, then written whole
        self._w = csv.writer(self._line, lineterminator="\n")
        self._put(columns)

    def _put(self, values: list) -> None:
        self._line.seek(0)
        self._line.truncate()
        self._w.writerow([_fmt(v) for v in values])
        self._fh.write(self._line.getvalue())
        self._fh.flush()

    def append(self, row: dict) -> None:
        self._put([row.get(c, "") for c in self.columns])

    def close(self) -> None:
        self._fh.close()

    def text(self) -> str:
        """What was written, for an appender kept in memory (:class:`MemoryLines`)."""
        return self._fh.getvalue()


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write a whole file at once, formatted as :class:`CsvAppender` writes it
    (for results produced in memory, e.g. a replay)."""
    write_text(path, csv_text([columns, *([row.get(c, "") for c in columns] for row in rows)]))


def write_text(path: Path, text: str) -> None:
    """A whole small file (scenario.yaml, a marker); errors become OutputError."""
    fh = LineFile(path)
    fh.write(text)
    fh.close()
