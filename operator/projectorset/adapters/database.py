"""Sequent's projector-state protocol, spoken with psycopg 3: the only module with SQL.

Reads ``projector_states`` and ``replay_states`` into the plain data of ``sequent.py``;
writes ``projector_states`` the way Sequent's own writers do (lib/sequent/core/projectors.rb;
see docs/sequent-protocol.md): each change in its own transaction,
``lock_timeout`` 100 ms, ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE``, upsert, commit,
retried on lock timeout until a total timeout. Live event publishers read the table
in every event transaction, so no write here may make them wait for long.

Every illegal transition is refused *inside* the lock, before anything is written,
with an error that names the projector and the versions involved.

Every read runs in its own short transaction with a ``lock_timeout`` and a
``statement_timeout``: golive holds ``projector_states`` in ACCESS EXCLUSIVE mode for its whole
transaction, so a read that waited for it would stall the pass (and a read that held the table
while counting events would stall golive and, behind golive, every publisher).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

from projectorset.adapters.pools import SharedPool
from projectorset.api import Check
from projectorset.api.conditions import Reason, ReportedError
from projectorset.domain.backoff import Backoff
from projectorset.domain.sequent import FINISHED_STATES, DatabaseState, ProjectorState, ReplayState

log = logging.getLogger(__name__)
T = TypeVar("T")

# While golive runs, the watch reads projector_states in a loop. Each read waits on golive's lock,
# which is granted the moment golive commits; this bounds one wait so a wakeup is never missed long.
WATCH_LOCK_TIMEOUT_MS = 250

# A check waits at most this long for a lock (a migration, golive) before it fails: it must not
# queue behind an exclusive lock and make every reader behind it wait too.
CHECK_LOCK_TIMEOUT_MS = 2000
# A check's result in the status and Events is cut to this length.
CHECK_RESULT_MAX_CHARS = 240
# Between tries to lock projector_states (each already waits the lock timeout): short, jittered
# waits, so competing writers do not retry in lockstep.
LOCK_RETRY_BACKOFF = Backoff(base=0.01, cap=0.1)
_jitter = random.Random()


# ---- errors -------------------------------------------------------------------------------------


class DatabaseError(ReportedError):
    """A database problem the operator reports as a condition."""

    reason = Reason.DATABASE_ERROR


class DatabaseUnreachable(DatabaseError):
    reason = Reason.DATABASE_UNREACHABLE


class DatabaseConnectionsBusy(DatabaseError):
    """Every connection of the shared, bounded pool was in use: load, not an outage."""

    reason = Reason.DATABASE_CONNECTIONS_BUSY


class DatabaseAuthenticationFailed(DatabaseError):
    reason = Reason.DATABASE_AUTHENTICATION_FAILED


class InvalidDatabaseURI(DatabaseError):
    reason = Reason.INVALID_DATABASE_URI


class SequentTablesMissing(DatabaseError):
    reason = Reason.SEQUENT_TABLES_MISSING


class ProjectorStatesBusy(DatabaseError):
    """The lock on projector_states could not be taken within the total timeout."""

    reason = Reason.PROJECTOR_STATES_LOCKED


class DatabaseReadTimedOut(DatabaseError):
    """A read hit its statement_timeout (a slow or overloaded database): nothing was changed."""

    reason = Reason.DATABASE_READ_TIMED_OUT


class DatabasePermissionDenied(DatabaseError):
    """The role in the Secret lacks a privilege on Sequent's tables."""

    reason = Reason.DATABASE_PERMISSION_DENIED


class IllegalProjectorState(DatabaseError):
    """A write that Sequent's protocol forbids; the message names the projector and versions."""

    reason = Reason.ILLEGAL_PROJECTOR_STATE


def redact(message: str, conninfo: str) -> str:
    """Remove the URI and its password from a message that may be logged or shown in status."""
    secrets = [conninfo]
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        secrets.append(str(password))
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            message = message.replace(secret, "***")
    return message


def classify_connection_error(error: Exception, conninfo: str) -> DatabaseError:
    """A fixed reason and message for a connection that failed. libpq's own text is never shown:
    its parse errors quote the connection string around the fault (a stray ``%`` in a password, an
    unquoted space in a keyword/value string, a PEM's line breaks), so any part of the password
    may be in it; its server messages add nothing a user needs here."""
    if isinstance(error, psycopg.ProgrammingError):
        return InvalidDatabaseURI(
            "the Secret's value is neither a libpq URI nor a keyword/value connection string "
            "(percent-encode reserved characters of the password in a URI, quote values with spaces)"
        )
    lowered = str(error).lower()
    sqlstate = getattr(error, "sqlstate", None)
    if "invalid" in lowered and ("value" in lowered or "uri" in lowered or "connection info" in lowered):
        return InvalidDatabaseURI("the Secret's connection string has an invalid value")
    if sqlstate in ("28P01", "28000") or "authentication failed" in lowered or "password" in lowered:
        return DatabaseAuthenticationFailed("the database refused the credentials in the Secret")
    if sqlstate == "3D000" or ("does not exist" in lowered and "database" in lowered):
        return DatabaseUnreachable("the database named in the Secret does not exist")
    if "timeout" in lowered or "timed out" in lowered:
        return DatabaseUnreachable("the database did not answer within the connect timeout")
    return DatabaseUnreachable("cannot connect to the database (refused, unreachable, or the connection was closed)")


# ---- the protocol -------------------------------------------------------------------------------


class SequentDatabase:
    """One application's Sequent tables in ``schema``; thread-safe through its connection pool."""

    def __init__(
        self,
        conninfo: str,
        schema: str = "sequent_schema",
        *,
        lock_timeout_ms: int = 100,
        write_timeout_s: float = 10.0,
        read_lock_timeout_ms: int = 200,
        read_statement_timeout_ms: int = 5000,
        connect_timeout_s: float = 5.0,
        pool_size: int = 2,
        pool: SharedPool | None = None,
    ) -> None:
        self._conninfo = conninfo
        self.schema = schema
        self.lock_timeout_ms = lock_timeout_ms
        self.write_timeout_s = write_timeout_s
        self.read_lock_timeout_ms = read_lock_timeout_ms
        self.read_statement_timeout_ms = read_statement_timeout_ms
        self._connect_timeout_s = connect_timeout_s
        try:
            conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as error:
            raise classify_connection_error(error, conninfo) from None
        # The operator passes the pool it shares among every ProjectorSet on this database
        # (pools.PoolSet); a database made on its own gets a small pool of its own.
        self._owns_pool = pool is None
        self._pool = pool or SharedPool(conninfo, max_size=pool_size, connect_timeout_s=connect_timeout_s)

    # -- plumbing --

    def close(self) -> None:
        if self._owns_pool:
            self._pool.close()

    def _table(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(name))

    def _run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """Run ``work`` on a pooled connection, turning connection failures into DatabaseErrors."""
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except psycopg_pool.PoolTimeout:
            if self._pool.saturated():
                # Not an outage: every connection the operator allows itself here is in use.
                raise DatabaseConnectionsBusy(
                    f"all {self._pool.max_size} connections to the database stayed in use "
                    f"for {self._connect_timeout_s:g} s"
                ) from None
            # The pool hides why it could not connect; one direct attempt tells the user.
            raise self._diagnose() from None
        except errors.UndefinedTable as error:
            raise SequentTablesMissing(
                f"Sequent's tables are missing in schema {self.schema}: {redact(str(error), self._conninfo)}"
            ) from None
        except errors.InvalidSchemaName as error:
            raise SequentTablesMissing(
                f"schema {self.schema} does not exist: {redact(str(error), self._conninfo)}"
            ) from None
        except errors.InsufficientPrivilege:
            raise DatabasePermissionDenied(
                f"the database role may not use Sequent's tables in schema {self.schema}: grant it SELECT on "
                "projector_states, replay_states and events, and INSERT, UPDATE on projector_states"
            ) from None
        except psycopg.OperationalError as error:
            raise classify_connection_error(error, self._conninfo) from None
        except psycopg.Error as error:
            # Anything else the server or the driver reports: its code, never its text.
            raise DatabaseError(f"the database reported an error (SQLSTATE {error.sqlstate or 'none'})") from None

    def _diagnose(self) -> DatabaseError:
        try:
            psycopg.connect(self._conninfo, connect_timeout=max(1, int(self._connect_timeout_s))).close()
        except psycopg.Error as error:
            return classify_connection_error(error, self._conninfo)
        return DatabaseUnreachable("no database connection became available in time")

    # -- reads --

    def _read(self, work: Callable[[psycopg.Connection], T], *, lock_timeout_ms: int | None = None) -> T:
        """Run ``work`` in a read transaction that neither waits long for a lock nor runs long."""
        lock_ms = self.read_lock_timeout_ms if lock_timeout_ms is None else lock_timeout_ms

        def read(conn: psycopg.Connection) -> T:
            try:
                with conn.transaction():
                    _set_timeouts(conn, lock_ms, max(lock_ms, self.read_statement_timeout_ms))
                    return work(conn)
            except errors.LockNotAvailable:
                raise ProjectorStatesBusy(
                    f"projector_states was locked by another transaction for more than {lock_ms} ms "
                    "(golive holds it until it commits; a stuck transaction holds it until it ends); "
                    "read again at the next pass"
                ) from None
            except errors.QueryCanceled:
                raise DatabaseReadTimedOut(
                    f"a read of {self.schema} took longer than {self.read_statement_timeout_ms} ms "
                    "(statement_timeout); nothing was changed"
                ) from None

        return self._run(read)

    def read_state(self) -> DatabaseState:
        """projector_states and the replay, then the lag: two short transactions, so the
        count of events never holds projector_states."""

        def read(conn: psycopg.Connection) -> tuple[dict[str, ProjectorState], ReplayState | None]:
            projectors = self._projector_rows(conn)
            # The replay in progress (Sequent's unique index admits one), else the latest one.
            replay_row = conn.execute(
                sql.SQL(
                    "SELECT id, state, projectors, continue_replay_at_xact_id FROM {} "
                    "ORDER BY (state <> ALL(%s)) DESC, id DESC LIMIT 1"
                ).format(self._table("replay_states")),
                ([state.value for state in sorted(FINISHED_STATES)],),
            ).fetchone()
            replay = (
                ReplayState(
                    id=replay_row[0],
                    state=replay_row[1],
                    projectors=tuple(replay_row[2] or ()),
                    continue_replay_at_xact_id=replay_row[3],
                )
                if replay_row
                else None
            )
            return projectors, replay

        projectors, replay = self._read(read)
        if replay is None or not replay.in_progress or replay.continue_replay_at_xact_id is None:
            return DatabaseState(projectors=projectors, replay=replay)
        lag, complete = self.replay_lag(replay.continue_replay_at_xact_id)
        return DatabaseState(projectors=projectors, replay=replay, replay_lag=lag, replay_lag_at_least=not complete)

    def read_projector_states(self, lock_timeout_ms: int | None = None) -> DatabaseState:
        """Only projector_states: the cheap read the operator repeats while golive runs. Waiting
        on golive's lock is what makes it see the commit at once; ``lock_timeout_ms`` bounds it."""

        return self._read(
            lambda conn: DatabaseState(projectors=self._projector_rows(conn)), lock_timeout_ms=lock_timeout_ms
        )

    def _projector_rows(self, conn: psycopg.Connection) -> dict[str, ProjectorState]:
        query = sql.SQL(
            "SELECT name, active_version, activating_version, replaying_version FROM {} ORDER BY name"
        ).format(self._table("projector_states"))
        return {row[0]: ProjectorState(*row) for row in conn.execute(query)}

    def replay_lag(self, since_xact_id: int) -> tuple[int, bool]:
        """Events a catch-up would still replay: those with ``xact_id >= since_xact_id``.

        ``events.xact_id`` has no index and the table is Sequent's largest, so this walks
        Sequent's index on ``events.command_id`` from the newest command down until no lower
        command can belong to a transaction at or after ``since_xact_id`` (``_walk_commands``);
        past ``LAG_MAX_ROWS`` rows it stops. Returns the count and whether it is complete (else a
        lower bound, and at least ``LAG_MAX_ROWS // 2``). Never below the truth when complete; it
        reads events only, so ``projector_states`` is never held meanwhile.
        See docs/sequent-protocol.md ("Lag")."""
        return self._read(lambda conn: _lag(conn, self._table("events"), since_xact_id))

    # -- checks before golive --

    def run_checks(self, checks: Sequence[Check]) -> list[CheckOutcome]:
        """Run each check of ``spec.replay.checks`` and say whether it passed (README: "Checks
        before golive"): exactly one row whose first column is true.

        The checks run on a connection of their own, closed afterwards, so nothing a query leaves
        in its session (a setting, an advisory lock) reaches the operator's pool. Each runs in a
        read-only transaction (``SET TRANSACTION READ ONLY``, the session's default too) that is
        always rolled back, with ``statement_timeout`` = its timeout and a short ``lock_timeout``,
        as one prepared statement (the extended protocol refuses a second statement after a ``;``).
        A check that fails, errs or times out is a result; only a connection that breaks raises."""
        if not checks:
            return []
        try:
            conn = psycopg.connect(
                self._conninfo,
                connect_timeout=max(1, int(self._connect_timeout_s)),
                application_name="projectorset-operator-checks",
            )
        except psycopg.Error as error:
            raise classify_connection_error(error, self._conninfo) from None
        try:
            conn.execute("SET default_transaction_read_only = on")
            conn.commit()
            return [self._run_check(conn, check) for check in checks]
        except psycopg.Error as error:
            raise classify_connection_error(error, self._conninfo) from None
        finally:
            conn.close()

    def _run_check(self, conn: psycopg.Connection, check: Check) -> CheckOutcome:
        timeout_ms = check.timeout_seconds * 1000
        try:
            with conn.transaction(force_rollback=True):
                conn.execute("SET TRANSACTION READ ONLY")
                _set_timeouts(conn, min(CHECK_LOCK_TIMEOUT_MS, timeout_ms), timeout_ms)
                cursor = conn.execute(check.query, prepare=True)
                rows = cursor.fetchmany(2) if cursor.description is not None else None
        except psycopg.Error as error:
            if conn.broken:
                raise  # an outage, not the check's fault: the caller reports it and the pass retries
            if isinstance(error, errors.QueryCanceled) and "statement timeout" in (error.diag.message_primary or ""):
                return CheckOutcome(
                    check.name, False, self._clip(f"timed out after {check.timeout_seconds}s: {self._describe(error)}")
                )
            if isinstance(error, errors.LockNotAvailable):
                return CheckOutcome(
                    check.name,
                    False,
                    self._clip(f"waited more than {CHECK_LOCK_TIMEOUT_MS} ms for a lock: {self._describe(error)}"),
                )
            return CheckOutcome(check.name, False, self._clip(self._describe(error)))
        return CheckOutcome(check.name, *_judge(rows))

    def _describe(self, error: psycopg.Error) -> str:
        """The error's class and the server's one-line message, never the connection's text."""
        message = error.diag.message_primary
        if not message:
            lines = str(error).strip().splitlines()
            message = lines[0] if lines else "no message"
        return f"{type(error).__name__}: {redact(message, self._conninfo)}"

    @staticmethod
    def _clip(text: str) -> str:
        return text if len(text) <= CHECK_RESULT_MAX_CHARS else text[: CHECK_RESULT_MAX_CHARS - 1] + "…"

    # -- writes --

    def _write(self, description: str, change: Callable[[psycopg.Connection, dict[str, ProjectorState]], None]) -> None:
        """Sequent's write discipline: short lock timeout, exclusive lock, retried to a total timeout."""
        deadline = time.monotonic() + self.write_timeout_s
        attempts = 0

        def attempt(conn: psycopg.Connection) -> bool:
            nonlocal attempts
            attempts += 1
            try:
                with conn.transaction():
                    _set_timeouts(conn, self.lock_timeout_ms, self.read_statement_timeout_ms)
                    conn.execute(
                        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self._table("projector_states"))
                    )
                    change(conn, self._projector_rows(conn))
                return True
            except errors.LockNotAvailable:
                return False
            except errors.CheckViolation as error:
                raise IllegalProjectorState(
                    f"{description} refused by the database: {redact(str(error).strip(), self._conninfo)}"
                ) from None

        while True:
            if self._run(attempt):
                if attempts > 1:
                    log.info("%s took %d attempts to lock projector_states", description, attempts)
                return
            if time.monotonic() >= deadline:
                raise ProjectorStatesBusy(
                    f"{description}: projector_states stayed locked by another transaction "
                    f"for {self.write_timeout_s:g} s ({attempts} attempts)"
                )
            time.sleep(LOCK_RETRY_BACKOFF.delay(attempts, _jitter))

    def _upsert(
        self,
        conn: psycopg.Connection,
        name: str,
        *,
        active: int | None | _Keep = None,
        activating: int | None | _Keep = None,
        replaying: int | None | _Keep = None,
    ) -> None:
        values = {"active_version": active, "activating_version": activating, "replaying_version": replaying}
        changed = {column: value for column, value in values.items() if not isinstance(value, _Keep)}
        columns = [sql.Identifier(column) for column in changed]
        conn.execute(
            sql.SQL(
                "INSERT INTO {table} (name, {columns}) VALUES (%s, {placeholders}) "
                "ON CONFLICT (name) DO UPDATE SET {assignments}, updated_at = now()"
            ).format(
                table=self._table("projector_states"),
                columns=sql.SQL(", ").join(columns),
                placeholders=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                assignments=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(column) for column in columns),
            ),
            (name, *changed.values()),
        )

    def register_replaying(self, versions: Mapping[str, int]) -> None:
        """Record that a background replay builds ``versions`` (Sequent's prepare step)."""

        def change(conn: psycopg.Connection, current: dict[str, ProjectorState]) -> None:
            for name, version in sorted(versions.items()):
                state = current.get(name, ProjectorState(name))
                if state.activating_version is not None:
                    raise IllegalProjectorState(
                        f"cannot register {name} replaying version {version}: "
                        f"version {state.activating_version} is activating"
                    )
                if state.replaying_version not in (None, version):
                    raise IllegalProjectorState(
                        f"cannot register {name} replaying version {version}: "
                        f"version {state.replaying_version} is already replaying"
                    )
                self._upsert(conn, name, replaying=version, activating=None, active=KEEP)

        self._write("register replaying", change)

    def activate(self, versions: Mapping[str, int], deactivate: Iterable[str] = ()) -> None:
        """Register ``versions`` active and deactivate ``deactivate``, in one transaction.

        This is Sequent's "activate the current configuration" when no replay is needed,
        and also how a first install is adopted (an empty table).
        """
        removed = sorted(set(deactivate))

        def change(conn: psycopg.Connection, current: dict[str, ProjectorState]) -> None:
            for name, version in sorted(versions.items()):
                state = current.get(name, ProjectorState(name))
                busy = state.activating_version if state.activating_version is not None else state.replaying_version
                if busy is not None and busy != version:
                    what = "activating" if state.activating_version is not None else "replaying"
                    raise IllegalProjectorState(f"cannot activate {name} version {version}: version {busy} is {what}")
                self._upsert(conn, name, active=version, activating=None, replaying=None)
            for name in removed:
                self._deactivate_one(conn, current, name)

        self._write("activate", change)

    def deactivate(self, names: Iterable[str]) -> None:
        """Clear the active version of projectors the new release no longer has."""
        removed = sorted(set(names))

        def change(conn: psycopg.Connection, current: dict[str, ProjectorState]) -> None:
            for name in removed:
                self._deactivate_one(conn, current, name)

        self._write("deactivate", change)

    def _deactivate_one(self, conn: psycopg.Connection, current: dict[str, ProjectorState], name: str) -> None:
        state = current.get(name)
        if state is None:
            return
        if state.activating_version is not None:
            raise IllegalProjectorState(f"cannot deactivate {name}: version {state.activating_version} is activating")
        self._upsert(conn, name, active=None, activating=KEEP, replaying=KEEP)

    def abort(self, names: Iterable[str]) -> None:
        """Clear the replaying and activating versions of ``names`` (Sequent's abort write), and of
        no other projector: another application may share the schema."""
        selected = set(names)

        def change(conn: psycopg.Connection, current: dict[str, ProjectorState]) -> None:
            for name, state in sorted(current.items()):
                if name not in selected:
                    continue
                if state.replaying_version is not None or state.activating_version is not None:
                    self._upsert(conn, name, active=KEEP, activating=None, replaying=None)

        self._write("abort", change)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    # What the query returned, or the error's class and message.
    result: str


def _judge(rows: list[tuple[Any, ...]] | None) -> tuple[bool, str]:
    """A check passes when it returns exactly one row whose first column is the boolean true."""
    if rows is None:
        return False, "no result set: a check is one query returning one row"
    if not rows:
        return False, "no row"
    if len(rows) > 1:
        return False, "more than one row"
    if not rows[0]:
        return False, "a row without columns"
    value = rows[0][0]
    if value is True:
        return True, "true"
    if value is False:
        return False, "false"
    if value is None:
        return False, "NULL"
    shown = str(value)
    shown = shown if len(shown) <= 80 else shown[:79] + "…"
    return False, f"{shown} ({type(value).__name__}, not a boolean)"


def _set_timeouts(conn: psycopg.Connection, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
    conn.execute(
        sql.SQL("SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}").format(
            sql.Literal(f"{lock_timeout_ms}ms"), sql.Literal(f"{statement_timeout_ms}ms")
        )
    )


# The lag read walks events down Sequent's index on command_id, newest commands first, in ranges
# of command ids that double from the first (at least this many ids, and twice as many as the
# server can have transactions open at once). Past LAG_MAX_ROWS rows it stops: with at least half
# of them behind, it says "at least" that many; with fewer (a few huge transactions below the
# position fill the ranges) it counts the rest of the table exactly.
LAG_FIRST_RANGE = 256
LAG_MAX_ROWS = 500_000


def _lag(conn: psycopg.Connection, events: sql.Composable, since_xact_id: int) -> tuple[int, bool]:
    """(events with xact_id >= since_xact_id, whether that count is complete).

    One REPEATABLE READ transaction, so every range sees the same events. Without an index on
    ``command_id`` (a schema older than Sequent's) the count is exact: a scan of the table."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = {}::regclass AND i.indisvalid AND a.attname = 'command_id'), "
            # The most transactions the server can have open at one instant: every backend,
            # background worker and prepared transaction.
            "current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int "
            "+ current_setting('max_worker_processes')::int + current_setting('autovacuum_max_workers')::int"
        ).format(sql.Literal(events.as_string(conn)))
    ).fetchone()
    assert row is not None
    if not row[0]:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE xact_id >= %s").format(events), (since_xact_id,)
        ).fetchone()
        return (int(count[0]) if count else 0), True
    return _walk_commands(conn, events, since_xact_id, int(row[1]))


def _walk_commands(
    conn: psycopg.Connection, events: sql.Composable, since_xact_id: int, open_at_once: int
) -> tuple[int, bool]:
    """Count events with xact_id >= C over ranges of command ids from the newest down, until no
    lower command can belong to a transaction with an xact id >= C (docs/sequent-protocol.md, "Lag").

    Why stopping is safe: a transaction draws its command ids (one sequence, CACHE 1) while it
    holds its xact id, so every command of a transaction with an xact id >= C is drawn after the
    moment xact id C was handed out. A transaction with an xact id < C that was not open at that
    moment had ended before it, so its commands are all lower than any of theirs. At most
    ``open_at_once`` transactions were open at that moment: once the ranges read hold events of
    more distinct transactions below C than that, one of them had ended, and every command of a
    transaction >= C lies within the ranges read. Nothing here relies on where rows lie in the
    heap (VACUUM lets new rows land in old pages) or on commit order (a long transaction's early
    commands are found however late it commits)."""
    ends = conn.execute(sql.SQL("SELECT min(command_id), max(command_id) FROM {}").format(events)).fetchone()
    if ends is None or ends[0] is None:
        return 0, True
    lowest, upper = int(ends[0]), int(ends[1]) + 1
    first = span = max(LAG_FIRST_RANGE, 2 * (open_at_once + 1))
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE xact_id >= %(since)s), count(*), "
        # Enough of the range's transactions below C to tell whether more than open_at_once were seen.
        "(array_agg(DISTINCT xact_id) FILTER (WHERE xact_id < %(since)s))[1:%(wanted)s] "
        "FROM {} WHERE command_id >= %(lower)s AND command_id < %(upper)s"
    ).format(events)

    def behind_between(low: int, high: int) -> int:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE command_id >= %s AND command_id < %s AND xact_id >= %s").format(
                events
            ),
            (low, high, since_xact_id),
        ).fetchone()
        return int(row[0]) if row else 0

    lag, rows_read = 0, 0
    older: set[int] = set()
    while rows_read < LAG_MAX_ROWS:
        lower = max(lowest, upper - span)
        params = {"since": since_xact_id, "wanted": open_at_once + 1, "lower": lower, "upper": upper}
        row = conn.execute(query, params).fetchone()
        assert row is not None
        found, read, seen = row
        lag += int(found)
        rows_read += int(read)
        older.update(seen or ())
        if lower == lowest:
            return lag, True
        if len(older) > open_at_once:
            # One more first range below: Sequent draws a transaction's first command id in the
            # INSERT that then gives it its xact id, a moment early. Only if more commands than
            # this were drawn while one such INSERT ran could one of its events lie lower still.
            return lag + behind_between(max(lowest, lower - first), lower), True
        upper, span = lower, span * 2
    if lag >= LAG_MAX_ROWS // 2:
        return lag, False
    return lag + behind_between(lowest, upper), True


class _Keep:
    """Marker: leave this column as it is."""


KEEP = _Keep()
