"""Sequent master's ProjectorsReplayer (lib/sequent/migrations/projectors_replayer.rb) for the sample app.

Run every stage with the NEW release's code (``SAMPLEAPP_RELEASE``), through its rake name
(``python -m sampleapp.rake sequent:projectors:replay:<stage>[args]``, see ``sampleapp.rake``)
or the short form ``python -m sampleapp.replay <stage> [args]``. What each stage checks and
writes, as in Sequent:

- ``prepare[P1,P2]``   a name the code does not define fails at once; otherwise it inserts a
  replay ``created`` (the unique index refuses it while another replay is in progress) and only
  then checks that each name is a projector (a name that is not leaves the row ``created``, and
  no abort can load it). It copies the projectors' view tables into REPLAY_SCHEMA with
  ``pg_dump --strict-names`` and ``psql`` (found on PATH), registers them replaying, drops the
  secondary indexes and ends ``prepared``. Every failure leaves the row ``created``, in progress:
  the rescue of the last step marks it ``failed`` inside the transaction its re-raise rolls back.
- ``replay[group_size,processes]``  ``prepared`` -> ``replaying`` -> ``replayed``: the events
  below the xmin of a snapshot, in groups of about ``group_size`` events (at least 8 groups per
  process), each group its own transaction, ``processes`` groups at a time.
- ``catchup[group_size,processes]``  ``replayed``/``optimized`` -> ``catching_up`` -> back:
  the events from ``continue_replay_at_xact_id`` to a new snapshot's xmin.
- ``optimize``  needs ``replayed``: VACUUM FULL (or CLUSTER), recreates the dropped indexes,
  ANALYZE, ends ``optimized``. Failures change no state: it can be run again.
- ``golive``  needs ``optimized``; one transaction: register activating, lock the view tables,
  replay the last events, move the view tables to ARCHIVE_SCHEMA and the replayed ones into
  VIEW_SCHEMA, register active, ``live``. Failures roll it all back: it can be run again.
- ``abort``  finds the replay in progress when it starts, then waits for its row and sets it
  ``aborted`` without checking its state (a golive that commits meanwhile has its ``live``
  replay turned ``aborted``); its projectors' replaying/activating versions are cleared and
  REPLAY_SCHEMA is dropped. A replay or catchup still running is not stopped: it fails later
  and marks the replay ``failed`` again. Fails when no replay is in progress, and when the
  code cannot load one of the replay's projectors.
- ``status``  the latest replay_states row, its lag and projector_states as one line of JSON.

A failure inside replay or catchup (after their first transaction, which holds the state checks)
marks the replay ``failed``; ``failed`` is in progress, so it holds the unique index until ``abort``.
The state checks themselves change nothing. Exit status 0 on success, 1 on failure (message
on stderr), 2 on bad usage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sampleapp import projector_states
from sampleapp.config import Settings
from sampleapp.releases import DEPOSITED, ONE_EVENT, EventKey, Projector, Release, UnknownName

IN_PROGRESS = "state NOT IN ('live', 'aborted')"
# Sequent's configuration defaults (replay_group_target_size, number_of_replay_processes).
DEFAULT_GROUP_SIZE = 250_000
DEFAULT_PROCESSES = 4
# Sequent's replay_events fetches the events from its cursor in blocks of this many.
CURSOR_BLOCK_SIZE = 1000
# Every projector of the sample app handles this one event type.
EVENT_TYPES = [DEPOSITED]
# libpq parameters handed to pg_dump and psql as environment variables, as Sequent does.
PG_ENVIRONMENT = {
    "host": "PGHOST",
    "dbname": "PGDATABASE",
    "port": "PGPORT",
    "password": "PGPASSWORD",
    "user": "PGUSER",
    "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
}

# What the sample app's code defines besides its projectors (in Ruby, constants Class.const_get
# finds): its event and aggregate types. prepare takes such a name, then refuses it as a projector.
NON_PROJECTOR_CONSTANTS = frozenset({DEPOSITED, "Account"})


class ReplayError(Exception):
    pass


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

    # --- the replay_states row ----------------------------------------------------------------

    def _row(self, replay_id: int, lock: bool = False) -> dict[str, Any]:
        query = sql.SQL("SELECT * FROM {}.replay_states WHERE id = %s{}").format(
            self.es, sql.SQL(" FOR NO KEY UPDATE" if lock else "")
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query, [replay_id]).fetchone()
        if row is None:
            raise ReplayError(f"replay {replay_id} is gone from replay_states")
        return row

    def latest(self) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                sql.SQL("SELECT * FROM {}.replay_states ORDER BY id DESC LIMIT 1").format(self.es)
            ).fetchone()

    def resume(self) -> dict[str, Any]:
        """Sequent's ``resume_from_database``: the replay in progress, else an error."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                sql.SQL("SELECT * FROM {}.replay_states WHERE " + IN_PROGRESS + " ORDER BY id DESC LIMIT 1").format(
                    self.es
                )
            ).fetchone()
        if row is None:
            latest = self.latest()
            seen = f"; the latest (id {latest['id']}) is {latest['state']}" if latest else ""
            raise ReplayError(f"no replay is in progress{seen}")
        return row

    @contextmanager
    def _locked(self, replay_id: int) -> Iterator[dict[str, Any]]:
        """Sequent's ``with_locked_state``: a transaction holding the row FOR NO KEY UPDATE."""
        with self.conn.transaction():
            yield self._row(replay_id, lock=True)

    @staticmethod
    def _verify_state(row: dict[str, Any], message: str, *states: str) -> None:
        if row["state"] not in states:
            raise ReplayError(
                f"{message} current state is {' or '.join(states)} (replay {row['id']} is {row['state']})"
            )

    def _set(self, replay_id: int, **columns: Any) -> None:
        assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(name)) for name in columns)
        self.conn.execute(
            sql.SQL("UPDATE {}.replay_states SET {}, updated_at = now() WHERE id = %s").format(self.es, assignments),
            [*columns.values(), replay_id],
        )

    def _mark_failed(self, replay_id: int) -> None:
        """Sequent's ``mark_replay_failed!``: whatever the state is now (even ``aborted``)."""
        try:
            with self._locked(replay_id):
                self._set(replay_id, state="failed")
            self.out(f"replay {replay_id} marked failed")
        except psycopg.Error as error:  # the original failure is what the caller reports
            self.out(f"could not mark replay {replay_id} failed: {error}")

    # --- projectors and tables ------------------------------------------------------------------

    def _projectors(self, names: Sequence[str]) -> list[Projector]:
        """Sequent's ``ProjectorsReplayer.new``: every name must be defined by this code (Ruby's
        ``Class.const_get``), then be a projector."""
        try:
            projectors = [self.release.projector(name) for name in names if name not in NON_PROJECTOR_CONSTANTS]
        except UnknownName as error:
            raise ReplayError(f"{error}: run the replay stages with the code that prepared them") from None
        unsupported = [name for name in names if name in NON_PROJECTOR_CONSTANTS]
        if unsupported:
            raise ReplayError(f"unsupported projector(s) {', '.join(unsupported)}")
        return projectors

    def _verify_replaying_versions(self, projectors: Sequence[Projector]) -> None:
        replaying = {
            s.name: s.replaying_version
            for s in projector_states.read_states(self.conn, self.settings.event_store_schema)
            if s.replaying_version is not None
        }
        mismatched = [p.name for p in projectors if replaying.get(p.name) != p.version]
        if mismatched:
            raise ReplayError(f"running projectors {', '.join(mismatched)} versions do not match replay set")
        superfluous = sorted(set(replaying) - {p.name for p in projectors})
        if superfluous:
            raise ReplayError(f"replay set projectors {', '.join(superfluous)} are not in running projector set")

    @staticmethod
    def _tables(projectors: Sequence[Projector]) -> list[str]:
        return sorted({table for p in projectors for table in p.managed_tables})

    def _managed_relations(self, projectors: Sequence[Projector], schema: str) -> list[str]:
        """The managed tables, plus the tables a managed view of ``schema`` reads."""
        names = self._tables(projectors)
        for table in self._tables(projectors):
            rows = self.conn.execute(
                "SELECT table_name FROM information_schema.view_table_usage "
                "WHERE view_schema = %s AND table_schema = %s AND view_name = %s",
                [schema, schema, table],
            ).fetchall()
            names.extend(row[0] for row in rows)
        return list(dict.fromkeys(names))

    def _partitions(self, schema: str, table: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_partition_tree(to_regclass(%s)) t JOIN pg_class c ON c.oid = t.relid "
            "WHERE t.level > 0 ORDER BY 1",
            [sql.Identifier(schema, table).as_string(self.conn)],
        ).fetchall()
        return [row[0] for row in rows]

    def _snapshot_xmin(self) -> int:
        row = self.conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()
        assert row is not None
        return int(row[0])

    # --- applying events ------------------------------------------------------------------------

    @staticmethod
    def _xact_filter(minimum: int | None, maximum: int | None) -> sql.Composable:
        """Sequent's ``xact_id_filter``: only the initial replay (no minimum) reads NULL xact_ids."""
        if minimum is not None and maximum is not None:
            return sql.SQL("e.xact_id >= {} AND e.xact_id < {}").format(sql.Literal(minimum), sql.Literal(maximum))
        if minimum is not None:
            return sql.SQL("e.xact_id >= {}").format(sql.Literal(minimum))
        if maximum is not None:
            return sql.SQL("(e.xact_id IS NULL OR e.xact_id < {})").format(sql.Literal(maximum))
        return sql.SQL("true")

    def _groups(self, xact_filter: sql.Composable, group_size: int, processes: int) -> tuple[int, list[sql.Composable]]:
        """Sequent's ``calculate_groups``: PostgreSQL's estimate of the events to replay, then
        ``max(8 * processes, estimate / group_size)`` groups of consecutive (partition_key,
        aggregate_id) of about equal event counts."""
        source = sql.SQL(
            "SELECT e.partition_key, e.aggregate_id FROM {}.events e WHERE e.event_type = ANY({}) AND {}"
        ).format(self.es, sql.Literal(EVENT_TYPES), xact_filter)
        plan = self.conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + source).fetchone()
        estimate = int(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0
        target = max(8 * processes, estimate // group_size)
        boundaries = self.conn.execute(
            sql.SQL(
                "WITH source AS ({source}), buckets AS (SELECT ntile({n}) OVER (ORDER BY partition_key, aggregate_id) "
                "AS bucket, partition_key, aggregate_id FROM source) "
                "SELECT DISTINCT ON (bucket) partition_key, aggregate_id FROM buckets "
                "ORDER BY bucket, partition_key, aggregate_id"
            ).format(source=source, n=sql.Literal(target - 1))
        ).fetchall()
        points: list[tuple[str, Any] | None] = [None, *boundaries, None]
        groups: list[sql.Composable] = []
        for lower, upper in zip(points, points[1:], strict=False):
            if lower == upper:
                continue
            bounds: list[sql.Composable] = []
            if lower is not None:
                bounds.append(sql.SQL("(e.partition_key, e.aggregate_id) >= ({}, {})").format(*map(sql.Literal, lower)))
            if upper is not None:
                bounds.append(sql.SQL("(e.partition_key, e.aggregate_id) < ({}, {})").format(*map(sql.Literal, upper)))
            groups.append(sql.SQL(" AND ").join([xact_filter, *bounds]))
        return estimate, groups or [xact_filter]

    def _project_events(
        self, conn: psycopg.Connection, projectors: Sequence[Projector], event_filter: sql.Composable
    ) -> int:
        """Sequent's ``replay_events`` with its default offline persistor (``ActiveRecordPersistor``),
        as catch-up and golive use it: the events in Sequent's order, fetched through a cursor
        ``CURSOR_BLOCK_SIZE`` at a time, each applied by itself by every projector (the statements
        and the one-event filter of the live path, ``Projector.project_event``), plus the configured
        per-event overhead. Needs a transaction; returns the number of events."""
        query = sql.SQL(
            "SELECT e.partition_key, e.aggregate_id, e.sequence_number FROM {}.events e "
            "WHERE e.event_type = ANY({}) AND {} ORDER BY e.partition_key, e.aggregate_id, e.sequence_number"
        ).format(self.es, sql.Literal(EVENT_TYPES), event_filter)
        overhead = EventOverhead(self.settings.replay_event_overhead_ms / 1000)
        count = 0
        with conn.cursor(name="replay_events") as cursor:
            cursor.execute(query)
            while batch := cursor.fetchmany(CURSOR_BLOCK_SIZE):
                for partition_key, aggregate_id, sequence_number in batch:
                    self._apply(
                        conn, projectors, ONE_EVENT, EventKey(partition_key, aggregate_id, sequence_number).params
                    )
                    overhead.add_event()
                count += len(batch)
        overhead.settle()
        return count

    def _apply(
        self,
        conn: psycopg.Connection,
        projectors: Sequence[Projector],
        event_filter: sql.Composable,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        for projector in projectors:
            projector.apply(
                conn,
                target_schema=self.settings.replay_schema,
                event_store_schema=self.settings.event_store_schema,
                event_filter=event_filter,
                params=params or {},
            )

    def _replay(
        self,
        projectors: Sequence[Projector],
        minimum: int | None,
        maximum: int | None,
        group_size: int,
        processes: int,
        stage: str,
        replay_id: int,
    ) -> None:
        """Sequent's ``replay!``: every group in its own transaction, ``processes`` at a time on
        connections of their own; the first failure stops the others (Parallel::Kill). The initial
        replay applies each group at once (a bulk persistor's cost); catch-up applies its events one
        by one, as Sequent's default offline persistor does (see ``_project_events``)."""
        label = f"{stage} {replay_id}"
        started = time.monotonic()
        estimate, groups = self._groups(self._xact_filter(minimum, maximum), group_size, processes)
        self.out(f"{label}: start replaying an estimated {estimate} events in {len(groups)} groups")
        failed = threading.Event()
        one_by_one = stage == "catchup"
        replayed: list[int] = []

        def work(index: int, group: sql.Composable) -> None:
            if failed.is_set():
                return
            try:
                with psycopg.connect(self.settings.database_url, autocommit=True) as conn, conn.transaction():
                    if one_by_one:
                        replayed.append(self._project_events(conn, projectors, group))
                    else:
                        self._apply(conn, projectors, group)
                    if self.settings.replay_fault == stage and index == len(groups) - 1:
                        conn.execute("SELECT 1 / 0")  # SAMPLEAPP_REPLAY_FAULT: a real database error
            except Exception:
                failed.set()
                self.out(f"{label}: replaying failed for group {index + 1}")
                raise

        with ThreadPoolExecutor(max_workers=max(1, min(processes, len(groups)))) as pool:
            futures = [pool.submit(work, index, group) for index, group in enumerate(groups)]
            for future in futures:
                future.result()
        elapsed = time.monotonic() - started
        if one_by_one:
            self.out(
                f"{label}: {len(groups)} groups replayed: {sum(replayed)} events one by one in {elapsed:.3f} s "
                f"with {max(1, min(processes, len(groups)))} at a time"
            )
        else:
            self.out(f"{label}: {len(groups)} groups replayed in {elapsed:.3f} s")

    # --- stages ---------------------------------------------------------------------------------

    def create(self, names: Sequence[str]) -> int:
        """The rake task's name lookup, then ``ProjectorsReplayer.create!``: a new replay ``created``
        (all projectors when none are named). A name the code does not define fails before the
        insert; a name that is defined but is not a projector fails after it (Sequent's ``new``
        checks the classes once the row exists), which leaves that row ``created``, in progress."""
        for name in names:
            if name not in self.release.versions and name not in NON_PROJECTOR_CONSTANTS:
                raise ReplayError(f"prepare: unknown projector '{name}'")
        listed = list(names) if names else [p.name for p in self.release.projectors]
        row = self.conn.execute(
            sql.SQL("INSERT INTO {}.replay_states (state, projectors) VALUES ('created', %s) RETURNING id").format(
                self.es
            ),
            [listed],
        ).fetchone()
        assert row is not None
        self._projectors(listed)
        return int(row[0])

    def prepare(self, names: Sequence[str] = ()) -> int:
        replay_id = self.create(names)
        self.prepare_for_replay(replay_id)
        return replay_id

    def prepare_for_replay(self, replay_id: int) -> None:
        pg_dump = _locate("pg_dump")
        psql = _locate("psql")
        message = "preparing for replay can only be performed when"
        replay_schema = sql.Identifier(self.settings.replay_schema)
        with self._locked(replay_id) as row:
            self._verify_state(row, message, "created")
            projectors = self._projectors(row["projectors"])
            self.conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(replay_schema))
            self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(replay_schema))

        # A new transaction, so that pg_dump and psql see the replay schema.
        with self._locked(replay_id) as row:
            self._verify_state(row, message, "created")
            view = self.settings.view_schema
            tables = [f"--table-and-children={view}.{name}" for name in self._managed_relations(projectors, view)]
            environment = self._pg_environment()
            dump = subprocess.run(
                [pg_dump, "--schema-only", "--quote-all-identifiers", "--strict-names", *tables],
                env=environment,
                capture_output=True,
                text=True,
            )
            if dump.returncode != 0:
                raise ReplayError(f"failed to dump view schema projector tables {dump.stderr.strip()}")
            quoted_view = sql.Identifier(view).as_string(self.conn) + "."
            ddl = dump.stdout.replace(quoted_view, replay_schema.as_string(self.conn) + ".")
            load = subprocess.run(
                [psql, "--single-transaction", "--quiet", "--no-psqlrc", "--set=ON_ERROR_STOP=1", "--file=-"],
                env=environment,
                input=ddl,
                capture_output=True,
                text=True,
            )
            if load.returncode != 0:
                raise ReplayError(f"failed to create replay schema tables: {(load.stdout + load.stderr).strip()}")

        with self._locked(replay_id) as row:
            try:
                self._verify_state(row, message, "created")
                projector_states.register_replaying(
                    self.conn, self.settings.event_store_schema, {p.name: p.version for p in projectors}
                )
                self._set(
                    replay_id,
                    index_definitions=Jsonb(self._index_definitions()),
                    table_cluster_indexes=Jsonb(self._cluster_indexes()),
                )
                self._drop_indexes_not_needed_for_replay()
                self._set(replay_id, state="prepared")
            except Exception:
                # Sequent's rescue sits inside this transaction: mark_replay_failed! joins it and the
                # re-raise rolls the marking back with the rest, so the replay stays `created`. After a
                # database error the transaction is aborted and the marking itself fails: that error
                # is the one reported, the original as its cause.
                self._set(replay_id, state="failed")
                raise
        self.out(f"replay {replay_id}: prepared {', '.join(f'{p.name} v{p.version}' for p in projectors)}")

    def replay(self, group_size: int = DEFAULT_GROUP_SIZE, processes: int = DEFAULT_PROCESSES) -> None:
        """Sequent's ``perform_initial_replay``."""
        replay_id = int(self.resume()["id"])
        with self._locked(replay_id) as row:
            self._verify_state(row, "initial replay can only be performed when", "prepared")
            projectors = self._projectors(row["projectors"])
            self._verify_replaying_versions(projectors)
            non_empty = [
                table
                for table in self._tables(projectors)
                if self.conn.execute(
                    sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(self.settings.replay_schema, table))
                ).fetchone()
            ]
            if non_empty:
                raise ReplayError(f"managed tables {', '.join(non_empty)} are not empty")
            self._set(replay_id, state="replaying")
            maximum = self._snapshot_xmin()
        try:
            self._replay(projectors, None, maximum, group_size, processes, "replay", replay_id)
            with self._locked(replay_id) as row:
                self._verify_replaying_versions(projectors)
                if row["state"] != "replaying":
                    raise ReplayError(f"internal error: replay {replay_id} is {row['state']}, not replaying")
                self._set(replay_id, state="replayed", continue_replay_at_xact_id=maximum)
        except Exception:
            self._mark_failed(replay_id)
            raise
        self.out(f"replay {replay_id}: replayed the events below xact_id {maximum}")

    def catchup(self, group_size: int = DEFAULT_GROUP_SIZE, processes: int = DEFAULT_PROCESSES) -> None:
        """Sequent's ``perform_incremental_replay``."""
        replay_id = int(self.resume()["id"])
        with self._locked(replay_id) as row:
            self._verify_state(row, "catching up can only be performed when", "replayed", "optimized")
            projectors = self._projectors(row["projectors"])
            self._verify_replaying_versions(projectors)
            saved_state = row["state"]
            minimum = row["continue_replay_at_xact_id"]
            self._set(replay_id, state="catching_up")
            maximum = self._snapshot_xmin()
        try:
            self._replay(projectors, minimum, maximum, group_size, processes, "catchup", replay_id)
            with self._locked(replay_id) as row:
                self._verify_replaying_versions(projectors)
                if row["state"] != "catching_up":
                    raise ReplayError(f"internal error: replay {replay_id} is {row['state']}, not catching_up")
                self._set(replay_id, state=saved_state, continue_replay_at_xact_id=maximum)
        except Exception:
            self._mark_failed(replay_id)
            raise
        self.out(f"replay {replay_id}: caught up to xact_id {maximum}, state {saved_state}")

    def optimize(self) -> None:
        """Sequent's ``prepare_for_activation!``; a failure leaves the state as it was."""
        replay_id = int(self.resume()["id"])
        message = "activation can only be performed when"
        with self._locked(replay_id) as row:
            self._verify_state(row, message, "replayed")
            projectors = self._projectors(row["projectors"])
            self._verify_replaying_versions(projectors)
        replay_schema = self.settings.replay_schema
        cluster_indexes: dict[str, str] = row["table_cluster_indexes"] or {}
        definitions: dict[str, str] = row["index_definitions"] or {}
        # VACUUM and CLUSTER cannot run inside a transaction block.
        for table in self._managed_relations(projectors, replay_schema):
            if table in cluster_indexes:
                self._create_index_if_missing(cluster_indexes[table], definitions)
                self.conn.execute(
                    sql.SQL("CLUSTER {} USING {}").format(
                        sql.Identifier(replay_schema, table), sql.Identifier(cluster_indexes[table])
                    )
                )
            else:
                self.conn.execute(sql.SQL("VACUUM FULL {}").format(sql.Identifier(replay_schema, table)))
        with self._locked(replay_id) as row:
            self._verify_state(row, message, "replayed")
            self._verify_replaying_versions(projectors)
            for name in definitions:
                self._create_index_if_missing(name, definitions)
            for table in self._managed_relations(projectors, replay_schema):
                self.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(replay_schema, table)))
            self._set(replay_id, state="optimized")
        self.out(f"replay {replay_id}: optimized")

    def golive(self) -> None:
        """Sequent's ``activate!``: one transaction, so no other session ever sees ``activating``.

        Registering activating takes projector_states in ACCESS EXCLUSIVE mode until the commit:
        it waits for every publisher that read the old states (they hold ACCESS SHARE until they
        commit) and holds back new ones until the new states are committed, so every event is
        either below this transaction's snapshot (replayed here) or published under the new states.
        The 100 ms lock timeout covers only the lock statements (retried up to 10 s)."""
        replay_id = int(self.resume()["id"])
        view, replay_schema, archive = (
            self.settings.view_schema,
            self.settings.replay_schema,
            self.settings.archive_schema,
        )
        with self._locked(replay_id) as row:
            self._verify_state(row, "going live can only be performed when", "optimized")
            projectors = self._projectors(row["projectors"])
            self._verify_replaying_versions(projectors)
            versions = {p.name: p.version for p in projectors}
            # Writers wait from here (a queued ACCESS EXCLUSIVE request already holds them back) to the commit.
            locking = time.monotonic()
            projector_states.register_activating(self.conn, self.settings.event_store_schema, versions)
            relations = self._managed_relations(projectors, view)
            present = [name for name in relations if self._relation_exists(view, name)]
            if present:
                projector_states.lock_exclusively(self.conn, [sql.Identifier(view, name) for name in present])
            locked = time.monotonic()
            # The tail: every event from the mark on, up to the newest (no upper bound), one by one.
            tail_filter = self._xact_filter(row["continue_replay_at_xact_id"], None)
            tail = self._project_events(self.conn, projectors, tail_filter)
            replayed = time.monotonic()
            self.conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(archive)))
            self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(archive)))
            self._move_relations(projectors, view, archive)
            self._move_relations(projectors, replay_schema, view)
            self._ensure_archive_has_no_dependents()
            self.conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(replay_schema)))
            projector_states.register_active(self.conn, self.settings.event_store_schema, versions)
            self._set(replay_id, state="live")
        committed = time.monotonic()
        self.out(f"replay {replay_id}: live; active: {', '.join(f'{n} v{v}' for n, v in versions.items())}")

        def ms(start: float, end: float) -> str:
            return f"{(end - start) * 1000:.0f} ms"

        self.out(
            f"golive {replay_id}: replayed the tail of {tail} events one by one in {ms(locked, replayed)}; "
            f"writers held back {ms(locking, committed)} (locks {ms(locking, locked)}, "
            f"tables swapped and committed in {ms(replayed, committed)})"
        )

    def abort(self) -> None:
        """Sequent's ``resume_from_database`` then ``abort!``: the replay in progress when abort
        starts, then its row locked and set ``aborted`` with no check of the state it now has (a
        golive holding the row commits first, and its ``live`` replay becomes ``aborted``). Does
        not stop a running stage."""
        replay_id = int(self.resume()["id"])
        with self._locked(replay_id) as row:
            projectors = self._projectors(row["projectors"])
            projector_states.abort_replaying(self.conn, self.settings.event_store_schema, [p.name for p in projectors])
            self._set(replay_id, state="aborted")
            self.conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.settings.replay_schema))
            )
        cleared = ", ".join(row["projectors"])
        self.out(f"replay {replay_id} ({row['state']}) aborted; cleared replaying/activating of {cleared}")

    def status(self) -> dict[str, Any] | None:
        """The latest replay (Sequent's ``replay:status`` shows ``ReplayState.last``), with the
        number of events from ``continue_replay_at_xact_id`` on (a scan: xact_id has no index)."""
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

    def status_json(self) -> str:
        return json.dumps(self.status(), default=_json_default, sort_keys=True)

    # --- prepare's and optimize's table work ----------------------------------------------------

    def _pg_environment(self) -> dict[str, str]:
        return pg_environment(self.settings.database_url)

    def _index_definitions(self) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", [self.settings.replay_schema]
        ).fetchall()
        return {name: definition for name, definition in rows}

    def _cluster_indexes(self) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT c.relname, ic.relname FROM pg_namespace ns JOIN pg_class c ON c.relnamespace = ns.oid "
            "JOIN pg_index i ON c.oid = i.indrelid JOIN pg_class ic ON i.indexrelid = ic.oid "
            "WHERE ns.nspname = %s AND c.relkind = 'r' AND i.indisclustered",
            [self.settings.replay_schema],
        ).fetchall()
        return {table: index for table, index in rows}

    def _drop_indexes_not_needed_for_replay(self) -> None:
        """Non-unique secondary indexes slow the replay down; optimize recreates them."""
        rows = self.conn.execute(
            "SELECT ic.relname FROM pg_namespace ns JOIN pg_class c ON c.relnamespace = ns.oid "
            "JOIN pg_index i ON c.oid = i.indrelid JOIN pg_class ic ON i.indexrelid = ic.oid "
            "WHERE ns.nspname = %s AND c.relkind = 'r' "
            "AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion",
            [self.settings.replay_schema],
        ).fetchall()
        for (name,) in rows:
            self.conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(self.settings.replay_schema, name)))

    def _create_index_if_missing(self, name: str, definitions: dict[str, str]) -> None:
        exists = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s)",
            [self.settings.replay_schema, name],
        ).fetchone()
        if not (exists and exists[0]):
            self.conn.execute(definitions[name].encode())

    def _relation_exists(self, schema: str, name: str) -> bool:
        row = self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [sql.Identifier(schema, name).as_string(self.conn)]
        ).fetchone()
        return bool(row and row[0])

    def _move_relations(self, projectors: Sequence[Projector], source: str, target: str) -> None:
        for table in self._managed_relations(projectors, source):
            names = [table, *(self._partitions(source, table) if self._relation_exists(source, table) else [])]
            for name in names:
                self.conn.execute(
                    sql.SQL("ALTER TABLE IF EXISTS {} SET SCHEMA {}").format(
                        sql.Identifier(source, name), sql.Identifier(target)
                    )
                )

    def _ensure_archive_has_no_dependents(self) -> None:
        """Dropping the archived relations must work (tried in a subtransaction, then rolled back):
        nothing outside may still point at the tables that were just replaced."""
        archive = self.settings.archive_schema
        rows = self.conn.execute(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = %s", [archive]
        ).fetchall()
        views = [sql.Identifier(archive, name) for name, kind in rows if kind == "VIEW"]
        tables = [sql.Identifier(archive, name) for name, kind in rows if kind != "VIEW"]

        class Rollback(Exception):
            pass

        try:
            with self.conn.transaction():
                if views:
                    self.conn.execute(sql.SQL("DROP VIEW {}").format(sql.SQL(", ").join(views)))
                if tables:
                    self.conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(tables)))
                raise Rollback
        except Rollback:
            pass
        except psycopg.errors.DependentObjectsStillExist as error:
            detail = (error.diag.message_detail or "").strip()
            raise ReplayError(
                f"dependent objects still exist for archived view tables: {error.diag.message_primary}. {detail}"
            ) from None


class EventOverhead:
    """The per-event time Sequent spends beyond the SQL the sample app runs (see
    ``Settings.replay_event_overhead_ms``): owed per event, slept off in steps of a few
    milliseconds (a sleep of a fraction of a millisecond per event would overshoot), with an
    overshoot counted against what is owed next."""

    STEP_S = 0.005

    def __init__(self, per_event_s: float) -> None:
        self.per_event_s = per_event_s
        self.owed_s = 0.0

    def add_event(self) -> None:
        self.owed_s += self.per_event_s
        if self.owed_s >= self.STEP_S:
            self.settle()

    def settle(self) -> None:
        if self.owed_s > 0:
            started = time.monotonic()
            time.sleep(self.owed_s)
            self.owed_s -= time.monotonic() - started


def _locate(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise ReplayError(
            f"cannot determine full path of the `{command}` executable: prepare needs pg_dump and psql on PATH"
        )
    return path


def pg_environment(database_url: str) -> dict[str, str]:
    """This process's environment with the connection's libpq parameters, for pg_dump and psql."""
    parameters = conninfo_to_dict(database_url)
    environment = dict(os.environ)
    for name, variable in PG_ENVIRONMENT.items():
        if parameters.get(name) is not None:
            environment[variable] = str(parameters[name])
    return environment


def _json_default(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def main(argv: list[str] | None = None) -> int:
    """``python -m sampleapp.replay <stage> [args]``: the short form of the rake tasks."""
    from sampleapp import rake

    return rake.main(rake.from_short_form(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
