"""Fixtures shared by the whole suite (a real PostgreSQL server per test session), and the
markers that say what a test needs beyond the Python packages.

``make unit`` leaves out every test marked ``database``, ``chart``, ``testbed`` or ``cluster``
(pyproject.toml lists them). A test that uses the ``postgres_server`` fixture, directly or
through another fixture, is marked ``database`` here; the others carry their marker by file.
A test without the marker that tries anyway, to start PostgreSQL or to build or run the Go
binaries, fails saying which marker it lacks, rather than making the unit run slow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from testbed import toolchain
from testbed.postgres import PostgresServer
from testbed.sequent_schema import create_sequent_tables

# The controller harness and its fixtures (app_database, harness), for every test module.
pytest_plugins = ("support.harness",)

# What a test may start, by marker.
MAY_START_POSTGRES = ("database", "cluster")
MAY_USE_GO_BINARIES = ("chart", "cluster")

_running: pytest.Item | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.database)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    # Fixtures of every scope are set up inside an item's protocol, so the guards see whose they are.
    global _running
    _running = item
    try:
        return (yield)
    finally:
        _running = None


def _guarded(what: str, markers: tuple[str, ...], start: Callable[..., Any]) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        item = _running
        if item is not None and not any(item.get_closest_marker(name) for name in markers):
            pytest.fail(
                f"{item.nodeid} {what}, but is marked neither {' nor '.join(markers)}: "
                "mark it, so that `make unit`, which runs without them, leaves it out",
                pytrace=False,
            )
        return start(*args, **kwargs)

    return guard


def pytest_configure(config: pytest.Config) -> None:
    start_postgres = PostgresServer.start.__func__  # type: ignore[attr-defined]
    guard = _guarded("starts PostgreSQL", MAY_START_POSTGRES, start_postgres)
    PostgresServer.start = classmethod(guard)  # type: ignore[method-assign,assignment]
    toolchain.ensure_binaries = _guarded(
        "builds or runs the Go binaries (helm, kubectl, the control plane)",
        MAY_USE_GO_BINARIES,
        toolchain.ensure_binaries,
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh database holding Sequent's tables in ``sequent_schema``."""
    url = postgres_server.create_database()
    with psycopg.connect(url) as conn:
        create_sequent_tables(conn)
    return url
