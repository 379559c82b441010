"""``python -m sampleapp.replay <stage> [args]``: Sequent 9's replay rake tasks for the sample app.

Run every stage with the NEW release's code (``SAMPLEAPP_RELEASE``). Stages and states:

- ``prepare P1,P2``          created -> prepared: replay tables in REPLAY_SCHEMA, register replaying
- ``replay [group] [procs]`` prepared -> replaying -> replayed: events below a snapshot's xmin
- ``catchup [group] [procs]`` replayed/optimized -> catching_up -> back: the next xact_id window
- ``optimize``               replayed -> optimized: indexes, VACUUM ANALYZE
- ``golive``                 optimized -> live, in one transaction (see ``Replayer.golive``)
- ``abort [P1,P2]``          -> aborted: clear replaying/activating, drop the replay schema
- ``status``                 the current (else latest) replay_states row as one line of JSON

Each event is applied exactly once across replay, catch-ups and golive: a window is
``continue_replay_at_xact_id <= xact_id < xmin`` of a snapshot; every transaction below that
xmin has ended, so no event can still appear inside a window already applied.

A session-level advisory lock admits one stage at a time; a stage killed mid-way leaves its
transaction rolled back, and running it again resumes (``replaying``/``catching_up`` found
with no stage holding the lock are stale). Failures inside a stage's work mark the replay
``failed`` (as Sequent does); precondition failures change nothing. Exit status 0 on
success, 1 on failure (message on stderr), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sampleapp import projector_states
from sampleapp.config import ConfigurationError, Settings
from sampleapp.releases import Projector, Release, UnknownName, get_release

ADVISORY_NAMESPACE = 0x5E0E  # first key of the advisory lock; the second is derived from the schema
NIL_UUID = "00000000-0000-0000-0000-000000000000"
IN_PROGRESS = "state NOT IN ('live', 'aborted')"


class ReplayError(Exception):
    pass


def _csv(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    return list(dict.fromkeys(names))


class Replayer:
    def __init__(
        self,
        conn: psycopg.Connection,
        settings: Settings,
        release: Release,
        out: Callable[[str], None] = print,
    ) -> None:
        if not conn.autocommit:
            raise ValueError("the replayer needs an autocommit connection: it runs its own transactions")
        self.conn = conn
        self.settings = settings
        self.release = release
        self.out = out
        self.es = sql.Identifier(settings.event_store_schema)
        self.replay_schema = sql.Identifier(settings.replay_schema)

    # --- helpers -----------------------------------------------------------------------------

    def _advisory_keys(self) -> tuple[int, int]:
        return ADVISORY_NAMESPACE, zlib.crc32(self.settings.event_store_schema.encode()) & 0x7FFFFFFF

    def _lock_holders(self) -> list[int]:
        key1, key2 = self._advisory_keys()
        rows = self.conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s "
            "AND objid = %s AND objsubid = 2 AND pid <> pg_backend_pid() "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [key1, key2],
        ).fetchall()
        return [row[0] for row in rows]

    def _try_stage_lock(self) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self._advisory_keys()).fetchone()
        return bool(row and row[0])

    @contextmanager
    def stage_lock(self, wait_seconds: float = 0.0, terminate_holder: bool = False) -> Iterator[None]:
        """One stage at a time; held for the session, so a killed stage releases it."""
        deadline = time.monotonic() + wait_seconds
        terminated = False
        while not self._try_stage_lock():
            if time.monotonic() >= deadline:
                holders = self._lock_holders()
                if terminate_holder and not terminated and holders:
                    self.out(f"terminating the running replay stage (backend pids {holders})")
                    for pid in holders:
                        self.conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
                    terminated = True
                    deadline = time.monotonic() + 10.0
                    continue
                raise ReplayError(f"another replay stage is running (database backend pids {holders})")
            time.sleep(0.1)
        try:
            yield
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", self._advisory_keys())

    def _fetch_row(self, where: sql.Composable, params: Sequence[Any] = (), lock: bool = False) -> dict | None:
        query = sql.SQL("SELECT * FROM {}.replay_states WHERE {} ORDER BY id DESC LIMIT 1{}").format(
            self.es, where, sql.SQL(" FOR NO KEY UPDATE" if lock else "")
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params).fetchone()

    def current(self, lock: bool = False) -> dict | None:
        """The replay in progress (at most one, by the unique partial index)."""
        return self._fetch_row(sql.SQL(IN_PROGRESS), lock=lock)

    def latest(self) -> dict | None:
        return self.current() or self._fetch_row(sql.SQL("true"))

    def _require_current(self, action: str, *states: str) -> dict:
        """Inside a transaction: the in-progress row, locked, in one of ``states``."""
        row = self.current(lock=True)
        expected = " or ".join(states)
        if row is None:
            latest = self.latest()
            seen = f"the latest replay (id {latest['id']}) is {latest['state']}" if latest else "no replay"
            raise ReplayError(f"{action} can only be performed when the state is {expected}; {seen}")
        if row["state"] not in states:
            raise ReplayError(
                f"{action} can only be performed when the state is {expected}; replay {row['id']} is {row['state']}"
            )
        return row

    def _set_state(self, replay_id: int, state: str, continue_at: int | None = None) -> None:
        self.conn.execute(
            sql.SQL(
                "UPDATE {}.replay_states SET state = %s, "
                "continue_replay_at_xact_id = coalesce(%s, continue_replay_at_xact_id), updated_at = now() "
                "WHERE id = %s"
            ).format(self.es),
            [state, continue_at, replay_id],
        )

    def _mark_failed(self, replay_id: int) -> None:
        try:
            with self.conn.transaction():
                self.conn.execute(
                    sql.SQL(
                        "UPDATE {}.replay_states SET state = 'failed', updated_at = now() "
                        "WHERE id = %s AND " + IN_PROGRESS
                    ).format(self.es),
                    [replay_id],
                )
        except psycopg.Error as error:  # the original failure matters more
            self.out(f"could not mark replay {replay_id} failed: {error}")

    def _snapshot_xmin(self) -> int:
        row = self.conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()
        assert row is not None
        return int(row[0])

    def _projectors(self, names: Sequence[str]) -> list[Projector]:
        try:
            return [self.release.projector(name) for name in names]
        except UnknownName as error:
            raise ReplayError(f"{error}: run the replay stages with the release that prepared them") from None

    def _verify_replaying_versions(self, row: dict) -> list[Projector]:
        """The replaying projectors in projector_states are exactly this replay's, at this code's versions."""
        projectors = self._projectors(row["projectors"])
        replaying = {
            s.name: s.replaying_version
            for s in projector_states.read_states(self.conn, self.settings.event_store_schema)
            if s.replaying_version is not None
        }
        mismatched = [p.name for p in projectors if replaying.get(p.name) != p.version]
        if mismatched:
            found = {name: replaying.get(name) for name in mismatched}
            expected = {p.name: p.version for p in projectors if p.name in mismatched}
            raise ReplayError(
                f"replaying versions in projector_states {found} do not match release {self.release.name}'s {expected}"
            )
        superfluous = sorted(set(replaying) - {p.name for p in projectors})
        if superfluous:
            raise ReplayError(f"projectors {', '.join(superfluous)} are replaying but not in replay {row['id']}")
        return projectors

    def _table_exists(self, schema: str, table: str) -> bool:
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s)", [schema, table]
        ).fetchone()
        return bool(row and row[0])

    def _tables(self, projectors: Sequence[Projector]) -> list[str]:
        return [table.name for p in projectors for table in p.tables]

    def _apply_window(
        self,
        projectors: Sequence[Projector],
        lo: int,
        hi: int | None,
        group_size: int,
        label: str,
    ) -> int:
        """Apply the events with ``lo <= xact_id < hi`` to the replay tables, ``group_size`` aggregates
        at a time (Sequent's replay groups), in aggregate id order."""
        window = sql.SQL("e.xact_id >= %(lo)s") + (
            sql.SQL(" AND e.xact_id < %(hi)s") if hi is not None else sql.SQL("")
        )
        params: dict[str, Any] = {"lo": lo, "hi": hi}
        row = self.conn.execute(
            sql.SQL("SELECT count(*) FROM {}.events e WHERE {}").format(self.es, window), params
        ).fetchone()
        total = int(row[0]) if row else 0
        if total == 0:
            self.out(f"{label}: no events")
            return 0
        after = NIL_UUID
        group = 0
        while True:
            group += 1
            # Every event in the window is committed, and so is its aggregate's row.
            boundary = self.conn.execute(
                sql.SQL(
                    "SELECT aggregate_id FROM {}.aggregates WHERE aggregate_id > %s "
                    "ORDER BY aggregate_id OFFSET %s LIMIT 1"
                ).format(self.es),
                [after, group_size - 1],
            ).fetchone()
            batch_filter = window + sql.SQL(" AND e.aggregate_id > %(after)s::uuid")
            batch = {**params, "after": after}
            if boundary is not None:
                batch_filter += sql.SQL(" AND e.aggregate_id <= %(upto)s::uuid")
                batch["upto"] = boundary[0]
            for projector in projectors:
                projector.apply(
                    self.conn,
                    target_schema=self.settings.replay_schema,
                    event_store_schema=self.settings.event_store_schema,
                    event_filter=batch_filter,
                    params=batch,
                )
            if boundary is None:
                break
            after = str(boundary[0])
            if group % 10 == 0:
                self.out(f"{label}: {group} groups of {group_size} aggregates applied")
        self.out(f"{label}: {total} events applied in {group} groups of up to {group_size} aggregates")
        return total

    # --- stages --------------------------------------------------------------------------------

    def prepare(self, names: Sequence[str]) -> int:
        if not names:
            raise ReplayError("prepare needs at least one projector, e.g. prepare AccountProjector")
        projectors = self._projectors(names)
        with self.stage_lock():
            with self.conn.transaction():
                row = self.current(lock=True)
                if row is None:
                    created = self.conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.replay_states (state, projectors) VALUES ('created', %s) RETURNING id"
                        ).format(self.es),
                        [[p.name for p in projectors]],
                    ).fetchone()
                    assert created is not None
                    replay_id = int(created[0])
                elif row["state"] == "created" and sorted(row["projectors"]) == sorted(names):
                    replay_id = int(row["id"])  # resume a prepare that was killed
                else:
                    raise ReplayError(
                        f"replay {row['id']} of {', '.join(row['projectors'])} is in progress "
                        f"(state {row['state']}): abort it before preparing another"
                    )
            try:
                with self.conn.transaction():
                    self._require_current("preparing for replay", "created")
                    self.conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self.replay_schema))
                    self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(self.replay_schema))
                    definitions: dict[str, str] = {}
                    for projector in projectors:
                        projector.create_tables(self.conn, self.settings.replay_schema, with_indexes=False)
                        for table in projector.tables:
                            for index_name, columns in table.indexes:
                                statement = table.index_statement(self.settings.replay_schema, index_name, columns)
                                definitions[index_name] = statement.as_string(self.conn)
                    self.conn.execute(
                        sql.SQL("UPDATE {}.replay_states SET index_definitions = %s WHERE id = %s").format(self.es),
                        [Jsonb(definitions), replay_id],
                    )
                projector_states.write(
                    self.conn,
                    self.settings.event_store_schema,
                    lambda conn, schema: projector_states.set_replaying(
                        conn, schema, [(p.name, p.version) for p in projectors]
                    ),
                )
                with self.conn.transaction():
                    self._require_current("preparing for replay", "created")
                    # Nothing is replayed yet: the lag (events at or above this id) is every event.
                    self._set_state(replay_id, "prepared", continue_at=0)
            except Exception:
                self._mark_failed(replay_id)
                raise
        self.out(f"replay {replay_id}: prepared {', '.join(f'{p.name} v{p.version}' for p in projectors)}")
        return replay_id

    def replay(self, group_size: int = 100, processes: int = 1) -> int:
        with self.stage_lock():
            with self.conn.transaction():
                row = self._require_current("initial replay", "prepared", "replaying")
                projectors = self._verify_replaying_versions(row)
                self._set_state(row["id"], "replaying")
            replay_id = int(row["id"])
            if row["state"] == "replaying":
                self.out(f"replay {replay_id}: resuming an initial replay that did not finish")
            try:
                # One transaction: a replay killed half-way leaves empty tables behind, not half of them.
                with self.conn.transaction():
                    self._require_current("initial replay", "replaying")
                    xmin = self._snapshot_xmin()
                    tables = self._tables(projectors)
                    self.conn.execute(
                        sql.SQL("TRUNCATE {}").format(
                            sql.SQL(", ").join(sql.Identifier(self.settings.replay_schema, t) for t in tables)
                        )
                    )
                    count = self._apply_window(projectors, 0, xmin, group_size, f"replay {replay_id}")
                    self._set_state(replay_id, "replayed", continue_at=xmin)
            except Exception:
                self._mark_failed(replay_id)
                raise
        self.out(f"replay {replay_id}: replayed {count} events below xact_id {xmin}")
        return count

    def catchup(self, group_size: int = 100, processes: int = 1) -> int:
        with self.stage_lock():
            with self.conn.transaction():
                row = self._require_current("catching up", "replayed", "optimized", "catching_up")
                projectors = self._verify_replaying_versions(row)
                # A stale catching_up (its stage was killed) returns to replayed: optimize is repeatable.
                previous = row["state"] if row["state"] != "catching_up" else "replayed"
                self._set_state(row["id"], "catching_up")
            replay_id = int(row["id"])
            try:
                with self.conn.transaction():
                    row = self._require_current("catching up", "catching_up")
                    lo = int(row["continue_replay_at_xact_id"])
                    xmin = self._snapshot_xmin()
                    count = self._apply_window(projectors, lo, xmin, group_size, f"catchup {replay_id}")
                    self._set_state(replay_id, previous, continue_at=xmin)
            except Exception:
                self._mark_failed(replay_id)
                raise
        self.out(f"replay {replay_id}: caught up {count} events ({lo} <= xact_id < {xmin}), state {previous}")
        return count

    def optimize(self) -> None:
        with self.stage_lock():
            with self.conn.transaction():
                row = self._require_current("optimizing", "replayed")
                projectors = self._verify_replaying_versions(row)
            replay_id = int(row["id"])
            try:
                with self.conn.transaction():
                    self._require_current("optimizing", "replayed")
                    for projector in projectors:
                        for table in projector.tables:
                            table.create_indexes(self.conn, self.settings.replay_schema)
                # VACUUM cannot run inside a transaction block.
                for table_name in self._tables(projectors):
                    self.conn.execute(
                        sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(self.settings.replay_schema, table_name))
                    )
                with self.conn.transaction():
                    self._require_current("optimizing", "replayed")
                    self._set_state(replay_id, "optimized")
            except Exception:
                self._mark_failed(replay_id)
                raise
        self.out(f"replay {replay_id}: optimized")

    def golive(self) -> int:
        """One transaction: activating, lock view tables, last events, swap tables, active, live.

        It holds projector_states in ACCESS EXCLUSIVE mode from its start to its commit, which
        waits for every publisher that read the old states (they hold ACCESS SHARE until they
        commit) and holds back new ones until the new states are committed; so every event is
        either below this transaction's view (applied here) or published under the new states.
        """
        view = self.settings.view_schema
        archive = sql.Identifier(self.settings.archive_schema)
        result: dict[str, Any] = {}

        def work() -> None:
            row = self._require_current("going live", "optimized")
            projector_states.lock(self.conn, self.settings.event_store_schema)
            projectors = self._verify_replaying_versions(row)
            versions = [(p.name, p.version) for p in projectors]
            projector_states.set_activating(self.conn, self.settings.event_store_schema, versions)
            tables = self._tables(projectors)
            existing = [t for t in tables if self._table_exists(view, t)]
            if existing:
                self.conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                        sql.SQL(", ").join(sql.Identifier(view, t) for t in existing)
                    )
                )
            lo = int(row["continue_replay_at_xact_id"])
            count = self._apply_window(projectors, lo, None, 1_000_000_000, f"golive {row['id']}")
            self.conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(archive))
            self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(archive))
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(view)))
            for t in tables:
                if t in existing:
                    self.conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(view, t), archive))
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                        sql.Identifier(self.settings.replay_schema, t), sql.Identifier(view)
                    )
                )
            self.conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(self.replay_schema))
            projector_states.set_active(self.conn, self.settings.event_store_schema, versions)
            self._set_state(row["id"], "live", continue_at=self._snapshot_xmin())
            result.update(id=row["id"], count=count, versions=versions)

        with self.stage_lock():
            projector_states.with_lock_retry(self.conn, work)
        active = ", ".join(f"{name} v{version}" for name, version in result["versions"])
        self.out(f"replay {result['id']}: live after {result['count']} final events; active: {active}")
        return int(result["count"])

    def abort(self, names: Sequence[str] = ()) -> None:
        result: dict[str, Any] = {}

        def work() -> None:
            row = self.current(lock=True)
            projector_states.lock(self.conn, self.settings.event_store_schema)
            targets = list(dict.fromkeys([*names, *(row["projectors"] if row else [])]))
            if not targets:
                targets = [p.name for p in self.release.projectors]
            projector_states.clear_replaying_and_activating(self.conn, self.settings.event_store_schema, targets)
            if row is not None:
                self._set_state(row["id"], "aborted")
            self.conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self.replay_schema))
            result.update(row=row, targets=targets)

        # A stage still running (e.g. a replay Job being deleted) is given a moment, then ended.
        with self.stage_lock(wait_seconds=5.0, terminate_holder=True):
            projector_states.with_lock_retry(self.conn, work)
        row = result["row"]
        what = f"replay {row['id']} ({row['state']}) aborted" if row else "no replay in progress"
        self.out(f"{what}; cleared replaying/activating of {', '.join(result['targets'])}")

    def status(self) -> dict[str, Any] | None:
        row = self.latest()
        if row is None:
            return None
        status = dict(row)
        status["lag"] = None
        if row["state"] not in ("live", "aborted") and row["continue_replay_at_xact_id"] is not None:
            count = self.conn.execute(
                sql.SQL("SELECT count(*) FROM {}.events WHERE xact_id >= %s").format(self.es),
                [row["continue_replay_at_xact_id"]],
            ).fetchone()
            status["lag"] = int(count[0]) if count else None
        status["projector_states"] = {
            s.name: {
                "active_version": s.active_version,
                "activating_version": s.activating_version,
                "replaying_version": s.replaying_version,
            }
            for s in projector_states.read_states(self.conn, self.settings.event_store_schema)
        }
        return status


def _json_default(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sampleapp.replay",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = parser.add_subparsers(dest="stage", required=True)
    prepare = stages.add_parser("prepare", help="created -> prepared, register replaying")
    prepare.add_argument("projectors", type=_csv, help="comma-separated projector names")
    for name, help_text in (("replay", "prepared -> replayed"), ("catchup", "replayed/optimized -> same")):
        stage = stages.add_parser(name, help=help_text)
        stage.add_argument("group_size", nargs="?", type=_positive, default=100)
        stage.add_argument("processes", nargs="?", type=_positive, default=1)
    stages.add_parser("optimize", help="replayed -> optimized")
    stages.add_parser("golive", help="optimized -> live")
    abort = stages.add_parser("abort", help="-> aborted")
    abort.add_argument("projectors", nargs="?", type=_csv, default=[])
    stages.add_parser("status", help="print the replay state as JSON")
    return parser


def run(replayer: Replayer, args: argparse.Namespace) -> None:
    if args.stage == "prepare":
        replayer.prepare(args.projectors)
    elif args.stage == "replay":
        replayer.replay(args.group_size, args.processes)
    elif args.stage == "catchup":
        replayer.catchup(args.group_size, args.processes)
    elif args.stage == "optimize":
        replayer.optimize()
    elif args.stage == "golive":
        replayer.golive()
    elif args.stage == "abort":
        replayer.abort(args.projectors)
    elif args.stage == "status":
        print(json.dumps(replayer.status(), default=_json_default, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        settings = Settings.from_env()
        release = get_release(settings.release)
        with psycopg.connect(
            settings.database_url,
            autocommit=True,
            connect_timeout=10,
            application_name=f"sampleapp-replay-{args.stage}",
        ) as conn:
            run(Replayer(conn, settings, release, out), args)
    except (ConfigurationError, UnknownName, ReplayError, TimeoutError, psycopg.Error) as error:
        message = str(error).strip() or type(error).__name__
        print(f"sampleapp.replay {args.stage} failed: {message}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
