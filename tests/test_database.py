"""The projector-state protocol against a real PostgreSQL (docs/sequent-protocol.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

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
from testbed.workloads import wait_until


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
def test_lag_matches_a_full_count(db: SequentDatabase, database_url: str, behind: int) -> None:
    """5,000 events: however many are behind (none, one, or most), the lag read finds exactly
    what a count over the whole table finds."""
    insert_events(database_url, 5000, first_xact_id=10_000)
    since = 10_000 + 5000 - behind
    start_replay(database_url, "optimized", since)
    state = db.read_state()
    assert counted_lag(database_url, since) == behind
    assert state.replay_lag == behind and not state.replay_lag_at_least


def test_lag_without_a_command_id_index_is_an_exact_count_over_every_partition(database_url: str) -> None:
    """An events table without Sequent's command_id index (an older schema) gets a full count:
    exact, at the cost of a scan."""
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
    monkeypatch.setattr(database, "LAG_MAX_ROWS", 1000)
    state = db.read_state()
    assert state.replay_lag is not None and 0 < state.replay_lag < 5000
    assert state.replay_lag_at_least


# ---- the lag is never below the truth -----------------------------------------------------------
# Events below are written as Sequent writes them: one transaction each, xact_id and command_id
# from their defaults; the replay's position is taken as Sequent's catch-up takes it.


def catch_up_position(conn: psycopg.Connection) -> int:
    """What Sequent's catch-up records as continue_replay_at_xact_id: its snapshot's xmin."""
    return int(conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0])


def new_aggregate(conn: psycopg.Connection, partition_key: str = "") -> str:
    row = conn.execute(
        "INSERT INTO sequent_schema.aggregates (aggregate_id, aggregate_type, events_partition_key) "
        "VALUES (gen_random_uuid(), 'Post', %s) RETURNING aggregate_id",
        (partition_key,),
    ).fetchone()
    return str(row[0])


def write_event(conn: psycopg.Connection, aggregate: str, partition_key: str = "", count: int = 1) -> None:
    """``count`` events at the aggregate's next sequence numbers, in the caller's transaction;
    about 7 a page, so a few hundred fill tens of pages."""
    conn.execute(
        "INSERT INTO sequent_schema.events (partition_key, aggregate_id, sequence_number, event_type, event_json) "
        "SELECT %(key)s, %(agg)s, m.seq + g, 'PostAdded', jsonb_build_object('title', repeat('x', 1000)) "
        "FROM generate_series(1, %(count)s) g, (SELECT coalesce(max(sequence_number), 0) AS seq "
        "FROM sequent_schema.events WHERE partition_key = %(key)s AND aggregate_id = %(agg)s) m",
        {"key": partition_key, "agg": aggregate, "count": count},
    )


def older_events(url: str, count: int) -> None:
    """``count`` events in one transaction."""
    with psycopg.connect(url) as conn:
        write_event(conn, new_aggregate(conn), count=count)


def write_events(url: str, count: int, partition_key: str = "") -> None:
    """``count`` events, each in a transaction of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        aggregate = new_aggregate(conn, partition_key)
        for _ in range(count):
            write_event(conn, aggregate, partition_key)


def assert_upper_bound(db: SequentDatabase, url: str, since: int) -> int:
    """The operator's lag is complete, never below an exact count, and not far above it."""
    lag, complete = db.replay_lag(since)
    exact = counted_lag(url, since)
    assert complete
    assert exact <= lag <= exact + 10, f"lag read {lag}, exact count {exact}"
    return exact


def walk_trusting(url: str, since: int, open_at_once: int) -> tuple[int, bool]:
    """The operator's walk, told that at most ``open_at_once`` transactions can be open at once."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return database._walk_commands(conn, sql.Identifier("sequent_schema", "events"), since, open_at_once)


def heap_pages(url: str, since: int, table: str = "sequent_schema.events_default") -> tuple[int, int]:
    """(the lowest page holding an event >= since, the highest page holding one before it)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT min((ctid::text::point)[0]) FILTER (WHERE xact_id >= %(since)s), "
                "max((ctid::text::point)[0]) FILTER (WHERE xact_id < %(since)s) FROM {}"
            ).format(sql.SQL(table)),
            {"since": since},
        ).fetchone()
        return int(row[0]), int(row[1])


def test_lag_counts_new_events_that_landed_in_vacuumed_pages(db: SequentDatabase, database_url: str) -> None:
    """Writes rolled back in the middle of the table leave dead rows; VACUUM frees them and later
    events fill those pages, far below pages holding older events: the end of the table is not
    where the new events are."""
    older_events(database_url, 100)
    with psycopg.connect(database_url) as conn:
        write_event(conn, new_aggregate(conn), count=300)
        conn.rollback()
    older_events(database_url, 1500)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM sequent_schema.events_default")
        since = catch_up_position(conn)
    start_replay(database_url, "optimized", since)
    assert assert_upper_bound(db, database_url, since) == 0
    write_events(database_url, 150)
    lowest_new, highest_old = heap_pages(database_url, since)
    assert lowest_new + 100 < highest_old  # the new events sit in freed pages, not at the end
    assert assert_upper_bound(db, database_url, since) == 150
    state = db.read_state()
    assert (state.replay_lag, state.replay_lag_at_least) == (150, False)


def race_writers(url: str, contested: list[str], events: int, *, vacuum: bool) -> int:
    """Four writers, each writing 10 events to an aggregate of its own and one to a contested
    aggregate, in one transaction. Sequent's optimistic locking lets two of them read the same next
    sequence number there: the loser fails on the primary key, its whole transaction rolls back
    (11 dead rows, burnt xact and command ids) and it retries. With ``vacuum``, VACUUM runs
    meanwhile and frees dead rows for the next inserts. Returns how many conflicts happened."""
    stop = threading.Event()
    conflicts = [0]

    def writer(seed: int) -> None:
        with psycopg.connect(url) as conn:
            own = new_aggregate(conn)
            conn.commit()
            for n in range(events):
                while True:
                    try:
                        with conn.transaction():
                            write_event(conn, own, count=10)
                            time.sleep(0.002)  # the others read the same next sequence number meanwhile
                            write_event(conn, contested[(seed + n) % len(contested)])
                        break
                    except psycopg.errors.UniqueViolation:
                        conflicts[0] += 1

    def vacuum_loop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.wait(0.05):
                conn.execute("VACUUM sequent_schema.events_default")

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    if vacuum:
        threads.append(threading.Thread(target=vacuum_loop))
    for thread in threads:
        thread.start()
    for thread in threads[:4]:
        thread.join()
    stop.set()
    for thread in threads[4:]:
        thread.join()
    return conflicts[0]


def test_lag_counts_writers_that_retry_after_conflicts_while_vacuum_runs(
    db: SequentDatabase, database_url: str
) -> None:
    """What a real Sequent application showed (issue 20): retried writes leave dead rows, VACUUM
    frees them, and the events written after the catch-up position land in those pages."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        contested = [new_aggregate(conn) for _ in range(2)]
    assert race_writers(database_url, contested, 20, vacuum=False) > 0
    older_events(database_url, 1500)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM sequent_schema.events_default")
        since = catch_up_position(conn)
    start_replay(database_url, "optimized", since)
    assert race_writers(database_url, contested, 20, vacuum=True) > 0
    lowest_new, highest_old = heap_pages(database_url, since)
    assert lowest_new + 100 < highest_old  # the first new events filled the freed pages
    assert assert_upper_bound(db, database_url, since) == 4 * 20 * 11


def test_lag_counts_every_partition_of_sequents_events_table(db: SequentDatabase, database_url: str) -> None:
    """Sequent partitions events by partition_key; its command_id index is partitioned alike."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for year in ("2025", "2026"):
            conn.execute(
                sql.SQL(
                    "CREATE TABLE sequent_schema.{} PARTITION OF sequent_schema.events FOR VALUES FROM ({}) TO ({})"
                ).format(sql.Identifier(f"events_{year}"), sql.Literal(f"Y{year}"), sql.Literal(f"Y{int(year) + 1}"))
            )
        aggregates = {key: new_aggregate(conn, key) for key in ("Y2025", "Y2026", "")}
        for n in range(300):
            key = ("Y2025", "Y2026", "")[n % 3]
            write_event(conn, aggregates[key], key)
        since = catch_up_position(conn)
        for n in range(120):
            key = ("Y2025", "Y2026", "")[n % 2]  # none in the default partition
            write_event(conn, aggregates[key], key)
        per_partition = dict(
            conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM sequent_schema.events WHERE xact_id >= %s GROUP BY 1",
                (since,),
            ).fetchall()
        )
    start_replay(database_url, "optimized", since)
    assert per_partition == {"sequent_schema.events_2025": 60, "sequent_schema.events_2026": 60}
    assert assert_upper_bound(db, database_url, since) == 120


def test_lag_counts_a_long_transaction_whose_events_commit_late(db: SequentDatabase, database_url: str) -> None:
    """A transaction takes its xact id and first command id early and commits late. Older
    transactions open beside it go on writing above its first command, so neither command order
    nor heap order is xact id order; its events are part of the lag once they are visible."""
    write_events(database_url, 200)
    with psycopg.connect(database_url, autocommit=True) as setup:
        aggregates = [new_aggregate(setup) for _ in range(21)]
    older = [psycopg.connect(database_url) for _ in range(20)]
    late = psycopg.connect(database_url)
    try:
        for conn, aggregate in zip(older, aggregates, strict=False):
            write_event(conn, aggregate)  # each takes its xact id before the late one
        write_event(late, aggregates[20])
        late_xact, late_command = late.execute(
            "SELECT xact_id, command_id FROM sequent_schema.events WHERE xact_id = pg_current_xact_id()::text::bigint"
        ).fetchone()
        for conn, aggregate in zip(older, aggregates, strict=False):
            write_event(conn, aggregate, count=300)
            conn.commit()
        with psycopg.connect(database_url, autocommit=True) as conn:
            since = catch_up_position(conn)  # the late transaction is the oldest one open
            highest_older = conn.execute(
                "SELECT max(command_id) FROM sequent_schema.events WHERE xact_id < %s", (late_xact,)
            ).fetchone()[0]
        assert since == late_xact
        assert late_command < highest_older  # older transactions' commands lie above its first one
        start_replay(database_url, "optimized", since)
        write_events(database_url, 300)
        assert assert_upper_bound(db, database_url, since) == 300  # its events are not visible yet
        write_event(late, aggregates[20], count=9)
        late.commit()
        assert assert_upper_bound(db, database_url, since) == 310
        state = db.read_state()
        assert (state.replay_lag, state.replay_lag_at_least) == (310, False)
        # The walk stops only past more transactions below the position than can be open at once:
        # trusting fewer than the 20 open beside the late one would stop above its first command.
        assert walk_trusting(database_url, since, open_at_once=5) == (309, True)
    finally:
        for conn in [*older, late]:
            conn.close()


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
                time.sleep(1.0)  # golive holds the lock this long: what the readers must wait out
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
            time.sleep(seconds)  # the lock held this long is the case under test

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
                time.sleep(0.005)  # the pace of the publisher's reads

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


def test_lag_past_its_budget_among_a_few_huge_transactions_counts_the_rest_exactly(
    db: SequentDatabase, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk transaction open beside a late one writes thousands of events above the late one's
    first command: the rows read run out before enough distinct transactions were seen, and the
    rest of the table is counted instead of guessed."""
    monkeypatch.setattr(database, "LAG_MAX_ROWS", 2000)
    older_events(database_url, 200)
    bulk, late = psycopg.connect(database_url), psycopg.connect(database_url)
    try:
        with psycopg.connect(database_url, autocommit=True) as setup:
            bulk_aggregate, late_aggregate = new_aggregate(setup), new_aggregate(setup)
        write_event(bulk, bulk_aggregate)
        write_event(late, late_aggregate)
        write_event(bulk, bulk_aggregate, count=3000)
        bulk.commit()
        with psycopg.connect(database_url, autocommit=True) as conn:
            since = catch_up_position(conn)
        write_event(late, late_aggregate, count=4)
        late.commit()
    finally:
        bulk.close()
        late.close()
    assert counted_lag(database_url, since) == 5
    assert db.replay_lag(since) == (5, True)


def test_lag_counts_a_first_command_drawn_a_moment_before_its_xact_id(db: SequentDatabase, database_url: str) -> None:
    """Sequent's store_events first runs INSERT INTO commands, whose identity default draws the
    command id before the row is written, which is when the transaction gets its xact id. Held
    between the two (here a trigger waits on a lock), a writer's command id is older than
    commands of transactions that commit before the catch-up position is taken, while its xact id
    is after it. The range read below the stop still finds its events, even when the walk is told
    a bound of open transactions small enough to stop just above them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A logged sequence gives the caller an xact id every 32 values (to WAL-log ahead); an
        # unlogged one never does, so the held writer surely has none until its row is written.
        conn.execute("ALTER SEQUENCE sequent_schema.commands_id_seq SET UNLOGGED")
        conn.execute(
            "CREATE TABLE sequent_schema.commands (id bigint PRIMARY KEY "
            "DEFAULT nextval('sequent_schema.commands_id_seq'), held boolean NOT NULL DEFAULT false)"
        )
        conn.execute(
            "CREATE FUNCTION sequent_schema.hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.held THEN PERFORM pg_advisory_xact_lock(42); END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER hold BEFORE INSERT ON sequent_schema.commands "
            "FOR EACH ROW EXECUTE FUNCTION sequent_schema.hold()"
        )
        aggregate = new_aggregate(conn)
    write_events(database_url, 100)
    with psycopg.connect(database_url, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(42)")

        def held_writer() -> None:
            with psycopg.connect(database_url) as conn:
                command = conn.execute(
                    "INSERT INTO sequent_schema.commands (held) VALUES (true) RETURNING id"
                ).fetchone()[0]
                conn.execute(
                    "INSERT INTO sequent_schema.events "
                    "(aggregate_id, sequence_number, event_type, event_json, command_id) "
                    "VALUES (%s, 1, 'PostAdded', '{}', %s)",
                    (aggregate, command),
                )

        writer = threading.Thread(target=held_writer)
        writer.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        wait_until(
            "the held writer waiting on the advisory lock", lambda: lock.execute(waiting).fetchone()[0], 30, 0.01
        )
        for _ in range(15):  # commands drawn after the held one, xact ids before the position
            older_events(database_url, 25)
        since = catch_up_position(lock)
        lock.execute("SELECT pg_advisory_unlock(42)")
        writer.join()
    write_events(database_url, 20)
    with psycopg.connect(database_url) as conn:
        held = conn.execute(
            "SELECT command_id, xact_id FROM sequent_schema.events WHERE sequence_number = 1 AND aggregate_id = %s",
            (aggregate,),
        ).fetchone()
        highest_before = conn.execute(
            "SELECT max(command_id) FROM sequent_schema.events WHERE xact_id < %s", (since,)
        ).fetchone()[0]
    assert held[1] >= since and held[0] < highest_before  # its command is older than its xact id
    assert assert_upper_bound(db, database_url, since) == 21
    assert walk_trusting(database_url, since, open_at_once=5) == (21, True)
