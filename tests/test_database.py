"""The projector-state protocol against a real PostgreSQL (docs/sequent-protocol.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from projectorset.adapters import database
from projectorset.adapters.database import (
    DatabaseAuthenticationFailed,
    DatabaseReadTimedOut,
    DatabaseUnreachable,
    IllegalProjectorState,
    InvalidDatabaseURI,
    ProjectorStatesBusy,
    SequentDatabase,
    SequentTablesMissing,
)
from projectorset.domain.sequent import ProjectorState
from testbed.postgres import PostgresServer, free_port
from testbed.sequent_schema import create_sequent_tables
from testbed.sequent_schema import projector_rows as rows


@pytest.fixture
def db(database_url: str) -> Iterator[SequentDatabase]:
    database = SequentDatabase(database_url)
    yield database
    database.close()


def test_empty_table_reads_as_first_install(db: SequentDatabase) -> None:
    state = db.read_state()
    assert state.empty
    assert state.replay is None
    assert state.replay_lag is None


def test_each_write_leaves_the_rows_sequent_expects(db: SequentDatabase, database_url: str) -> None:
    db.activate({"PostProjector": 1, "AuthorProjector": 1})
    assert rows(database_url) == {"PostProjector": (1, None, None), "AuthorProjector": (1, None, None)}

    db.register_replaying({"PostProjector": 2, "TagProjector": 1})
    assert rows(database_url) == {
        "PostProjector": (1, None, 2),
        "AuthorProjector": (1, None, None),
        "TagProjector": (None, None, 1),
    }

    db.activate({"PostProjector": 2, "TagProjector": 1}, deactivate=["AuthorProjector"])
    assert rows(database_url) == {
        "PostProjector": (2, None, None),
        "AuthorProjector": (None, None, None),
        "TagProjector": (1, None, None),
    }
    state = db.read_state()
    assert state.projectors["PostProjector"] == ProjectorState("PostProjector", 2, None, None)


def test_abort_clears_replaying_and_activating_but_keeps_active(db: SequentDatabase, database_url: str) -> None:
    db.activate({"PostProjector": 1})
    db.register_replaying({"PostProjector": 2})
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO sequent_schema.projector_states (name, activating_version) VALUES ('TagProjector', 3)"
        )
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO sequent_schema.projector_states (name, replaying_version) VALUES ('OtherAppProjector', 4)"
        )
    db.abort(["PostProjector", "TagProjector"])
    # Only the projectors named: another application's replay in the same schema is left alone.
    assert rows(database_url) == {
        "PostProjector": (1, None, None),
        "TagProjector": (None, None, None),
        "OtherAppProjector": (None, None, 4),
    }


def test_illegal_writes_are_refused_naming_projector_and_versions(db: SequentDatabase, database_url: str) -> None:
    db.activate({"PostProjector": 1})
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE sequent_schema.projector_states SET activating_version = 2 WHERE name = 'PostProjector'")

    with pytest.raises(IllegalProjectorState, match="PostProjector replaying version 3: version 2 is activating"):
        db.register_replaying({"PostProjector": 3})
    with pytest.raises(IllegalProjectorState, match="cannot deactivate PostProjector: version 2 is activating"):
        db.deactivate(["PostProjector"])

    db.abort(["PostProjector"])
    db.register_replaying({"PostProjector": 2})
    with pytest.raises(IllegalProjectorState, match="activate PostProjector version 3: version 2 is replaying"):
        db.activate({"PostProjector": 3})
    with pytest.raises(IllegalProjectorState, match="replaying version 4: version 2 is already replaying"):
        db.register_replaying({"PostProjector": 4})
    # Nothing was written by the refused calls.
    assert rows(database_url) == {"PostProjector": (1, None, 2)}


def test_check_constraint_violation_becomes_a_clear_error(db: SequentDatabase, database_url: str) -> None:
    db.register_replaying({"PostProjector": 2})

    def set_activating_too(conn: psycopg.Connection, current: dict[str, ProjectorState]) -> None:
        conn.execute("UPDATE sequent_schema.projector_states SET activating_version = 2")

    with pytest.raises(IllegalProjectorState, match="replaying_conflicts_with_activating"):
        db._write("register activating", set_activating_too)
    assert rows(database_url) == {"PostProjector": (None, None, 2)}


def test_replay_lag_counts_events_from_continue_replay_at_xact_id(db: SequentDatabase, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        aggregate = conn.execute(
            "INSERT INTO sequent_schema.aggregates VALUES (gen_random_uuid(), 'Post') RETURNING aggregate_id"
        ).fetchone()[0]

        def write_event(sequence: int) -> int:
            row = conn.execute(
                "INSERT INTO sequent_schema.events (aggregate_id, sequence_number, event_type, event_json) "
                "VALUES (%s, %s, 'PostAdded', '{}') RETURNING xact_id",
                (aggregate, sequence),
            ).fetchone()
            return int(row[0])

        for sequence in range(1, 4):
            write_event(sequence)
        snapshot = write_event(4)
        for sequence in range(5, 8):
            write_event(sequence)
        conn.execute(
            "INSERT INTO sequent_schema.replay_states (state, projectors, continue_replay_at_xact_id) "
            "VALUES ('replayed', ARRAY['PostProjector'], %s)",
            (snapshot,),
        )
    state = db.read_state()
    assert state.replay is not None and state.replay.state == "replayed"
    assert state.replay.projectors == ("PostProjector",)
    assert state.replay_lag == 4  # the event at the snapshot and the three after it


def insert_events(url: str, count: int, first_xact_id: int) -> None:
    """``count`` events, one a transaction as far as xact_id tells: first_xact_id, +1, ..."""
    with psycopg.connect(url, autocommit=True) as conn:
        aggregate = conn.execute(
            "INSERT INTO sequent_schema.aggregates (aggregate_id, aggregate_type) "
            "VALUES (gen_random_uuid(), 'Post') RETURNING aggregate_id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO sequent_schema.events (aggregate_id, sequence_number, event_type, event_json, xact_id) "
            "SELECT %s, g, 'PostAdded', jsonb_build_object('title', repeat('x', 40)), %s + g "
            "FROM generate_series(0, %s - 1) g",
            (aggregate, first_xact_id, count),
        )


def start_replay(url: str, state: str, continue_at: int | None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sequent_schema.replay_states (state, projectors, continue_replay_at_xact_id) "
            "VALUES (%s, ARRAY['PostProjector'], %s)",
            (state, continue_at),
        )


def counted_lag(url: str, since: int) -> int:
    with psycopg.connect(url) as conn:
        return int(
            conn.execute("SELECT count(*) FROM sequent_schema.events WHERE xact_id >= %s", (since,)).fetchone()[0]
        )


@pytest.mark.parametrize("behind", [0, 1, 37, 900, 4000])
def test_lag_reads_the_tail_and_matches_a_full_count(db: SequentDatabase, database_url: str, behind: int) -> None:
    """5,000 events over ~100 pages: however many are behind (one page, or tens), the tail read
    finds exactly what a count over the whole table finds."""
    insert_events(database_url, 5000, first_xact_id=10_000)
    since = 10_000 + 5000 - behind
    start_replay(database_url, "optimized", since)
    state = db.read_state()
    assert counted_lag(database_url, since) == behind
    assert state.replay_lag == behind and not state.replay_lag_at_least


def test_lag_counts_every_partition_of_a_partitioned_events_table(database_url: str) -> None:
    """Sequent partitions events by partition_key: each partition has a tail of its own."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        create_sequent_tables(conn, "parted")
        conn.execute("DROP TABLE parted.events")
        conn.execute(
            "CREATE TABLE parted.events (aggregate_id uuid NOT NULL, partition_key text NOT NULL DEFAULT '', "
            "sequence_number integer NOT NULL, event_json jsonb NOT NULL, xact_id bigint) "
            "PARTITION BY RANGE (partition_key)"
        )
        conn.execute(
            "CREATE TABLE parted.events_2025 PARTITION OF parted.events FOR VALUES FROM ('Y2025') TO ('Y2026')"
        )
        conn.execute(
            "CREATE TABLE parted.events_2026 PARTITION OF parted.events FOR VALUES FROM ('Y2026') TO ('Y2027')"
        )
        conn.execute("CREATE TABLE parted.events_default PARTITION OF parted.events DEFAULT")
        for key, first, count in (("Y2025", 1, 3000), ("Y2026", 1, 3000), ("", 2000, 3000)):
            conn.execute(
                "INSERT INTO parted.events SELECT gen_random_uuid(), %s, 1, "
                "jsonb_build_object('title', repeat('x', 40)), %s + g FROM generate_series(0, %s - 1) g",
                (key, first, count),
            )
        conn.execute(
            "INSERT INTO parted.replay_states (state, projectors, continue_replay_at_xact_id) "
            "VALUES ('optimized', ARRAY['PostProjector'], 2500)"
        )
        expected = conn.execute("SELECT count(*) FROM parted.events WHERE xact_id >= 2500").fetchone()[0]
    db = SequentDatabase(database_url, "parted")
    try:
        state = db.read_state()
    finally:
        db.close()
    assert expected == (3000 - 2499) * 2 + 2500
    assert (state.replay_lag, state.replay_lag_at_least) == (expected, False)


def test_lag_is_not_read_before_the_replay_records_where_catch_up_starts(
    db: SequentDatabase, database_url: str
) -> None:
    insert_events(database_url, 10, first_xact_id=1)
    start_replay(database_url, "replaying", None)
    assert db.read_state().replay_lag is None


def test_lag_read_is_bounded_and_then_a_lower_bound(
    db: SequentDatabase, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_events(database_url, 5000, first_xact_id=1)
    start_replay(database_url, "optimized", 1)
    monkeypatch.setattr(database, "LAG_MAX_PAGES", 20)
    state = db.read_state()
    assert state.replay_lag is not None and 0 < state.replay_lag < 5000
    assert state.replay_lag_at_least


def test_read_state_does_not_wait_behind_a_lock_on_projector_states(db: SequentDatabase, database_url: str) -> None:
    """golive holds projector_states in ACCESS EXCLUSIVE mode until it commits: a pass reports
    that instead of waiting for it."""
    db.activate({"PostProjector": 1})
    holder = hold_projector_states_lock(database_url, seconds=3, mode="ACCESS EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(ProjectorStatesBusy, match="locked by another transaction") as raised:
        db.read_state()
    waited = time.monotonic() - started
    holder.join(5)
    print(f"read_state gave up after {waited * 1000:.0f} ms")
    assert raised.value.reason == "ProjectorStatesLocked"
    assert waited < 1.5
    assert db.read_state().projectors["PostProjector"].active_version == 1


def test_slow_read_is_cut_by_the_statement_timeout(database_url: str) -> None:
    db = SequentDatabase(database_url, read_statement_timeout_ms=300)
    try:
        with pytest.raises(DatabaseReadTimedOut, match="statement_timeout"):
            db._read(lambda conn: conn.execute("SELECT pg_sleep(5)"))
        assert db.read_state().empty  # the pool's connection is usable again
    finally:
        db.close()


def test_golive_watch_sees_the_commit_at_once(db: SequentDatabase, database_url: str) -> None:
    """A golive-like transaction locks projector_states, registers active and commits; the watch
    (short reads that wait on the lock) sees the new version right after the commit."""
    db.activate({"PostProjector": 1})
    committed_at: list[float] = []
    locked = threading.Event()

    def golive() -> None:
        with psycopg.connect(database_url) as conn:
            with conn.transaction():
                conn.execute("LOCK TABLE sequent_schema.projector_states IN ACCESS EXCLUSIVE MODE")
                conn.execute("UPDATE sequent_schema.projector_states SET active_version = 2")
                locked.set()
                time.sleep(1.0)
            committed_at.append(time.monotonic())

    thread = threading.Thread(target=golive, daemon=True)
    thread.start()
    assert locked.wait(10)
    busy = 0
    while True:
        try:
            state = db.read_projector_states(lock_timeout_ms=250)
        except ProjectorStatesBusy:
            busy += 1
            continue
        if state.projectors["PostProjector"].active_version == 2:
            seen_at = time.monotonic()
            break
    thread.join(5)
    delay = seen_at - committed_at[0]
    print(f"watch saw the commit {delay * 1000:.1f} ms after it ({busy} reads timed out before)")
    assert busy >= 1  # it did wait behind the lock
    assert delay < 0.25  # within one lock wait: granted at the commit, not found by a later poll


def test_in_progress_replay_is_preferred_over_finished_ones(db: SequentDatabase, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sequent_schema.replay_states (state, projectors) VALUES "
            "('live', ARRAY['A']), ('prepared', ARRAY['B']), ('aborted', ARRAY['C'])"
        )
    replay = db.read_state().replay
    assert replay is not None and (replay.state, replay.projectors) == ("prepared", ("B",))


def hold_projector_states_lock(url: str, seconds: float, mode: str = "ACCESS SHARE") -> threading.Thread:
    """A long event transaction: it read projector_states and keeps its lock for ``seconds``."""
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as conn, conn.transaction():
            conn.execute(f"LOCK TABLE sequent_schema.projector_states IN {mode} MODE")
            ready.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread


def test_waiting_operator_write_never_blocks_live_readers_for_long(db: SequentDatabase, database_url: str) -> None:
    """While an old transaction holds the table, a queued ACCESS EXCLUSIVE request would block every
    new publisher; the 100 ms lock timeout bounds that, and the write still lands by retrying."""
    db.activate({"PostProjector": 1})
    holder = hold_projector_states_lock(database_url, seconds=1.5)
    waits: list[float] = []
    stop = threading.Event()

    def publisher() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                started = time.monotonic()
                with conn.transaction():
                    conn.execute("SELECT name, active_version FROM sequent_schema.projector_states").fetchall()
                waits.append(time.monotonic() - started)
                time.sleep(0.005)

    reader = threading.Thread(target=publisher, daemon=True)
    reader.start()
    started = time.monotonic()
    db.register_replaying({"PostProjector": 2})
    write_took = time.monotonic() - started
    stop.set()
    reader.join(5)
    holder.join(5)

    worst = max(waits)
    print(f"publisher reads: {len(waits)}, worst wait {worst * 1000:.0f} ms; operator write took {write_took:.2f} s")
    # Without the lock timeout the publisher would wait for the whole 1.5 s the holder keeps its lock.
    assert worst < 0.5
    assert write_took >= 1.0  # it really had to wait for the holder, retrying
    assert rows(database_url)["PostProjector"] == (1, None, 2)


def test_write_gives_up_after_total_timeout_and_changes_nothing(database_url: str) -> None:
    db = SequentDatabase(database_url, write_timeout_s=0.5)
    holder = hold_projector_states_lock(database_url, seconds=1.5)
    try:
        with pytest.raises(ProjectorStatesBusy, match="stayed locked"):
            db.register_replaying({"PostProjector": 2})
    finally:
        holder.join(5)
        db.close()
    assert rows(database_url) == {}


def test_wrong_password_is_reported_without_the_secret(database_url: str) -> None:
    wrong = database_url.replace(":test-password@", ":Sup3r-Secret@")
    db = SequentDatabase(wrong, connect_timeout_s=2)
    with pytest.raises(DatabaseAuthenticationFailed) as raised:
        db.read_state()
    db.close()
    # A fixed message: libpq's own text is never echoed (it may quote the connection string).
    assert raised.value.message == "the database refused the credentials in the Secret"
    assert "Sup3r-Secret" not in raised.value.message
    assert wrong not in raised.value.message


def test_unreachable_database_is_reported(database_url: str) -> None:
    url = f"postgresql://app:Sup3r-Secret@127.0.0.1:{free_port()}/app"
    db = SequentDatabase(url, connect_timeout_s=1)
    with pytest.raises(DatabaseUnreachable) as raised:
        db.read_state()
    db.close()
    assert "Sup3r-Secret" not in raised.value.message


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://app:Sup3r-Secret@localhost/app?bogus=1",
        "postgresql://app:Sup3r-Secret@localhost/app?sslmode=maybe",
    ],
)
def test_invalid_uri_is_reported_without_the_secret(uri: str) -> None:
    with pytest.raises(InvalidDatabaseURI) as raised:
        db = SequentDatabase(uri, connect_timeout_s=1)
        try:
            db.read_state()
        finally:
            db.close()
    assert "Sup3r-Secret" not in raised.value.message


def test_missing_sequent_tables_are_reported(postgres_server: PostgresServer) -> None:
    db = SequentDatabase(postgres_server.create_database())
    with pytest.raises(SequentTablesMissing, match="sequent_schema"):
        db.read_state()
    db.close()
