"""The sample app behaves as Sequent master does (spec/lib/sequent/migrations/projectors_replayer_spec.rb
and the replayer, publisher and rake tasks it tests), on a real PostgreSQL.

One test per behaviour; each asserts what replay_states, projector_states and the exit code say.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sampleapp_tests.helpers import (
    StageResult,
    projector_state_rows,
    replay_state,
    run_migrate,
    run_stage,
    settings_for,
    stage_env,
)

from sampleapp import manifests, store
from sampleapp.gate import PublishRefused
from sampleapp.releases import get_release
from sampleapp.replay import Replayer, ReplayError
from sampleapp.seed import seed

SCHEMAS = store.Schemas("sequent_schema", "view_schema")
REPLAY = "sequent:projectors:replay:"


def rake(database_url: str, release: str, *tasks: str, env: dict[str, str] | None = None) -> StageResult:
    return run_stage(database_url, release, *tasks, module="sampleapp.rake", env=env)


def rake_in(
    release_directory: Path, database_url: str, release: str, *tasks: str, env: dict[str, str] | None = None
) -> StageResult:
    """A rake task run from the release's directory (where ``sequent:db:migrate`` dumps the schema)."""
    completed = subprocess.run(
        [sys.executable, "-m", "sampleapp.rake", *tasks],
        env=stage_env(database_url, release) if env is None else env,
        cwd=release_directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return StageResult(completed.returncode, completed.stdout, completed.stderr)


def ok(result: StageResult) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def failed(result: StageResult, message: str) -> str:
    assert result.returncode == 1, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert message in result.stderr, result.stderr
    return result.stderr


def start(database_url: str, release: str, task: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sampleapp.rake", task],
        env=stage_env(database_url, release),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(*processes: subprocess.Popen[str] | None) -> None:
    """Kill the ones still running (a test that failed half-way)."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def deposit(database_url: str, release: str, account: str, amount: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        store.deposit(conn, get_release(release), SCHEMAS, account, amount)


def v1_serving(database_url: str, deposits: int = 6) -> None:
    """v1 migrated and active, with deposits over three accounts."""
    run_migrate(database_url, "v1", activate=True)
    for n in range(deposits):
        deposit(database_url, "v1", f"acct-{n % 3}", n + 1)


def prepared_v2(database_url: str) -> None:
    """v1 serving; v2's view-schema migration run and AccountProjector v2 prepared."""
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))
    ok(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"))


def state(database_url: str) -> str | None:
    row = replay_state(database_url)
    return None if row is None else row["state"]


def states(database_url: str) -> list[tuple[int, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id, state FROM sequent_schema.replay_states ORDER BY id")
        return [(row[0], row[1]) for row in rows]


def execute(database_url: str, statement: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement.encode())


def schema_exists(database_url: str, schema: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", [schema]).fetchone()
    return bool(row and row[0])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def waiting_on_a_lock(database_url: str, task: str) -> Callable[[], bool]:
    """Whether the sample's rake process running ``task`` waits for a lock."""

    def check() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                [f"sampleapp-rake {task}"[:63]],
            ).fetchone()
        return bool(row and row[0])

    return check


def waiting_lock(database_url: str, relation: str, mode: str) -> Callable[[], bool]:
    def check() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) > 0 FROM pg_locks WHERE relation = to_regclass(%s) AND mode = %s AND NOT granted",
                [relation, mode],
            ).fetchone()
        return bool(row and row[0])

    return check


def sabotage_replay_table(database_url: str) -> None:
    """Every row the replay writes now violates a constraint: the stage raises mid-way."""
    execute(
        database_url, "ALTER TABLE replay_schema.account_balances ADD CONSTRAINT sabotage CHECK (balance < 0) NOT VALID"
    )


# --- failure ---------------------------------------------------------------------------------


def test_a_replay_that_raises_marks_the_replay_failed_and_exits_non_zero(database_url: str) -> None:
    prepared_v2(database_url)
    sabotage_replay_table(database_url)
    failed(rake(database_url, "v2", REPLAY + "replay[10,2]"), "sabotage")
    assert state(database_url) == "failed"
    # Sequent leaves the projector replaying: only abort clears it.
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, 2)


def test_a_catchup_that_raises_marks_the_replay_failed_and_exits_non_zero(database_url: str) -> None:
    prepared_v2(database_url)
    ok(rake(database_url, "v2", REPLAY + "replay[10,1]"))
    deposit(database_url, "v1", "late", 5)
    sabotage_replay_table(database_url)
    failed(rake(database_url, "v2", REPLAY + "catchup[10,1]"), "sabotage")
    assert state(database_url) == "failed"


def test_replay_fault_variable_fails_the_stage_the_way_sequent_does(database_url: str) -> None:
    """SAMPLEAPP_REPLAY_FAULT (for end-to-end tests): a real database error in the last group."""
    prepared_v2(database_url)
    faulty = stage_env(database_url, "v2", SAMPLEAPP_REPLAY_FAULT="replay")
    failed(rake(database_url, "v2", REPLAY + "replay[10,2]", env=faulty), "division by zero")
    assert state(database_url) == "failed"
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, 2)


def test_failed_is_in_progress_so_a_new_prepare_fails_until_abort(database_url: str) -> None:
    prepared_v2(database_url)
    sabotage_replay_table(database_url)
    failed(rake(database_url, "v2", REPLAY + "replay"), "sabotage")
    failed(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"), "replay_states_active_replay_idx")
    assert states(database_url) == [(1, "failed")]
    ok(rake(database_url, "v2", REPLAY + "abort"))
    ok(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"))
    assert [s for _, s in states(database_url)] == ["aborted", "prepared"]  # the refused insert used an id


# --- abort -----------------------------------------------------------------------------------


def _reach(database_url: str, target: str) -> None:
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))
    if target == "created":  # what a prepare that could not find pg_dump leaves behind
        env = stage_env(database_url, "v2", PATH="/nonexistent")
        failed(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]", env=env), "pg_dump")
        return
    ok(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"))
    if target == "failed":
        sabotage_replay_table(database_url)
        failed(rake(database_url, "v2", REPLAY + "replay"), "sabotage")
        return
    for stage in ("replay", "optimize")[: ("prepared", "replayed", "optimized").index(target)]:
        ok(rake(database_url, "v2", REPLAY + stage))


@pytest.mark.parametrize("reached", ["created", "prepared", "replayed", "optimized", "failed"])
def test_abort_works_from_every_state_in_progress(database_url: str, reached: str) -> None:
    _reach(database_url, reached)
    assert state(database_url) == reached
    assert f"replay 1 ({reached}) aborted" in ok(rake(database_url, "v2", REPLAY + "abort"))
    assert state(database_url) == "aborted"
    assert not schema_exists(database_url, "replay_schema")
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)


def test_abort_with_nothing_in_progress_exits_non_zero(database_url: str) -> None:
    v1_serving(database_url)
    failed(rake(database_url, "v1", REPLAY + "abort"), "no replay is in progress")
    ok(rake(database_url, "v2", "db:migrate"))
    ok(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"))
    ok(rake(database_url, "v2", REPLAY + "abort"))
    failed(rake(database_url, "v2", REPLAY + "abort"), "no replay is in progress; the latest (id 1) is aborted")
    assert states(database_url) == [(1, "aborted")]


def test_abort_does_not_stop_a_running_stage_which_then_marks_the_replay_failed(database_url: str) -> None:
    prepared_v2(database_url)
    # Hold the replay's writes back, so the replay stage is still running when abort lands.
    blocker = psycopg.connect(database_url)
    replay = abort = None
    try:
        blocker.execute("LOCK TABLE replay_schema.account_balances IN EXCLUSIVE MODE")
        replay = start(database_url, "v2", REPLAY + "replay[1,1]")
        wait_for(waiting_lock(database_url, "replay_schema.account_balances", "RowExclusiveLock"), "the replay")
        assert state(database_url) == "replaying"
        abort = start(database_url, "v2", REPLAY + "abort")
        wait_for(waiting_lock(database_url, "replay_schema.account_balances", "AccessExclusiveLock"), "the abort")
        blocker.rollback()
        _, abort_err = abort.communicate(timeout=60)
        assert abort.returncode == 0, abort_err
        _, replay_err = replay.communicate(timeout=60)
        assert replay.returncode == 1, replay_err  # it was not stopped: it failed on its own
    finally:
        blocker.close()
        stop(replay, abort)
    assert state(database_url) == "failed"  # in progress again: another abort is needed
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)
    assert not schema_exists(database_url, "replay_schema")
    ok(rake(database_url, "v2", REPLAY + "abort"))
    assert state(database_url) == "aborted"


def test_abort_clears_only_the_projectors_of_the_replay(database_url: str) -> None:
    prepared_v2(database_url)
    execute(database_url, "INSERT INTO sequent_schema.projector_states (name, replaying_version) VALUES ('Other', 5)")
    ok(rake(database_url, "v2", REPLAY + "abort"))
    assert projector_state_rows(database_url)["Other"] == (None, None, 5)
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)


def test_a_stale_abort_turns_a_replay_that_went_live_meanwhile_into_aborted(database_url: str) -> None:
    """Sequent's abort finds the replay in progress when it starts, waits for its row, and sets
    it aborted without looking at the state: a golive that held the row commits first."""
    prepared_v2(database_url)
    ok(rake(database_url, "v2", REPLAY + "replay"))
    ok(rake(database_url, "v2", REPLAY + "optimize"))
    blocker = psycopg.connect(database_url)
    golive = abort = None
    try:
        # A reader of projector_states holds golive after it has locked the replay's row.
        blocker.execute("SELECT * FROM sequent_schema.projector_states")
        golive = start(database_url, "v2", REPLAY + "golive")
        wait_for(waiting_lock(database_url, "sequent_schema.projector_states", "AccessExclusiveLock"), "golive")
        abort = start(database_url, "v2", REPLAY + "abort")
        wait_for(waiting_on_a_lock(database_url, REPLAY + "abort"), "the abort to wait for the replay's row")
        assert state(database_url) == "optimized"  # abort took this replay while it was in progress
        blocker.rollback()
        _, golive_err = golive.communicate(timeout=60)
        assert golive.returncode == 0, golive_err
        abort_out, abort_err = abort.communicate(timeout=60)
        assert abort.returncode == 0, abort_err
    finally:
        blocker.close()
        stop(golive, abort)
    assert "replay 1 (live) aborted" in abort_out
    assert states(database_url) == [(1, "aborted")]
    # golive landed all the same: version 2 is active and its tables are the view tables.
    assert projector_state_rows(database_url)["AccountProjector"] == (2, None, None)
    with psycopg.connect(database_url) as conn:
        counted = conn.execute("SELECT sum(deposit_count) FROM view_schema.account_balances").fetchone()
    assert counted == (6,)
    with pytest.raises(PublishRefused) as refused:
        deposit(database_url, "v1", "acct-0", 1)
    assert refused.value.error == "DifferentProjectorVersionIsActiveError"
    deposit(database_url, "v2", "acct-0", 1)


def test_abort_fails_when_the_code_cannot_load_a_projector_of_the_replay(database_url: str) -> None:
    run_migrate(database_url, "v3", activate=True)
    ok(rake(database_url, "v4", "db:migrate"))
    ok(rake(database_url, "v4", REPLAY + "prepare[DailyTotalsProjector]"))
    failed(rake(database_url, "v3", REPLAY + "abort"), "has no projector 'DailyTotalsProjector'")
    assert state(database_url) == "prepared"
    ok(rake(database_url, "v4", REPLAY + "abort"))
    assert state(database_url) == "aborted"


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_refuses_an_undefined_name_before_it_inserts_a_replay(database_url: str) -> None:
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))
    unknown = rake(database_url, "v2", REPLAY + "prepare[NoSuchProjector]")
    failed(unknown, "prepare: unknown projector 'NoSuchProjector'")
    assert states(database_url) == []


def test_prepare_inserts_its_replay_before_it_checks_each_name_is_a_projector(database_url: str) -> None:
    """A name the code defines that is not a projector (here the event type) fails prepare after
    the insert: the replay stays created, in progress, and no abort can load it."""
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))
    not_a_projector = rake(database_url, "v2", REPLAY + "prepare[AccountProjector,Deposited]")
    failed(not_a_projector, "unsupported projector(s) Deposited")
    row = replay_state(database_url)
    assert row is not None and (row["state"], row["projectors"]) == ("created", ["AccountProjector", "Deposited"])
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)
    assert not schema_exists(database_url, "replay_schema")
    for release in ("v1", "v2"):
        failed(rake(database_url, release, REPLAY + "abort"), "unsupported projector(s) Deposited")
    failed(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"), "replay_states_active_replay_idx")
    assert states(database_url) == [(1, "created")]


def test_prepare_whose_last_step_raises_leaves_the_replay_created(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its rescue marks the replay failed inside the transaction that the re-raise rolls back."""
    monkeypatch.setenv("PATH", manifests.search_path())  # this process runs prepare: the embedded pg_dump first
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))

    class HookFailed(Exception):
        pass

    def after_prepare_hook() -> None:  # where Sequent calls projectors_replayer_after_prepare_hook
        raise HookFailed("the after-prepare hook raised")

    with psycopg.connect(database_url, autocommit=True) as conn:
        replayer = Replayer(conn, settings_for(database_url, "v2"), get_release("v2"), out=lambda _: None)
        replayer._drop_indexes_not_needed_for_replay = after_prepare_hook  # type: ignore[method-assign]
        with pytest.raises(HookFailed):
            replayer.prepare(["AccountProjector"])
    assert states(database_url) == [(1, "created")]
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)  # its registration rolled back
    failed(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"), "replay_states_active_replay_idx")
    ok(rake(database_url, "v2", REPLAY + "abort"))
    ok(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"))
    assert [s for _, s in states(database_url)] == ["aborted", "prepared"]


def test_prepare_whose_last_step_hits_a_database_error_leaves_created_and_reports_the_aborted_transaction(
    database_url: str,
) -> None:
    """After a database error the rescue's marking runs in an aborted transaction and fails: the
    task reports that error, with the original one as its cause, as rake shows it."""
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))
    execute(
        database_url,
        "CREATE FUNCTION public.refuse_prepared() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.state = 'prepared' THEN RAISE EXCEPTION 'prepared refused by a trigger'; END IF; RETURN NEW; END $$;"
        "CREATE TRIGGER refuse_prepared BEFORE UPDATE ON sequent_schema.replay_states "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse_prepared()",
    )
    stderr = failed(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"), "current transaction is aborted")
    assert stderr.index("Caused by:") < stderr.index("prepared refused by a trigger"), stderr
    assert states(database_url) == [(1, "created")]
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)


def test_prepare_copies_table_definitions_with_pg_dump_and_optimize_recreates_dropped_indexes(
    database_url: str,
) -> None:
    prepared_v2(database_url)

    def shape(schema: str) -> tuple[list[tuple[str, str, str]], list[str]]:
        with psycopg.connect(database_url) as conn:
            columns = conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'account_balances' ORDER BY ordinal_position",
                [schema],
            ).fetchall()
            indexes = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'account_balances' ORDER BY 1",
                [schema],
            ).fetchall()
        return [tuple(c) for c in columns], [i[0] for i in indexes]

    view_columns, view_indexes = shape("view_schema")
    replay_columns, replay_indexes = shape("replay_schema")
    assert replay_columns == view_columns  # migration 3's columns came along
    assert view_indexes == ["account_balances_balance_idx", "account_balances_pkey"]
    assert replay_indexes == ["account_balances_pkey"]  # secondary indexes are dropped for the replay
    row = replay_state(database_url)
    assert row is not None and set(row["index_definitions"]) == set(view_indexes)
    ok(rake(database_url, "v2", REPLAY + "replay"))
    ok(rake(database_url, "v2", REPLAY + "optimize"))
    assert shape("replay_schema")[1] == view_indexes


def test_prepare_fails_in_pg_dump_when_the_view_schema_migration_has_not_run(database_url: str) -> None:
    run_migrate(database_url, "v3", activate=True)
    # v4's DailyTotalsProjector table comes with v4's migration, which has not run.
    failed(
        rake(database_url, "v4", REPLAY + "prepare[DailyTotalsProjector]"),
        'no matching tables were found for pattern "view_schema.daily_deposit_totals"',
    )
    assert states(database_url) == [(1, "created")]  # left in progress, as Sequent leaves it
    assert "DailyTotalsProjector" not in projector_state_rows(database_url)
    ok(rake(database_url, "v4", "db:migrate"))
    failed(rake(database_url, "v4", REPLAY + "prepare[DailyTotalsProjector]"), "replay_states_active_replay_idx")
    ok(rake(database_url, "v4", REPLAY + "abort"))
    ok(rake(database_url, "v4", REPLAY + "prepare[DailyTotalsProjector]"))
    assert [s for _, s in states(database_url)] == ["aborted", "prepared"]  # the refused insert used an id
    assert projector_state_rows(database_url)["DailyTotalsProjector"] == (None, None, 1)


def test_prepare_without_pg_dump_on_path_fails_with_a_clear_message(database_url: str) -> None:
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))
    env = stage_env(database_url, "v2", PATH="/nonexistent")
    failed(
        rake(database_url, "v2", REPLAY + "prepare[AccountProjector]", env=env),
        "cannot determine full path of the `pg_dump` executable",
    )
    assert states(database_url) == [(1, "created")]
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)


def test_prepare_twice_fails_on_the_unique_index_and_leaves_the_first_replay_prepared(database_url: str) -> None:
    prepared_v2(database_url)
    failed(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"), "replay_states_active_replay_idx")
    assert states(database_url) == [(1, "prepared")]


def test_preparing_a_prepared_replay_again_fails_on_the_state_check(database_url: str) -> None:
    prepared_v2(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        replayer = Replayer(conn, settings_for(database_url, "v2"), get_release("v2"), out=lambda _: None)
        with pytest.raises(ReplayError, match="preparing for replay can only be performed when current state is"):
            replayer.prepare_for_replay(1)
    assert state(database_url) == "prepared"


def test_prepare_without_projectors_replays_every_projector_of_the_code(database_url: str) -> None:
    v1_serving(database_url)
    ok(rake(database_url, "v2", "db:migrate"))
    ok(rake(database_url, "v2", REPLAY + "prepare"))
    row = replay_state(database_url)
    assert row is not None and row["projectors"] == ["AccountProjector", "AuditProjector"]
    assert projector_state_rows(database_url) == {"AccountProjector": (1, None, 2), "AuditProjector": (1, None, 1)}


# --- replay, catchup, optimize -------------------------------------------------------------


def test_replay_twice_fails_on_the_state_check_and_changes_nothing(database_url: str) -> None:
    prepared_v2(database_url)
    ok(rake(database_url, "v2", REPLAY + "replay"))
    failed(
        rake(database_url, "v2", REPLAY + "replay"),
        "initial replay can only be performed when current state is prepared (replay 1 is replayed)",
    )
    assert state(database_url) == "replayed"


def test_a_killed_replay_stays_replaying_until_abort(database_url: str) -> None:
    prepared_v2(database_url)
    execute(database_url, "UPDATE sequent_schema.replay_states SET state = 'replaying'")  # what a kill leaves
    failed(rake(database_url, "v2", REPLAY + "replay"), "current state is prepared (replay 1 is replaying)")
    failed(rake(database_url, "v2", REPLAY + "catchup"), "is replayed or optimized (replay 1 is replaying)")
    assert state(database_url) == "replaying"
    ok(rake(database_url, "v2", REPLAY + "abort"))
    assert state(database_url) == "aborted"


def test_replay_refuses_non_empty_replay_tables_without_marking_failed(database_url: str) -> None:
    prepared_v2(database_url)
    execute(database_url, "INSERT INTO replay_schema.account_balances (account_id, balance) VALUES ('x', 1)")
    failed(rake(database_url, "v2", REPLAY + "replay"), "managed tables account_balances are not empty")
    assert state(database_url) == "prepared"


def test_catchup_from_prepared_fails_on_the_state_check(database_url: str) -> None:
    prepared_v2(database_url)
    failed(
        rake(database_url, "v2", REPLAY + "catchup"),
        "catching up can only be performed when current state is replayed or optimized (replay 1 is prepared)",
    )
    assert state(database_url) == "prepared"


def test_catchup_after_optimize_returns_to_optimized_and_moves_the_xact_id_on(database_url: str) -> None:
    prepared_v2(database_url)
    ok(rake(database_url, "v2", REPLAY + "replay"))
    ok(rake(database_url, "v2", REPLAY + "optimize"))
    before = replay_state(database_url)
    deposit(database_url, "v1", "late", 7)
    ok(rake(database_url, "v2", REPLAY + "catchup[10,2]"))
    after = replay_state(database_url)
    assert before is not None and after is not None
    assert after["state"] == "optimized"
    assert after["continue_replay_at_xact_id"] > before["continue_replay_at_xact_id"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT balance FROM replay_schema.account_balances WHERE account_id = 'late'").fetchone()
    assert row == (7,)


def test_optimize_twice_fails_on_the_state_check(database_url: str) -> None:
    prepared_v2(database_url)
    ok(rake(database_url, "v2", REPLAY + "replay"))
    ok(rake(database_url, "v2", REPLAY + "optimize"))
    failed(
        rake(database_url, "v2", REPLAY + "optimize"),
        "activation can only be performed when current state is replayed (replay 1 is optimized)",
    )
    assert state(database_url) == "optimized"


def test_replay_group_size_counts_events(database_url: str) -> None:
    run_migrate(database_url, "v1", activate=True)
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed(conn, settings_for(database_url, "v1"), get_release("v1"), 2000, 1000)
        conn.execute("ANALYZE sequent_schema.events")
    ok(rake(database_url, "v2", "db:migrate"))
    ok(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"))
    # 2000 events over 1000 accounts: groups of 100 events make 20 groups (aggregates would make 10).
    output = ok(rake(database_url, "v2", REPLAY + "replay[100,1]"))
    found = re.search(r"estimated (\d+) events in (\d+) groups", output)
    assert found is not None, output
    estimate, groups = int(found[1]), int(found[2])
    assert 1900 <= estimate <= 2100
    assert groups == max(8, estimate // 100)
    with psycopg.connect(database_url) as conn:
        replayed = conn.execute("SELECT sum(deposit_count) FROM replay_schema.account_balances").fetchone()
    assert replayed == (2000,)


def test_initial_replay_includes_events_without_xact_id(database_url: str) -> None:
    v1_serving(database_url)
    execute(
        database_url,
        "INSERT INTO sequent_schema.aggregates (aggregate_id, aggregate_type) "
        "VALUES ('00000000-0000-0000-0000-0000000000aa', 'Account');"
        "INSERT INTO sequent_schema.events (aggregate_id, sequence_number, event_type, event_json, xact_id) "
        "VALUES ('00000000-0000-0000-0000-0000000000aa', 1, 'Deposited', "
        '\'{"account_id": "imported", "amount": 40}\', NULL)',
    )
    ok(rake(database_url, "v2", "db:migrate"))
    ok(rake(database_url, "v2", REPLAY + "prepare[AccountProjector]"))
    ok(rake(database_url, "v2", REPLAY + "replay"))
    ok(rake(database_url, "v2", REPLAY + "catchup"))  # a catch-up does not read it again
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT balance, deposit_count FROM replay_schema.account_balances WHERE account_id = 'imported'"
        ).fetchone()
    assert row == (40, 1)


# --- golive ----------------------------------------------------------------------------------


def test_golive_that_fails_rolls_back_and_can_be_retried(database_url: str) -> None:
    prepared_v2(database_url)
    ok(rake(database_url, "v2", REPLAY + "replay"))
    ok(rake(database_url, "v2", REPLAY + "optimize"))
    execute(database_url, "CREATE VIEW public.dependent AS SELECT * FROM view_schema.account_balances")
    failed(rake(database_url, "v2", REPLAY + "golive"), "dependent objects still exist")
    assert state(database_url) == "optimized"
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, 2)  # activating never committed
    execute(database_url, "DROP VIEW public.dependent")
    ok(rake(database_url, "v2", REPLAY + "golive"))
    assert state(database_url) == "live"
    assert projector_state_rows(database_url)["AccountProjector"] == (2, None, None)


def test_golive_lock_timeout_covers_only_its_lock_acquisition_and_activating_is_never_visible(
    database_url: str,
) -> None:
    prepared_v2(database_url)
    for stage in ("replay", "optimize", "golive"):  # leaves v1's table in archive_schema
        ok(rake(database_url, "v2", REPLAY + stage))
    ok(rake(database_url, "v3", REPLAY + "prepare[AccountProjector]"))  # replay version 2 once more
    ok(rake(database_url, "v3", REPLAY + "replay"))
    ok(rake(database_url, "v3", REPLAY + "optimize"))
    # golive drops archive_schema after its locks are taken: a reader of the archive makes it
    # wait there far longer than the 100 ms lock timeout of its lock statements.
    reader = psycopg.connect(database_url)
    golive = None
    try:
        reader.execute("SELECT count(*) FROM archive_schema.account_balances")
        golive = start(database_url, "v3", REPLAY + "golive")
        wait_for(waiting_lock(database_url, "archive_schema.account_balances", "AccessExclusiveLock"), "golive")
        time.sleep(0.5)
        assert golive.poll() is None, golive.communicate()
        with psycopg.connect(database_url, autocommit=True) as observer:
            observer.execute("SET lock_timeout = '50ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):  # no session can see it activating
                observer.execute("SELECT * FROM sequent_schema.projector_states")
        reader.rollback()
        _, stderr = golive.communicate(timeout=60)
        assert golive.returncode == 0, stderr
    finally:
        reader.close()
        stop(golive)
    assert states(database_url) == [(1, "live"), (2, "live")]
    assert projector_state_rows(database_url)["AccountProjector"] == (2, None, None)


# --- schema, gate, activation, rake ----------------------------------------------------------


def test_events_table_is_partitioned_and_xact_id_is_nullable_without_index(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        partitioning = conn.execute(
            "SELECT p.partstrat, a.attname FROM pg_partitioned_table p "
            "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
            "WHERE p.partrelid = 'sequent_schema.events'::regclass"
        ).fetchone()
        nullable = conn.execute(
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'sequent_schema' AND table_name = 'events' AND column_name = 'xact_id'"
        ).fetchone()
        xact_indexes = conn.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE a.attname = 'xact_id' AND i.indrelid IN "
            "(SELECT relid FROM pg_partition_tree('sequent_schema.events'))"
        ).fetchone()
    assert partitioning == ("r", "partition_key")
    assert nullable == ("YES",)
    assert xact_indexes == (0,)


def test_activate_current_configuration_activates_every_projector_and_leaves_removed_ones_active(
    database_url: str,
) -> None:
    v1_serving(database_url)
    execute(database_url, "INSERT INTO sequent_schema.projector_states (name, active_version) VALUES ('Retired', 3)")
    ok(rake(database_url, "v2", "db:migrate", "sequent:migrate:offline"))
    # As Sequent's register_active_projectors!: the code's versions, over the active ones.
    assert projector_state_rows(database_url) == {
        "AccountProjector": (2, None, None),
        "AuditProjector": (1, None, None),
        "Retired": (3, None, None),
    }
    with pytest.raises(PublishRefused) as refused:
        deposit(database_url, "v2", "anyone", 1)
    assert refused.value.error == "UnknownActiveProjectorError" and "Retired" in refused.value.message
    ok(rake(database_url, "v2", "sequent:projectors:deactivate_unknown_projectors"))
    assert projector_state_rows(database_url)["Retired"] == (None, None, None)
    deposit(database_url, "v2", "anyone", 1)


def test_activate_current_configuration_refuses_a_view_schema_at_another_version(database_url: str) -> None:
    v1_serving(database_url)
    failed(
        rake(database_url, "v2", "sequent:migrate:offline"),
        "new version [3] must be the same as current view schema version [2]",
    )
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)


@pytest.mark.parametrize("variable", ["SEQUENT_ENV", "RAILS_ENV", "RACK_ENV"])
def test_rake_tasks_read_sequent_env_rails_env_or_rack_env(database_url: str, variable: str) -> None:
    v1_serving(database_url)
    base = {k: v for k, v in stage_env(database_url, "v1").items() if k not in ("SEQUENT_ENV", "RAILS_ENV", "RACK_ENV")}
    failed(rake(database_url, "v1", REPLAY + "status", env=base), "SEQUENT_ENV not set")
    ok(rake(database_url, "v1", REPLAY + "status", env={**base, variable: "production"}))


def test_rake_task_names_and_arguments(database_url: str, tmp_path: Path) -> None:
    v1_serving(database_url)
    failed(rake(database_url, "v2", "sequent:projectors:replay:prepare_all"), "Don't know how to build task")
    assert "migrated 3" in ok(rake_in(tmp_path, database_url, "v2", "sequent:db:migrate"))
    bad = rake(database_url, "v2", REPLAY + "replay[many,1]")
    assert bad.returncode == 2 and "'many' is not a positive integer" in bad.stderr
    # The short form the first sample app took still maps onto the same tasks.
    short = run_stage(database_url, "v2", "abort")
    assert short.returncode == 1 and "no replay is in progress" in short.stderr


# --- sequent:db:migrate ----------------------------------------------------------------------


def another_database(database_url: str, name: str) -> str:
    return make_conninfo(database_url, dbname=f"{conninfo_to_dict(database_url)['dbname']}_{name}")


def migrations_applied(database_url: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM sequent_schema.schema_migrations ORDER BY 1")]


def test_sequent_db_migrate_creates_the_database_migrates_and_dumps_the_schema_into_the_release_directory(
    database_url: str, tmp_path: Path
) -> None:
    url = another_database(database_url, "created")
    env = stage_env(url, "v1")
    first = rake_in(tmp_path, url, "v1", "sequent:db:migrate", env=env)
    assert "Created database" in ok(first)
    assert migrations_applied(url) == [1, 2]
    structure = (tmp_path / "db" / "structure.sql").read_text()
    assert "CREATE TABLE sequent_schema.replay_states" in structure
    assert "replay_schema" not in structure and "archive_schema" not in structure
    again = rake_in(tmp_path, url, "v2", "sequent:db:migrate", env=stage_env(url, "v2"))
    assert "migrated 3" in ok(again) and "already exists" in again.stderr
    assert migrations_applied(url) == [1, 2, 3]


def test_sequent_db_migrate_that_cannot_dump_the_schema_fails_after_migrating(
    database_url: str, tmp_path: Path
) -> None:
    v1_serving(database_url)
    no_pg_dump = stage_env(database_url, "v2", PATH="/nonexistent")
    failed(rake_in(tmp_path, database_url, "v2", "sequent:db:migrate", env=no_pg_dump), "pg_dump")
    assert migrations_applied(database_url) == [1, 2, 3]  # the dump comes after the migrations
    read_only = tmp_path / "image"
    read_only.mkdir()
    (read_only / "db").write_text("a file where db/ would go: nothing can be written under it")
    failed(rake_in(read_only, database_url, "v2", "sequent:db:migrate"), "cannot write the schema dump")
    ok(rake_in(tmp_path, database_url, "v2", "db:migrate"))  # the plain task only migrates


def test_sequent_db_migrate_needs_a_role_that_may_create_databases(database_url: str, tmp_path: Path) -> None:
    """sequent:db:create runs first and PostgreSQL checks CREATEDB before it looks whether the
    database exists: a role without it fails the task before any migration, database or not."""
    v1_serving(database_url)
    execute(database_url, "CREATE ROLE sampleapp_no_createdb LOGIN PASSWORD 'secret' NOCREATEDB")
    url = make_conninfo(database_url, user="sampleapp_no_createdb", password="secret")
    stderr = failed(rake_in(tmp_path, url, "v2", "sequent:db:migrate"), "permission denied to create database")
    assert "Couldn't create" in stderr
    assert migrations_applied(database_url) == [1, 2]
