"""SIGTERM handled like Ctrl-C, so that `kill PID` (a scheduler's stop, a
container's shutdown) keeps what a run or a sweep wrote and exits 130."""
from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt (once) in this thread, like Ctrl-C; the
    previous handler comes back on exit.  Off the main thread: nothing."""
    fired: list[int] = []

    def interrupt(signum, frame):
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:           # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
