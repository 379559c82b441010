"""Which Events to create, which to count on, and which to drop, as client-go's EventRecorder does.

A set that keeps failing says the same thing at every pass: one Event per (object, type, reason,
message) then, whose ``count`` and ``lastTimestamp`` grow (a patch, not a new object); and at most
one new Warning per set a minute, so that a set whose message changes at every pass (a count, a
time) does not fill etcd either. No I/O here: ``kube.KubernetesCluster.emit`` asks and acts.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# client-go's EventCorrelator remembers this many Events (an LRU cache).
REMEMBERED = 4096
NEW_WARNING_SECONDS = 60.0

EventKey = tuple[str, str, str, str, str, str]  # namespace, set, uid, type, reason, message


@dataclass(frozen=True)
class Posted:
    """An Event the API server holds: its name and how many times it was said."""

    name: str
    count: int


class EventAggregator:
    def __init__(self, clock: Callable[[], float] = time.monotonic, remembered: int = REMEMBERED) -> None:
        self.clock = clock
        self.remembered = remembered
        self._posted: OrderedDict[EventKey, Posted] = OrderedDict()
        self._last_warning: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()  # passes of different sets emit from different threads

    def posted(self, key: EventKey) -> Posted | None:
        """The Event this one repeats, if one was posted (and not forgotten since)."""
        with self._lock:
            found = self._posted.get(key)
            if found is not None:
                self._posted.move_to_end(key)
            return found

    def may_create(self, key: EventKey) -> bool:
        """Whether a new Event may be created now: always a Normal one, a Warning only if its set
        had none created in the last minute (counted from now on when it may)."""
        namespace, name, _, type_, _, _ = key
        if type_ != "Warning":
            return True
        now = self.clock()
        with self._lock:
            last = self._last_warning.get((namespace, name))
            if last is not None and now - last < NEW_WARNING_SECONDS:
                return False
            self._last_warning[(namespace, name)] = now
            self._last_warning.move_to_end((namespace, name))
            _trim(self._last_warning, self.remembered)
            return True

    def remember(self, key: EventKey, posted: Posted) -> None:
        with self._lock:
            self._posted[key] = posted
            self._posted.move_to_end(key)
            _trim(self._posted, self.remembered)

    def forget(self, key: EventKey) -> None:
        """The Event is gone (the API server keeps Events an hour): the next repeat creates one."""
        with self._lock:
            self._posted.pop(key, None)


def _trim(entries: OrderedDict[Any, Any], size: int) -> None:
    while len(entries) > size:
        entries.popitem(last=False)
