"""Reading and writing ``projector_states`` the way Sequent master does (lib/sequent/core/projectors.rb).

Every write but one is an upsert of the columns its method names (registering replaying leaves
``active_version`` as it is) in its own (sub)transaction that first takes
``projector_states`` in ACCESS EXCLUSIVE mode with ``lock_timeout`` 100 ms, so a writer never
queues in front of live publishers for long; on a lock timeout the (sub)transaction is retried
until a total timeout (Sequent's ``projectors_replayer_total_lock_timeout``, 10 s). The lock
timeout covers only that (sub)transaction and is then restored to what it was. The exception is
Sequent's ``deactivate_unknown_projectors!``, a plain update (``sampleapp.rake``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg import sql

from sampleapp.gate import ProjectorState

T = TypeVar("T")

LOCK_TIMEOUT = "100ms"
TOTAL_TIMEOUT_SECONDS = 10.0

Row = Mapping[str, int | None]


def read_states(conn: psycopg.Connection, schema: str) -> list[ProjectorState]:
    rows = conn.execute(
        sql.SQL("SELECT name, active_version, activating_version, replaying_version FROM {}.projector_states").format(
            sql.Identifier(schema)
        )
    ).fetchall()
    return [ProjectorState(*row) for row in rows]


@contextmanager
def lock_timeout(conn: psycopg.Connection, value: str) -> Iterator[None]:
    """Inside a transaction: ``lock_timeout`` is ``value`` for the block only, then restored."""
    row = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    previous = row[0] if row else "0"
    conn.execute("SELECT set_config('lock_timeout', %s, true)", [value])
    yield
    conn.execute("SELECT set_config('lock_timeout', %s, true)", [previous])


def with_lock_retry(conn: psycopg.Connection, work: Callable[[], T], total_timeout: float = TOTAL_TIMEOUT_SECONDS) -> T:
    """Run ``work`` in a (sub)transaction, retried while it fails on a lock timeout."""
    deadline = time.monotonic() + total_timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            with conn.transaction():
                return work()
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"could not take a lock within {total_timeout:g} s ({attempt} attempts)") from None
            time.sleep(min(0.05 * attempt, 0.5) * random.uniform(0.5, 1.0))


def lock_exclusively(conn: psycopg.Connection, tables: Iterable[sql.Composable]) -> None:
    """``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` with a 100 ms lock timeout, retried in a
    subtransaction until the total timeout; the lock is then held until the caller's commit."""

    def work() -> None:
        with lock_timeout(conn, LOCK_TIMEOUT):
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(", ").join(tables)))

    with_lock_retry(conn, work)


def update(conn: psycopg.Connection, schema: str, rows: Mapping[str, Row]) -> None:
    """Sequent's ``update_projector_state``: upsert ``{name: {column: value}}`` under the exclusive
    lock. Inside the caller's transaction it is a subtransaction (the lock is then held until the
    caller commits); on an idle autocommit connection it commits by itself."""
    if not rows:
        return

    def work() -> None:
        with lock_timeout(conn, LOCK_TIMEOUT):
            conn.execute(
                sql.SQL("LOCK TABLE {}.projector_states IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema))
            )
            for name, columns in rows.items():
                _upsert(conn, schema, name, columns)

    with_lock_retry(conn, work)


def _upsert(conn: psycopg.Connection, schema: str, name: str, assignments: Row) -> None:
    columns = list(assignments)
    conn.execute(
        sql.SQL(
            "INSERT INTO {schema}.projector_states (name, {columns}) VALUES (%s, {values}) "
            "ON CONFLICT (name) DO UPDATE SET {updates}, updated_at = now()"
        ).format(
            schema=sql.Identifier(schema),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            updates=sql.SQL(", ").join(
                sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in columns
            ),
        ),
        [name, *assignments.values()],
    )


# The rows each of Sequent's Projectors.register_*! / abort / deactivate methods writes.


def register_replaying(conn: psycopg.Connection, schema: str, versions: Mapping[str, int]) -> None:
    update(conn, schema, {n: {"replaying_version": v, "activating_version": None} for n, v in versions.items()})


def register_activating(conn: psycopg.Connection, schema: str, versions: Mapping[str, int]) -> None:
    update(conn, schema, {n: {"activating_version": v, "replaying_version": None} for n, v in versions.items()})


def register_active(conn: psycopg.Connection, schema: str, versions: Mapping[str, int]) -> None:
    update(
        conn,
        schema,
        {n: {"active_version": v, "activating_version": None, "replaying_version": None} for n, v in versions.items()},
    )


def abort_replaying(conn: psycopg.Connection, schema: str, names: Iterable[str]) -> None:
    update(conn, schema, {n: {"activating_version": None, "replaying_version": None} for n in names})


def deactivate(conn: psycopg.Connection, schema: str, names: Iterable[str]) -> None:
    update(conn, schema, {n: {"active_version": None} for n in names})
