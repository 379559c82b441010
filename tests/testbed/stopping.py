"""SIGTERM and SIGHUP stop the test bed's commands the way Ctrl-C does.

`timeout`, a CI runner and systemd stop a command with SIGTERM, a closed terminal with SIGHUP.
Python's default for both ends the process at once: no ``finally`` runs, so the control plane,
PostgreSQL, the operator and the sample app, each in a session of its own, were left running.
Here both raise ``KeyboardInterrupt`` in the main thread instead, which unwinds through the same
``finally`` blocks and context managers as Ctrl-C. Every command's ``__main__`` goes through
``run``, so this is the one place that knows about signals.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _already_stopping(signum: int, frame: FrameType | None) -> None:
    # A second signal (systemd repeats SIGTERM, a terminal closing sends SIGHUP after it) must not
    # cut the cleanup short. A Python-level handler rather than SIG_IGN: an ignored signal would stay
    # ignored in the processes the cleanup itself starts (pg_ctl stop).
    print(f"{signal.Signals(signum).name}: already stopping", file=sys.stderr, flush=True)


def _stop(signum: int, frame: FrameType | None) -> None:
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _already_stopping)
    raise Stopped(signum)


def run(main: Callable[[], int]) -> int:
    """``main``'s exit status; if a signal or Ctrl-C stopped it, 128 + that signal's number, once
    everything it started is stopped."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _stop)
    try:
        return main()
    except KeyboardInterrupt as stopped:
        signum = stopped.signum if isinstance(stopped, Stopped) else signal.SIGINT
        print(f"stopped by {signal.Signals(signum).name}; what it started is stopped", file=sys.stderr, flush=True)
        return 128 + signum
