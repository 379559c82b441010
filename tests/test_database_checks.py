"""Checks before golive (spec.replay.checks) against a real PostgreSQL: what passes, and that a
check can neither write, nor run past its timeout, nor leak the database URI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from projectorset.adapters.database import CheckOutcome, DatabaseUnreachable, SequentDatabase
from projectorset.api import Check
from support.conditions import condition, failed_and_aborted
from support.harness import Harness, serving
from testbed.manifests import sample_projectorset


@pytest.fixture
def app_url(database_url: str) -> str:
    """A database with a live table and its replayed copy, as during a rollout."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA view_schema; CREATE SCHEMA replay_schema")
        for schema in ("view_schema", "replay_schema"):
            conn.execute(f"CREATE TABLE {schema}.posts (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO view_schema.posts SELECT i, 'post ' || i FROM generate_series(1, 5) i")
        conn.execute("INSERT INTO replay_schema.posts SELECT i, 'post ' || i FROM generate_series(1, 4) i")
        conn.execute("INSERT INTO replay_schema.posts VALUES (5, NULL)")
    return database_url


@pytest.fixture
def db(app_url: str) -> Iterator[SequentDatabase]:
    database = SequentDatabase(app_url)
    yield database
    database.close()


def check(db: SequentDatabase, query: str, timeout_seconds: int = 30, name: str = "the-check") -> CheckOutcome:
    [outcome] = db.run_checks([Check(name=name, query=query, timeout_seconds=timeout_seconds)])
    return outcome


def posts(url: str, schema: str = "replay_schema") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {schema}.posts").fetchone()
    assert row is not None
    return int(row[0])


def test_a_check_passes_only_when_it_returns_one_row_whose_first_column_is_true(db: SequentDatabase) -> None:
    same_count = "SELECT (SELECT count(*) FROM replay_schema.posts) = (SELECT count(*) FROM view_schema.posts)"
    assert check(db, same_count) == CheckOutcome("the-check", True, "true")
    assert check(db, "SELECT true, 'anything after the first column'").passed
    no_null = "SELECT count(*) = 0 FROM replay_schema.posts WHERE title IS NULL"
    assert check(db, no_null) == CheckOutcome("the-check", False, "false")
    assert check(db, "SELECT NULL::boolean").result == "NULL"
    assert check(db, "SELECT true WHERE false").result == "no row"
    assert check(db, "SELECT true FROM replay_schema.posts").result == "more than one row"
    assert check(db, "SELECT 1") == CheckOutcome("the-check", False, "1 (int, not a boolean)")
    assert check(db, "SELECT 'true'").result == "true (str, not a boolean)"


def test_checks_run_in_order_and_each_is_judged_alone(db: SequentDatabase) -> None:
    outcomes = db.run_checks(
        [
            Check(name="broken", query="SELEC 1"),
            Check(name="counts", query="SELECT count(*) = 5 FROM replay_schema.posts"),
        ]
    )
    assert [(o.name, o.passed) for o in outcomes] == [("broken", False), ("counts", True)]


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO replay_schema.posts VALUES (6, 'new') RETURNING true",
        "WITH gone AS (DELETE FROM replay_schema.posts RETURNING id) SELECT count(*) > 0 FROM gone",
        "UPDATE replay_schema.posts SET title = 'x' RETURNING true",
        "CREATE TABLE replay_schema.sneaky AS SELECT 1",
        "DROP TABLE replay_schema.posts",
        "TRUNCATE replay_schema.posts",
        "SELECT true; DELETE FROM replay_schema.posts",
        "SET TRANSACTION READ WRITE",
        "COMMIT",
        "DO $$ BEGIN DELETE FROM replay_schema.posts; END $$",
    ],
)
def test_a_check_that_tries_to_write_is_refused_and_writes_nothing(
    db: SequentDatabase, app_url: str, query: str
) -> None:
    outcome = check(db, query)
    assert not outcome.passed, outcome
    assert posts(app_url) == 5
    with psycopg.connect(app_url) as conn:
        assert conn.execute("SELECT to_regclass('replay_schema.sneaky')").fetchone() == (None,)
    # The write is refused by the database itself, and the result says so.
    if query.startswith(("INSERT", "WITH", "UPDATE", "CREATE", "DROP", "TRUNCATE", "DO")):
        assert outcome.result.startswith("ReadOnlySqlTransaction: cannot execute"), outcome.result


def test_two_statements_are_refused_not_run_one_after_the_other(db: SequentDatabase, app_url: str) -> None:
    outcome = check(db, "SELECT true; DELETE FROM replay_schema.posts")
    assert outcome.result == "SyntaxError: cannot insert multiple commands into a prepared statement"
    assert posts(app_url) == 5


def test_a_check_past_its_timeout_is_cancelled_and_fails(db: SequentDatabase) -> None:
    began = time.monotonic()
    outcome = check(db, "SELECT pg_sleep(30) IS NOT NULL", timeout_seconds=1)
    elapsed = time.monotonic() - began
    assert outcome == CheckOutcome(
        "the-check", False, "timed out after 1s: QueryCanceled: canceling statement due to statement timeout"
    )
    assert elapsed < 10


def test_a_check_does_not_queue_behind_an_exclusive_lock(db: SequentDatabase, app_url: str) -> None:
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(app_url) as conn:
            conn.execute("LOCK TABLE replay_schema.posts IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        began = time.monotonic()
        outcome = check(db, "SELECT count(*) = 5 FROM replay_schema.posts", timeout_seconds=60)
        assert time.monotonic() - began < 10
    finally:
        release.set()
        holder.join()
    assert not outcome.passed
    assert outcome.result.startswith("waited more than 2000 ms for a lock: LockNotAvailable:"), outcome.result


def test_invalid_sql_gives_a_result_naming_the_check_and_the_error(db: SequentDatabase) -> None:
    assert check(db, "SELEC 1", name="posts-complete") == CheckOutcome(
        "posts-complete", False, 'SyntaxError: syntax error at or near "SELEC"'
    )
    missing = check(db, "SELECT count(*) = 0 FROM replay_schema.nope")
    assert missing.result == 'UndefinedTable: relation "replay_schema.nope" does not exist'
    assert check(db, "SELECT 1/0 = 1").result == "DivisionByZero: division by zero"


def test_nothing_a_check_leaves_in_its_session_reaches_the_operator(db: SequentDatabase, app_url: str) -> None:
    # A session-level advisory lock would survive a rollback: the checks' own connection is closed.
    assert check(db, "SELECT pg_advisory_lock(4242) IS NOT NULL").passed
    with psycopg.connect(app_url) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(4242)").fetchone() == (True,)
    # The operator's own reads go on as before.
    assert db.read_state().empty


def test_no_result_and_no_error_shows_the_database_uri_or_password(app_url: str) -> None:
    db = SequentDatabase(app_url)
    try:
        queries = [
            "SELECT current_setting('no.such.setting')",
            "SELECT inet_server_port() = 0",
            "SELEC 1",
            "SELECT pg_sleep(5) IS NULL",
        ]
        outcomes = db.run_checks([Check(name=f"c{i}", query=q, timeout_seconds=1) for i, q in enumerate(queries)])
    finally:
        db.close()
    shown = " ".join(o.result for o in outcomes)
    assert "test-password" not in shown and app_url not in shown
    password_shown = check_with_password_in_error(app_url)
    assert "test-password" not in password_shown


def check_with_password_in_error(app_url: str) -> str:
    """A query whose error would echo a string holding the password is still redacted."""
    db = SequentDatabase(app_url)
    try:
        return check(db, "SELECT 'test-password'::int = 1").result
    finally:
        db.close()


def test_an_unreachable_database_raises_instead_of_failing_the_check(app_url: str) -> None:
    wrong = app_url.replace(":test-password@", ":Wr0ng-Pa55word@")
    db = SequentDatabase(wrong)
    try:
        with pytest.raises(Exception) as raised:
            db.run_checks([Check(name="counts", query="SELECT true")])
    finally:
        db.close()
    assert "Wr0ng-Pa55word" not in str(raised.value)
    assert raised.value.__class__.__name__ == "DatabaseAuthenticationFailed"


def test_a_connection_that_breaks_during_a_check_is_an_outage_retried_later(db: SequentDatabase) -> None:
    with pytest.raises(DatabaseUnreachable):
        db.run_checks([Check(name="suicide", query="SELECT pg_terminate_backend(pg_backend_pid())")])


# ---- through the reconciler: real replay stages, a real database, an in-process API ------------

CHECKS = [
    {"name": "balances-replayed", "query": "SELECT count(*) > 0 FROM replay_schema.account_balances"},
    {
        "name": "balances-over-a-million",
        "query": "SELECT bool_and(balance >= 1000000) FROM replay_schema.account_balances",
        "timeoutSeconds": 5,
    },
]


def with_checks(checks: list[dict[str, Any]]) -> dict[str, Any]:
    replay = sample_projectorset("v2")["spec"]["replay"]
    return {**replay, "checks": checks}


def test_a_failing_check_fails_the_rollout_and_aborts_the_replay(harness: Harness) -> None:
    harness.run_until(harness.phase_is("Active"))
    harness.set_spec("v2", replay=with_checks(CHECKS))
    harness.run_until(lambda: failed_and_aborted(harness.status))
    progressing = condition(harness.status, "Progressing")
    assert progressing["reason"] == "CheckFailed"
    assert harness.status["message"].startswith("check balances-over-a-million failed: false")
    assert "version v1 keeps serving" in harness.status["message"]
    assert [(c["name"], c["passed"], c["result"], c["version"], c["attempt"]) for c in harness.status["checks"]] == [
        ("balances-replayed", True, "true", "v2", 1),
        ("balances-over-a-million", False, "false", "v2", 1),
    ]
    warnings = [e for e in harness.cluster.events if e.type == "Warning" and e.reason == "CheckFailed"]
    assert warnings and "check balances-over-a-million failed: false" in warnings[0].message
    assert serving(harness) == "v1"
    assert harness.projector_rows() == {"AccountProjector": (1, None, None), "AuditProjector": (1, None, None)}
    with psycopg.connect(harness.database_url) as conn:
        state = conn.execute("SELECT state FROM sequent_schema.replay_states ORDER BY id DESC LIMIT 1").fetchone()
    assert state == ("aborted",)
    assert not any(name.endswith("-golive") for name in harness.cluster.created_jobs)

    # The data is fixed (here: the check is); a retry runs the checks again and goes live.
    harness.set_spec("v2", replay=with_checks(CHECKS[:1]))
    harness.run_until(lambda: serving(harness) == "v2" and harness.status.get("phase") == "Active")
    assert [(c["name"], c["passed"], c["attempt"]) for c in harness.status["checks"]] == [
        ("balances-replayed", True, 2)
    ]
    passed = [e for e in harness.cluster.events if e.reason == "ChecksPassed"]
    assert passed and passed[-1].message == "checks passed before golive: balances-replayed"


def test_invalid_sql_and_a_write_name_the_check_and_never_show_the_uri(harness: Harness) -> None:
    harness.run_until(harness.phase_is("Active"))
    checks = [
        {"name": "typo", "query": "SELEC count(*) FROM replay_schema.account_balances"},
        {"name": "sneaky-write", "query": "DELETE FROM view_schema.account_balances RETURNING true"},
    ]
    harness.set_spec("v2", replay=with_checks(checks))
    harness.run_until(lambda: harness.status.get("phase") == "Failed")
    message = harness.status["message"]
    assert message.startswith(
        '2 checks failed: typo: SyntaxError: syntax error at or near "SELEC"; '
        "sneaky-write: ReadOnlySqlTransaction: cannot execute DELETE in a read-only transaction"
    ), message
    with psycopg.connect(harness.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM view_schema.account_balances").fetchone()
    assert row is not None and row[0] > 0
    shown = json.dumps(harness.status) + " ".join(e.message for e in harness.cluster.events)
    assert harness.database_url not in shown and "test-password" not in shown
