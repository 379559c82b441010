"""The replay stages (``python -m sampleapp.replay``) against a real PostgreSQL, under live writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from sampleapp_tests.helpers import projector_state_rows, run_migrate, stage_env

from sampleapp import store
from sampleapp.config import ConfigurationError, Settings
from sampleapp.gate import PublishRefused
from sampleapp.load import LoadGenerator, verify
from sampleapp.releases import get_release

ACCOUNTS = [f"acct-{n}" for n in range(7)]


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def status(stage, release: str) -> dict:
    return json.loads(ok(stage(release, "status")))


def events_by_account(database_url: str) -> dict[str, list[tuple[int, int]]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT event_json ->> 'account_id', sequence_number, (event_json ->> 'amount')::int "
            "FROM sequent_schema.events ORDER BY 1, 2"
        ).fetchall()
    result: dict[str, list[tuple[int, int]]] = {}
    for account, sequence, amount in rows:
        result.setdefault(account, []).append((sequence, amount))
    return result


def assert_projections_match_events(database_url: str, release_shape: str) -> None:
    """Every event is in the audit log exactly once and the balances are the sums of the events."""
    events = events_by_account(database_url)
    with psycopg.connect(database_url) as conn:
        audit = conn.execute(
            "SELECT account_id, sequence_number, amount FROM view_schema.account_audit_log ORDER BY 1, 2"
        ).fetchall()
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'view_schema' "
                "AND table_name = 'account_balances' ORDER BY ordinal_position"
            )
        ]
        balances = {
            row[0]: row for row in conn.execute(f"SELECT {', '.join(columns[:4])} FROM view_schema.account_balances")
        }
    assert audit == [(a, s, amount) for a, rows in sorted(events.items()) for s, amount in rows]
    assert set(balances) == set(events)
    if release_shape == "v1":
        # Version 1 writes only these; the table may have migration 3's columns (a rollback).
        assert columns[:2] == ["account_id", "balance"]
        assert {a: row[1] for a, row in balances.items()} == {a: sum(x for _, x in r) for a, r in events.items()}
    else:
        assert columns[:4] == ["account_id", "balance", "deposit_count", "last_sequence_number"]
        assert {a: row[1:4] for a, row in balances.items()} == {
            a: (sum(x for _, x in r), len(r), max(s for s, _ in r)) for a, r in events.items()
        }


def migrate_view_schema(stage, release: str) -> None:
    """The release's view-schema migrations, run before prepare (Sequent's workflow)."""
    ok(stage(release, "db:migrate", module="sampleapp.rake"))


def upgrade_by_replay(stage, release: str, projectors: str = "AccountProjector") -> None:
    migrate_view_schema(stage, release)
    ok(stage(release, "prepare", projectors))
    ok(stage(release, "replay", "50", "1"))
    ok(stage(release, "catchup"))
    ok(stage(release, "optimize"))
    ok(stage(release, "golive"))


def test_replay_v1_to_v2_under_concurrent_writes_loses_no_event(database_url: str, app, stage) -> None:
    ok(stage("v1", "--activate", module="sampleapp.migrate"))
    with app("v1") as v1, app("v2") as v2:
        load = LoadGenerator(v1.base_url, threads=3, accounts=7).start()
        try:
            load.wait_for_acks(60)
            # v2's code is refused while v1's AccountProjector is active.
            assert v2.deposit("probe", 1).body["error"] == "DifferentProjectorVersionIsActiveError"

            migrate_view_schema(stage, "v2")
            assert "prepared AccountProjector v2" in ok(stage("v2", "prepare", "AccountProjector"))
            assert projector_state_rows(database_url) == {
                "AccountProjector": (1, None, 2),
                "AuditProjector": (1, None, None),
            }
            load.wait_for_acks(30)
            ok(stage("v2", "replay", "2", "2"))
            replayed = status(stage, "v2")
            assert replayed["state"] == "replayed"
            load.wait_for_acks(30)
            assert status(stage, "v2")["lag"] > 0
            ok(stage("v2", "catchup"))
            assert status(stage, "v2")["state"] == "replayed"
            ok(stage("v2", "optimize"))
            load.wait_for_acks(30)
            ok(stage("v2", "catchup", "1", "1"))
            assert status(stage, "v2")["state"] == "optimized"
            load.wait_for_acks(30)
            assert load.counts()[1] == 0  # nothing refused before golive

            golive_started = time.time()
            assert "live" in ok(stage("v2", "golive"))
            # Right after activation the old code is refused and the new code accepts.
            assert v1.deposit("probe", 1).body["error"] == "DifferentProjectorVersionIsActiveError"
            assert v2.deposit("probe", 1).status == 201
            switched_at = time.time()
            load.url = v2.base_url  # the traffic switch
            load.wait_for_acks(30)
        finally:
            load.stop()
        summary = load.summary()
        assert not load.errors, load.errors[:5]
        assert set(summary["refused"]) <= {"DifferentProjectorVersionIsActiveError"}
        # Refused only between activation and the switch (plus requests already in flight to v1).
        assert all(golive_started <= at <= switched_at + 5 for at, _ in load.refusals)
        print(summary)

    final = status(stage, "v2")
    assert (final["state"], final["lag"]) == ("live", None)
    assert projector_state_rows(database_url) == {
        "AccountProjector": (2, None, None),
        "AuditProjector": (1, None, None),
    }
    # Zero lost: every acknowledged deposit is an event, and nothing else is (bar the probe).
    events = events_by_account(database_url)
    acknowledged = sorted((a.account_id, a.sequence_number, a.amount) for a in load.acks)
    stored = sorted((a, s, x) for a, rows in events.items() if a != "probe" for s, x in rows)
    assert stored == acknowledged
    verdict = verify(database_url, load.acks)
    assert (verdict["lost"], verdict["wrong_balances"], verdict["ok"]) == (0, [], True)
    assert_projections_match_events(database_url, "v2")
    with psycopg.connect(database_url) as conn:
        schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace")}
        archived = conn.execute("SELECT count(*) FROM archive_schema.account_balances").fetchone()
    assert "replay_schema" not in schemas
    assert archived is not None and archived[0] > 0  # the v1 table, kept for inspection


def test_golive_twice_fails_cleanly_and_applies_nothing_twice(database_url: str, app, stage) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as v1:
        for n in range(20):
            assert v1.deposit(ACCOUNTS[n % 3], n + 1).status == 201
        migrate_view_schema(stage, "v2")
        ok(stage("v2", "prepare", "AccountProjector"))
        ok(stage("v2", "replay"))
        for n in range(5):  # left for golive's final catch-up
            assert v1.deposit(ACCOUNTS[n % 3], 100).status == 201
        ok(stage("v2", "optimize"))
        ok(stage("v2", "golive"))
    assert_projections_match_events(database_url, "v2")

    again = stage("v2", "golive")  # nothing is in progress any more
    assert again.returncode == 1
    assert "no replay is in progress; the latest (id 1) is live" in again.stderr
    assert status(stage, "v2")["state"] == "live"
    assert_projections_match_events(database_url, "v2")


def test_stages_refuse_out_of_order_and_unknown_projectors(database_url: str, stage) -> None:
    run_migrate(database_url, "v1", activate=True)
    early = stage("v2", "replay")
    assert early.returncode == 1 and "no replay" in early.stderr
    unknown = stage("v2", "prepare", "NoSuchProjector")
    assert unknown.returncode == 1 and "prepare: unknown projector 'NoSuchProjector'" in unknown.stderr
    migrate_view_schema(stage, "v2")
    ok(stage("v2", "prepare", "AccountProjector"))
    second = stage("v2", "prepare", "AccountProjector")  # the unique index: one replay in progress
    assert second.returncode == 1 and "replay_states_active_replay_idx" in second.stderr
    golive = stage("v2", "golive")
    assert golive.returncode == 1
    assert "going live can only be performed when current state is optimized (replay 1 is prepared)" in golive.stderr
    wrong_code = stage("v1", "replay")  # stages must run with the release that prepared them
    assert wrong_code.returncode == 1 and "do not match" in wrong_code.stderr
    assert status(stage, "v2")["state"] == "prepared"


def test_abort_clears_states_and_drops_the_replay_schema_while_v1_keeps_serving(database_url: str, app, stage) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as v1:
        assert v1.deposit("hank", 5).status == 201
        migrate_view_schema(stage, "v2")
        ok(stage("v2", "prepare", "AccountProjector"))
        ok(stage("v2", "replay"))
        assert "aborted" in ok(stage("v2", "abort"))
        assert v1.deposit("hank", 6).status == 201
        assert v1.account("hank").body["balance"] == 11
    assert status(stage, "v2")["state"] == "aborted"
    assert projector_state_rows(database_url) == {
        "AccountProjector": (1, None, None),
        "AuditProjector": (1, None, None),
    }
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regnamespace('replay_schema')").fetchone() == (None,)
    # A new replay can start after an abort.
    ok(stage("v2", "prepare", "AccountProjector"))


def test_v3_activates_without_replay_and_rollback_to_v1_by_replay(database_url: str, app, stage) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as v1:
        for n in range(15):
            assert v1.deposit(ACCOUNTS[n % 4], n + 1).status == 201
    upgrade_by_replay(stage, "v2")
    # v3 changes no projector: activating the current configuration is enough.
    ok(stage("v3", "--activate", module="sampleapp.migrate"))
    assert projector_state_rows(database_url) == {
        "AccountProjector": (2, None, None),
        "AuditProjector": (1, None, None),
    }
    with app("v3") as v3, app("v1") as v1:
        load = LoadGenerator(v3.base_url, threads=2, accounts=5).start()
        try:
            load.wait_for_acks(20)
            # Rolling back to v1 means replaying AccountProjector at the lower version 1, into
            # the table as it is now (migration 3's columns stay, version 1 leaves them empty).
            migrate_view_schema(stage, "v1")
            ok(stage("v1", "prepare", "AccountProjector"))
            assert projector_state_rows(database_url)["AccountProjector"] == (2, None, 1)
            assert v1.deposit("probe", 1).body["error"] == "DifferentProjectorVersionIsActiveError"
            load.wait_for_acks(20)
            ok(stage("v1", "replay", "3", "1"))
            load.wait_for_acks(20)
            ok(stage("v1", "catchup"))
            ok(stage("v1", "optimize"))
            load.wait_for_acks(20)
            ok(stage("v1", "golive"))
            assert v3.deposit("probe", 1).body["error"] == "DifferentProjectorVersionIsActiveError"
            load.url = v1.base_url
            load.wait_for_acks(20)
        finally:
            load.stop()
        assert not load.errors, load.errors[:5]
    assert verify(database_url, load.acks)["ok"]
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)
    assert_projections_match_events(database_url, "v1")


def test_golive_waits_for_an_in_flight_publisher_and_replays_its_event(database_url: str, app, stage) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as v1:
        assert v1.deposit("early", 5).status == 201
    migrate_view_schema(stage, "v2")
    ok(stage("v2", "prepare", "AccountProjector"))
    ok(stage("v2", "replay"))
    ok(stage("v2", "optimize"))

    # A v1 publisher that has read projector_states and written its event, but not yet committed.
    publisher = psycopg.connect(database_url)
    publisher.execute("SELECT 1")  # open the outer transaction; deposit() runs in a savepoint of it
    schemas = store.Schemas("sequent_schema", "view_schema")
    assert store.deposit(publisher, get_release("v1"), schemas, "late", 77)["projected_by"] == [
        "AccountProjector",
        "AuditProjector",
    ]
    golive = subprocess.Popen(
        [sys.executable, "-m", "sampleapp.replay", "golive"],
        env=stage_env(database_url, "v2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(database_url, autocommit=True) as observer:
            deadline = time.monotonic() + 8
            while not observer.execute(
                "SELECT count(*) > 0 FROM pg_locks "
                "WHERE relation = 'sequent_schema.projector_states'::regclass AND NOT granted"
            ).fetchone()[0]:  # type: ignore[index]
                assert golive.poll() is None, golive.communicate()
                assert time.monotonic() < deadline, "golive never queued for projector_states"
                time.sleep(0.005)
            assert status(stage, "v2")["state"] == "optimized"  # golive cannot pass the publisher
        publisher.commit()
        stdout, stderr = golive.communicate(timeout=60)
        assert golive.returncode == 0, stderr
    finally:
        publisher.close()
        if golive.poll() is None:
            golive.kill()
            golive.wait()
    assert_projections_match_events(database_url, "v2")
    with app("v2") as v2:
        assert v2.account("late").body["balance"] == 77


def test_a_new_projector_is_replayed_and_then_old_code_is_unknown(database_url: str, app, stage) -> None:
    run_migrate(database_url, "v3", activate=True)
    with app("v3") as v3, app("v4") as v4:
        for n in range(9):
            assert v3.deposit(ACCOUNTS[n % 3], n + 1).status == 201
        # v4's extra projector has no row yet: it is skipped, the rest is projected.
        assert v4.deposit("kim", 2).body["projected_by"] == ["AccountProjector", "AuditProjector"]
        upgrade_by_replay(stage, "v4", "DailyTotalsProjector")
        refused = v3.deposit("kim", 1)
        assert (refused.status, refused.body["error"]) == (503, "UnknownActiveProjectorError")
        assert "DailyTotalsProjector" in refused.body["message"]
        assert v4.deposit("kim", 1).body["projected_by"] == [
            "AccountProjector",
            "AuditProjector",
            "DailyTotalsProjector",
        ]
    assert_projections_match_events(database_url, "v2")
    with psycopg.connect(database_url) as conn:
        totals = conn.execute("SELECT sum(total), sum(deposits) FROM view_schema.daily_deposit_totals").fetchone()
    assert totals == (sum(range(1, 10)) + 2 + 1, 11)


SCHEMAS = store.Schemas("sequent_schema", "view_schema")


def deposit_on_own_connection(database_url: str, release: str, account_id: str, amount: int) -> dict[str, Any] | str:
    """One deposit by ``release``'s code; a refusal is returned as Sequent's error name."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            return store.deposit(conn, get_release(release), SCHEMAS, account_id, amount)
        except PublishRefused as refused:
            return refused.error


def locks_held_by_golive(observer: psycopg.Connection) -> set[tuple[str, str]]:
    """The table locks of the session holding ``projector_states`` exclusively (only golive does)."""
    rows = observer.execute(
        "SELECT l.relation::regclass::text, l.mode FROM pg_locks l WHERE l.granted AND l.locktype = 'relation' "
        "AND l.pid IN (SELECT pid FROM pg_locks WHERE relation = 'sequent_schema.projector_states'::regclass "
        "AND mode = 'AccessExclusiveLock' AND granted)"
    ).fetchall()
    return {(relation, mode) for relation, mode in rows}


def writers_waiting_for_projector_states(observer: psycopg.Connection) -> int:
    row = observer.execute(
        "SELECT count(*) FROM pg_locks WHERE relation = 'sequent_schema.projector_states'::regclass AND NOT granted"
    ).fetchone()
    return int(row[0]) if row else 0


def until(condition, what: str, process: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"golive ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_golive_replays_exactly_the_tail_under_its_locks_while_writers_wait_for_its_commit(
    database_url: str, stage
) -> None:
    run_migrate(database_url, "v1", activate=True)
    for n in range(20):
        deposit_on_own_connection(database_url, "v1", ACCOUNTS[n % 7], n + 1)
    migrate_view_schema(stage, "v2")
    ok(stage("v2", "prepare", "AccountProjector"))
    ok(stage("v2", "replay"))
    for n in range(10):
        deposit_on_own_connection(database_url, "v1", ACCOUNTS[n % 7], 100 + n)
    # Catch-up replays the events since the replay's mark one by one, as golive will.
    assert "10 events one by one" in ok(stage("v2", "catchup"))
    ok(stage("v2", "optimize"))
    tail = 40  # committed after the last catch-up: golive's to replay
    for n in range(tail):
        deposit_on_own_connection(database_url, "v1", ACCOUNTS[n % 7], 1000 + n)

    # 50 ms per event keeps golive inside its locks for at least 2 s, time to watch it.
    overhead_ms = 50
    golive = subprocess.Popen(
        [sys.executable, "-m", "sampleapp.replay", "golive"],
        env=stage_env(database_url, "v2", SAMPLEAPP_REPLAY_EVENT_OVERHEAD_MS=str(overhead_ms)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(database_url, autocommit=True) as observer, ThreadPoolExecutor(3) as pool:
            # Sequent's activate!: the replay row (FOR NO KEY UPDATE takes ROW SHARE on its table),
            # then projector_states and the view tables in ACCESS EXCLUSIVE mode, held while it replays.
            expected = {
                ("sequent_schema.replay_states", "RowShareLock"),
                ("sequent_schema.projector_states", "AccessExclusiveLock"),
                ("view_schema.account_balances", "AccessExclusiveLock"),
            }
            until(lambda: expected <= locks_held_by_golive(observer), "golive to hold its locks", golive)
            writers = [
                pool.submit(deposit_on_own_connection, database_url, "v2", ACCOUNTS[0], 5),
                pool.submit(deposit_on_own_connection, database_url, "v2", "new-account", 9),
                pool.submit(deposit_on_own_connection, database_url, "v1", ACCOUNTS[1], 7),
            ]
            until(lambda: writers_waiting_for_projector_states(observer) == 3, "the writers to queue", golive)
            assert not any(writer.done() for writer in writers)
            observer.execute("SET lock_timeout = '50ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):  # readers of the view tables wait too
                observer.execute("SELECT count(*) FROM view_schema.account_balances")
            observer.execute("RESET lock_timeout")
            results = [writer.result(timeout=60) for writer in writers]
        stdout, stderr = golive.communicate(timeout=60)
    finally:
        if golive.poll() is None:
            golive.kill()
            golive.wait()
    assert golive.returncode == 0, stderr
    replayed = re.search(r"replayed the tail of (\d+) events one by one .* writers held back (\d+) ms", stdout)
    assert replayed is not None, stdout
    assert int(replayed.group(1)) == tail
    assert int(replayed.group(2)) >= tail * overhead_ms
    # The writers read projector_states only after golive's commit: v2's code, refused before,
    # is now projected by version 2 into the new tables; v1's, accepted before, is now refused.
    assert [r if isinstance(r, str) else r["projected_by"] for r in results] == [
        ["AccountProjector", "AuditProjector"],
        ["AccountProjector", "AuditProjector"],
        "DifferentProjectorVersionIsActiveError",
    ]
    # Nothing lost, nothing twice: deposit_count and the audit log's primary key would show it.
    assert_projections_match_events(database_url, "v2")
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT balance, deposit_count FROM view_schema.account_balances WHERE account_id = 'new-account'"
        ).fetchone()
    assert row == (9, 1)


@pytest.mark.parametrize("value", ["fast", "-1", "1001"])
def test_replay_event_overhead_must_be_milliseconds(value: str) -> None:
    with pytest.raises(ConfigurationError, match="SAMPLEAPP_REPLAY_EVENT_OVERHEAD_MS"):
        Settings.from_env({"DATABASE_URL": "postgresql:///x", "SAMPLEAPP_REPLAY_EVENT_OVERHEAD_MS": value})
