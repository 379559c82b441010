"""Fixtures shared by the whole suite: a real PostgreSQL server per test session."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from testbed.postgres import PostgresServer
from testbed.sequent_schema import create_sequent_tables


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
