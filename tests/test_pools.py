"""Connection pools shared per database and closed when idle, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from projectorset.adapters.database import DatabaseConnectionsBusy, SequentDatabase
from projectorset.adapters.pools import APPLICATION_NAME, PoolSet
from projectorset.controller.reconciler import DatabaseRegistry, PassRunner
from projectorset.domain.resources import Owner
from projectorset.domain.sequent import DatabaseState
from projectorset.runtime import handlers
from testbed.postgres import PostgresServer
from testbed.sequent_schema import create_sequent_tables
from testbed.workloads import wait_until

SCHEMAS = [f"app_{number}" for number in range(12)]


@pytest.fixture
def shared_database(postgres_server: PostgresServer) -> str:
    """One database holding twelve applications' event stores, one schema each."""
    url = postgres_server.create_database()
    with psycopg.connect(url) as conn:
        for schema in SCHEMAS:
            create_sequent_tables(conn, schema)
    return url


@pytest.fixture
def registry() -> Iterator[DatabaseRegistry]:
    registry = DatabaseRegistry(PoolSet(max_connections=3, idle_close_s=0.5))
    yield registry
    for number in range(len(SCHEMAS)):
        registry.forget(owner(number))


def owner(number: int) -> Owner:
    return Owner(f"app-{number}", "default", f"uid-{number}")


def operator_connections(url: str) -> int:
    """What a DBA sees: the operator's connections to this database in pg_stat_activity."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_sets_on_one_database_share_a_bounded_pool(shared_database: str, registry: DatabaseRegistry) -> None:
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, operator_connections(shared_database))
            time.sleep(0.01)  # the sampling rate, while the passes run

    sampler = threading.Thread(target=sample)
    sampler.start()

    def busy_set(number: int) -> None:
        database = registry.get(owner(number), shared_database, SCHEMAS[number])
        for _ in range(20):
            database.activate({f"Projector{number}": 1})
            assert database.read_state().projectors[f"Projector{number}"].active_version == 1

    workers = [threading.Thread(target=busy_set, args=(number,)) for number in range(len(SCHEMAS))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    sampler.join()

    assert 1 <= peak <= 3  # twelve busy sets, never more connections than the bound
    assert registry.pools.open_pools() == 1
    # Each set wrote only its own schema.
    with psycopg.connect(shared_database) as conn:
        for number, schema in enumerate(SCHEMAS):
            names = [
                row[0]
                for row in conn.execute(sql.SQL("SELECT name FROM {}.projector_states").format(sql.Identifier(schema)))
            ]
            assert names == [f"Projector{number}"]


def test_an_idle_pool_is_closed_and_reopened_on_the_next_pass(shared_database: str, registry: DatabaseRegistry) -> None:
    database = registry.get(owner(0), shared_database, SCHEMAS[0])
    database.activate({"Projector": 1})
    assert operator_connections(shared_database) == 1

    # The reaper closes it once it has been idle for idle_close_s (0.5 s here).
    wait_until("the idle pool closed", lambda: operator_connections(shared_database) == 0, 10, 0.1)
    assert registry.pools.open_pools() == 0

    assert registry.get(owner(0), shared_database, SCHEMAS[0]).read_state().projectors["Projector"].active_version == 1


def test_a_rotated_secret_moves_the_set_to_a_new_pool_and_closes_the_old(
    postgres_server: PostgresServer, shared_database: str, registry: DatabaseRegistry
) -> None:
    postgres_server.create_role("rotating", "first-password")
    old_uri = _with_credentials(shared_database, "rotating", "first-password")
    new_uri = _with_credentials(shared_database, "rotating", "second-password")
    registry.get(owner(0), old_uri, SCHEMAS[0]).activate({"Projector": 1})

    with psycopg.connect(shared_database, autocommit=True) as conn:
        conn.execute("ALTER ROLE rotating PASSWORD 'second-password'")
    state = registry.get(owner(0), new_uri, SCHEMAS[0]).read_state()

    assert state.projectors["Projector"].active_version == 1
    assert registry.pools.open_pools() == 1  # the old URI's pool is gone with its connection
    assert operator_connections(shared_database) == 1


def test_a_pool_busy_to_its_bound_is_reported_as_load_not_an_outage(shared_database: str) -> None:
    pools = PoolSet(max_connections=1, idle_close_s=60, connect_timeout_s=1)
    database = SequentDatabase(shared_database, SCHEMAS[0], pool=pools.get(shared_database))
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with pools.get(shared_database).connection():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        holding.wait(10)
        with pytest.raises(DatabaseConnectionsBusy, match="all 1 connections"):
            database.read_state()
    finally:
        release.set()
        holder.join()
    assert database.read_state().empty
    pools.discard(pools.get(shared_database).fingerprint)


def test_at_exit_the_running_pass_ends_then_every_pool_is_closed(
    shared_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operator's cleanup handler does once Kopf stopped the sets' loops (SIGTERM): the pass
    still in its thread ends with its connection, the queued ones never start, and then PostgreSQL
    sees every connection of the operator close. Closing first would have the running pass open a
    pool again (or report an outage that never was)."""
    registry = DatabaseRegistry(PoolSet(max_connections=3, idle_close_s=60))
    runner = PassRunner(workers=1)
    monkeypatch.setattr(handlers.runtime, "databases", registry)
    monkeypatch.setattr(handlers.runtime, "pass_runner", runner)
    databases = [registry.get(owner(number), shared_database, SCHEMAS[number]) for number in range(2)]
    databases[1].read_state()
    assert operator_connections(shared_database) == 1
    started = threading.Event()

    def pass_still_reading() -> DatabaseState:
        started.set()
        time.sleep(0.5)  # a pass still at work when the connections close: what is under test
        return databases[0].read_state()

    async def stop() -> tuple[DatabaseState, list[asyncio.Future[DatabaseState]]]:
        running = asyncio.ensure_future(runner.run(pass_still_reading))
        queued = [asyncio.ensure_future(runner.run(pass_still_reading)) for _ in range(3)]
        await asyncio.to_thread(started.wait, 5)
        await handlers.close_connections()
        await asyncio.gather(*queued, return_exceptions=True)
        return await running, queued

    state, queued = asyncio.run(stop())
    assert state.empty  # the running pass read the database, undisturbed
    assert all(future.cancelled() for future in queued)
    wait_until("every connection closed", lambda: operator_connections(shared_database) == 0, 5, 0.05)
    assert registry.pools.open_pools() == 0


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))
