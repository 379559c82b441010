import psycopg
import pytest

from testbed.postgres import PostgresServer

# The test bed's own tests: `make unit` leaves them out, `make test` runs them.
pytestmark = pytest.mark.testbed


def test_database_has_sequent_tables_and_rejects_wrong_password(
    database_url: str, postgres_server: PostgresServer
) -> None:
    with psycopg.connect(database_url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'sequent_schema'"
            )
        }
    assert {"events", "aggregates", "projector_states", "replay_states"} <= tables
    wrong = database_url.replace(":test-password@", ":not-the-password@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)
