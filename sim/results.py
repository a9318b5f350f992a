"""Tidy results written as they are produced.

metrics.csv gets one row per evaluation, appended and flushed at once, so an
interrupted run loses nothing already computed.  Floats are written with
``repr`` (shortest round-trip form), so the same run gives the same bytes.
"""
from __future__ import annotations

import csv
from pathlib import Path

METRICS_COLUMNS = ["algorithm", "seed", "round", "sim_time_s", "uploads", "bytes_up", "bytes_down",
                   "train_loss", "test_loss", "test_acc"]
SUMMARY_COLUMNS = ["algorithm", "seed", "model_params", "target_acc", "reached", "time_to_target_s",
                   "rounds_to_target", "uploads_to_target", "bytes_up_to_target", "final_test_acc",
                   "final_sim_time_s", "final_round", "diverged", "skipped_fraction", "server_state_bytes",
                   "compression_rate", "status"]
PHASE_COLUMNS = ["algorithm", "seed", "round", "start_s", "end_s", "download_s", "compute_s", "upload_s",
                 "server_s", "wait_s", "exchange_s", "arrived", "critical_worker"]
LINK_COLUMNS = ["algorithm", "seed", "link", "src", "dst", "bandwidth_bps", "latency_s", "messages",
                "bytes_carried", "busy_s", "utilization"]
RESULT_COLUMNS = {"metrics": METRICS_COLUMNS, "summary": SUMMARY_COLUMNS, "phases": PHASE_COLUMNS,
                  "links": LINK_COLUMNS}


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


class CsvAppender:
    """Append rows with fixed columns to a CSV file, flushing after each row."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = columns
        self._fh = self.path.open("w", newline="")
        self._w = csv.writer(self._fh, lineterminator="\n")
        self._w.writerow(columns)
        self._fh.flush()

    def append(self, row: dict) -> None:
        self._w.writerow([_fmt(row.get(c, "")) for c in self.columns])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write a whole file at once, formatted as :class:`CsvAppender` writes it
    (for results produced in memory, e.g. a replay)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        w.writerows([_fmt(row.get(c, "")) for c in columns] for row in rows)
