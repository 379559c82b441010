"""Database connections shared by every ProjectorSet on one database, and closed when idle.

Hundreds of ProjectorSets often live on a few PostgreSQL servers. A pool per ProjectorSet
would hold one connection (and a few threads) per set for good, and a server's
``max_connections`` (100 by default) would run out near 100 sets. Here each connection
target (the URI: host, port, database, user and credentials) has one pool, bounded to
``max_size`` connections whatever the number of sets on it; the schema is not part of the
key, since every statement names its schema. A pool nobody used for ``idle_close_s``
seconds is closed entirely (its connections and its worker threads), and opened again on
the next use: a set at rest holds no connection.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

APPLICATION_NAME = "projectorset-operator"
# Well under PostgreSQL's default max_connections (100), which the applications need too.
DEFAULT_MAX_CONNECTIONS = 10
DEFAULT_IDLE_CLOSE_SECONDS = 30.0


def target_fingerprint(conninfo: str) -> str:
    """A stable name for a connection target that reveals nothing of the URI (it holds a password)."""
    return hashlib.sha256(conninfo.encode()).hexdigest()[:16]


def store_fingerprint(conninfo: str, schema: str) -> str | None:
    """Names one event store (server, database and schema) whatever the credentials; never the URI.

    None when the URI cannot be parsed (the set's pass reports that on its own)."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return None
    target = "\0".join(str(parts.get(key) or "") for key in ("host", "hostaddr", "port", "dbname"))
    return hashlib.sha256(f"{target}\0{schema}".encode()).hexdigest()[:16]


class SharedPool:
    """The connections to one target: opened on first use, closed by ``close_if_idle``."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conninfo = conninfo
        self.fingerprint = target_fingerprint(conninfo)
        self.max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._in_use = 0
        self._last_used = clock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._pool is not None

    def _new_pool(self) -> psycopg_pool.ConnectionPool:
        pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            # min_size=0: no connection is opened ahead of need, nor kept for its own sake.
            min_size=0,
            max_size=self.max_size,
            timeout=self._connect_timeout_s,
            # One worker is enough: connections are made on demand, not kept topped up.
            num_workers=1,
            kwargs={
                "connect_timeout": max(1, int(self._connect_timeout_s)),
                "application_name": APPLICATION_NAME,
            },
            open=False,
            name=f"projectorset-{self.fingerprint}",
        )
        pool.open(wait=False)
        return pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool()
            pool = self._pool
            self._in_use += 1
        try:
            with pool.connection() as conn:
                yield conn
        finally:
            with self._lock:
                self._in_use -= 1
                self._last_used = self._clock()

    def saturated(self) -> bool:
        """Whether every allowed connection is open (so a wait for one means load, not an outage)."""
        with self._lock:
            pool = self._pool
        return pool is not None and pool.get_stats().get("pool_size", 0) >= self.max_size

    def close_if_idle(self, idle_s: float) -> bool:
        """Close the pool when nothing used it for ``idle_s`` seconds; True when it was closed."""
        with self._lock:
            if self._pool is None or self._in_use or self._clock() - self._last_used < idle_s:
                return False
            pool, self._pool = self._pool, None
        pool.close()
        return True

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class PoolSet:
    """One ``SharedPool`` per connection target, and a reaper thread that closes idle ones."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_close_s: float = DEFAULT_IDLE_CLOSE_SECONDS,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.max_connections = max_connections
        self.idle_close_s = idle_close_s
        self._connect_timeout_s = connect_timeout_s
        self._pools: dict[str, SharedPool] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._closed = threading.Event()

    def get(self, conninfo: str) -> SharedPool:
        fingerprint = target_fingerprint(conninfo)
        with self._lock:
            pool = self._pools.get(fingerprint)
            if pool is None:
                pool = SharedPool(conninfo, max_size=self.max_connections, connect_timeout_s=self._connect_timeout_s)
                self._pools[fingerprint] = pool
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="pool-reaper", daemon=True)
                self._reaper.start()
            return pool

    def discard(self, fingerprint: str) -> None:
        """Close and forget a target no ProjectorSet uses any more (a rotated Secret, a deleted set)."""
        with self._lock:
            pool = self._pools.pop(fingerprint, None)
        if pool is not None:
            pool.close()

    def close(self) -> int:
        """Close every pool and stop the reaper (the operator is exiting); returns how many were open.

        Each connection is closed as psycopg does (a Terminate message), so the server sees clients
        that left, not connections dropped with the process."""
        self._closed.set()
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        was_open = sum(1 for pool in pools if pool.is_open)
        for pool in pools:
            pool.close()
        return was_open

    def open_pools(self) -> int:
        with self._lock:
            pools = list(self._pools.values())
        return sum(1 for pool in pools if pool.is_open)

    def close_idle(self) -> int:
        with self._lock:
            pools = list(self._pools.values())
        return sum(1 for pool in pools if pool.close_if_idle(self.idle_close_s))

    def _reap(self) -> None:
        while not self._closed.wait(max(1.0, self.idle_close_s / 2)):
            self.close_idle()
