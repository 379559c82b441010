"""Reading and writing ``projector_states`` the way Sequent 9 does.

Every write runs with ``lock_timeout`` 100 ms and takes ``projector_states`` in ACCESS
EXCLUSIVE mode, so a writer never queues in front of live publishers for long; on a lock
timeout the whole transaction is retried until a total timeout (Sequent's default: 10 s).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import psycopg
from psycopg import sql

from sampleapp.gate import ProjectorState

T = TypeVar("T")

LOCK_TIMEOUT = "100ms"
TOTAL_TIMEOUT_SECONDS = 10.0


def read_states(conn: psycopg.Connection, schema: str) -> list[ProjectorState]:
    rows = conn.execute(
        sql.SQL("SELECT name, active_version, activating_version, replaying_version FROM {}.projector_states").format(
            sql.Identifier(schema)
        )
    ).fetchall()
    return [ProjectorState(*row) for row in rows]


def lock(conn: psycopg.Connection, schema: str) -> None:
    """Inside the caller's transaction: bounded wait for the exclusive lock."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    conn.execute(sql.SQL("LOCK TABLE {}.projector_states IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))


def with_lock_retry(conn: psycopg.Connection, work: Callable[[], T], total_timeout: float = TOTAL_TIMEOUT_SECONDS) -> T:
    """Run ``work`` in its own transaction, retried while it fails on a lock timeout."""
    deadline = time.monotonic() + total_timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            with conn.transaction():
                return work()
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"could not lock projector_states within {total_timeout:g} s ({attempt} attempts)"
                ) from None
            time.sleep(min(0.05 * attempt, 0.5) * random.uniform(0.5, 1.0))


def _upsert(conn: psycopg.Connection, schema: str, name: str, assignments: dict[str, int | None]) -> None:
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


# The writes below assume the caller holds the lock (see ``lock``), inside its transaction.


def set_replaying(conn: psycopg.Connection, schema: str, versions: Iterable[tuple[str, int]]) -> None:
    for name, version in versions:
        _upsert(conn, schema, name, {"replaying_version": version, "activating_version": None})


def set_activating(conn: psycopg.Connection, schema: str, versions: Iterable[tuple[str, int]]) -> None:
    for name, version in versions:
        _upsert(conn, schema, name, {"activating_version": version, "replaying_version": None})


def set_active(conn: psycopg.Connection, schema: str, versions: Iterable[tuple[str, int]]) -> None:
    for name, version in versions:
        _upsert(
            conn,
            schema,
            name,
            {"active_version": version, "activating_version": None, "replaying_version": None},
        )


def clear_replaying_and_activating(conn: psycopg.Connection, schema: str, names: Iterable[str]) -> None:
    conn.execute(
        sql.SQL(
            "UPDATE {}.projector_states SET activating_version = NULL, replaying_version = NULL, "
            "updated_at = now() WHERE name = ANY(%s)"
        ).format(sql.Identifier(schema)),
        [list(names)],
    )


def deactivate(conn: psycopg.Connection, schema: str, names: Iterable[str]) -> None:
    conn.execute(
        sql.SQL("UPDATE {}.projector_states SET active_version = NULL, updated_at = now() WHERE name = ANY(%s)").format(
            sql.Identifier(schema)
        ),
        [list(names)],
    )


def write(
    conn: psycopg.Connection,
    schema: str,
    change: Callable[[psycopg.Connection, str], None],
    total_timeout: float = TOTAL_TIMEOUT_SECONDS,
) -> None:
    """One write in its own transaction with Sequent's lock discipline. ``conn`` must be idle."""

    def work() -> None:
        lock(conn, schema)
        change(conn, schema)

    with_lock_retry(conn, work, total_timeout)
