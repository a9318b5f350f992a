"""Progress bar over rounds showing simulated time (tqdm, on stderr).

Shown when stderr is a terminal; left out when it is a file or pipe (logs, CI),
or with --quiet."""
from __future__ import annotations

from tqdm import tqdm


class Progress:
    def __init__(self, label: str, total: int, disable: bool = False) -> None:
        self._bar = tqdm(total=total, desc=label, unit="round", disable=True if disable else None, leave=True,
                         dynamic_ncols=True, mininterval=0.5)
        self._last = 0

    def update(self, round: int, sim_time_s: float) -> None:
        self._bar.update(round - self._last)
        self._last = round
        if self._bar.disable:
            return
        self._bar.set_postfix_str(f"sim {sim_time_s:.3f} s", refresh=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
