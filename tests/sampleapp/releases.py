"""The releases of the sample application: which projectors, at which versions, with which tables.

A projector turns ``Deposited`` events into its view tables. Every projector applies events
set-wise from the event store (``SELECT ... FROM events WHERE <filter>``), so live publishing
(filter: the one event just written), the initial replay, catch-ups and golive (filter: an
``xact_id`` window) share one code path and cannot drift apart.

| release | AccountProjector | AuditProjector |
|---------|------------------|----------------|
| v1      | 1                | 1              |
| v2      | 2 (new table shape: replay) | 1       |
| v3      | 2 (no change: activation only) | 1    |
| v4      | 2                | 1              | + DailyTotalsProjector 1 (new: replay)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

DEPOSITED = "Deposited"


class UnknownName(ValueError):
    """An unknown release or projector name."""


@dataclass(frozen=True)
class Table:
    name: str
    # Column definitions; the primary key belongs here (needed during replay for upserts).
    columns: str
    # Secondary indexes, name -> column list. Like Sequent, a replay builds the tables without
    # them and the optimize stage creates them.
    indexes: tuple[tuple[str, str], ...] = ()

    def create(self, conn: psycopg.Connection, schema: str, *, with_indexes: bool) -> None:
        """Create the table if missing. An existing table is left alone, even in another shape (an
        older version's): replacing it is the replay's job."""
        exists = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s)", [schema, self.name]
        ).fetchone()
        if exists and exists[0]:
            return
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} ({})").format(
                sql.Identifier(schema), sql.Identifier(self.name), sql.SQL(self.columns)
            )
        )
        if with_indexes:
            self.create_indexes(conn, schema)

    def create_indexes(self, conn: psycopg.Connection, schema: str) -> None:
        for index_name, columns in self.indexes:
            conn.execute(self.index_statement(schema, index_name, columns))

    def index_statement(self, schema: str, index_name: str, columns: str) -> sql.Composed:
        return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {}.{} ({})").format(
            sql.Identifier(index_name), sql.Identifier(schema), sql.Identifier(self.name), sql.SQL(columns)
        )


@dataclass(frozen=True)
class Projector:
    name: str
    version: int
    tables: tuple[Table, ...]
    # Statements applying the events selected by {filter} from {events}.events to the tables
    # in schema {target}; placeholders in the filter are bound from the params given to apply().
    apply_statements: tuple[str, ...]

    def create_tables(self, conn: psycopg.Connection, schema: str, *, with_indexes: bool) -> None:
        for table in self.tables:
            table.create(conn, schema, with_indexes=with_indexes)

    def apply(
        self,
        conn: psycopg.Connection,
        *,
        target_schema: str,
        event_store_schema: str,
        event_filter: sql.Composable,
        params: Mapping[str, Any],
    ) -> None:
        for statement in self.apply_statements:
            conn.execute(
                sql.SQL(statement).format(
                    target=sql.Identifier(target_schema),
                    events=sql.Identifier(event_store_schema),
                    filter=event_filter,
                ),
                params,
            )


# The deposits selected by the filter, one row per event.
_DEPOSITS = """
    SELECT e.aggregate_id,
           e.sequence_number,
           e.event_json ->> 'account_id' AS account_id,
           (e.event_json ->> 'amount')::bigint AS amount,
           e.created_at
      FROM {events}.events e
     WHERE e.event_type = 'Deposited' AND ({filter})
"""

ACCOUNT_PROJECTOR_V1 = Projector(
    name="AccountProjector",
    version=1,
    tables=(Table("account_balances", "account_id text PRIMARY KEY, balance bigint NOT NULL"),),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.account_balances AS t (account_id, balance)
        SELECT d.account_id, sum(d.amount) FROM ({_DEPOSITS}) d GROUP BY d.account_id
        ON CONFLICT (account_id) DO UPDATE SET balance = t.balance + excluded.balance
        """,
    ),
)

# Version 2 keeps the table name but changes its shape: existing rows cannot be migrated in
# place (deposit_count needs every event again), so this version must be replayed.
ACCOUNT_PROJECTOR_V2 = Projector(
    name="AccountProjector",
    version=2,
    tables=(
        Table(
            "account_balances",
            "account_id text PRIMARY KEY, balance bigint NOT NULL, deposit_count integer NOT NULL, "
            "last_sequence_number integer NOT NULL, last_deposit_at timestamptz NOT NULL",
            indexes=(("account_balances_balance_idx", "balance"),),
        ),
    ),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.account_balances AS t
               (account_id, balance, deposit_count, last_sequence_number, last_deposit_at)
        SELECT d.account_id, sum(d.amount), count(*), max(d.sequence_number), max(d.created_at)
          FROM ({_DEPOSITS}) d GROUP BY d.account_id
        ON CONFLICT (account_id) DO UPDATE SET
            balance = t.balance + excluded.balance,
            deposit_count = t.deposit_count + excluded.deposit_count,
            last_sequence_number = greatest(t.last_sequence_number, excluded.last_sequence_number),
            last_deposit_at = greatest(t.last_deposit_at, excluded.last_deposit_at)
        """,
    ),
)

# One row per event, primary key on the event's identity: applying an event twice fails loudly.
AUDIT_PROJECTOR_V1 = Projector(
    name="AuditProjector",
    version=1,
    tables=(
        Table(
            "account_audit_log",
            "aggregate_id uuid NOT NULL, sequence_number integer NOT NULL, account_id text NOT NULL, "
            "amount bigint NOT NULL, recorded_at timestamptz NOT NULL, "
            "PRIMARY KEY (aggregate_id, sequence_number)",
            indexes=(("account_audit_log_account_id_idx", "account_id"),),
        ),
    ),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.account_audit_log
               (aggregate_id, sequence_number, account_id, amount, recorded_at)
        SELECT d.aggregate_id, d.sequence_number, d.account_id, d.amount, d.created_at
          FROM ({_DEPOSITS}) d
        """,
    ),
)


# Only in v4: a new projector, so going to v4 replays a projector that has no view table yet,
# and once it is active, code without it (v1-v3) is refused with UnknownActiveProjectorError.
DAILY_TOTALS_PROJECTOR_V1 = Projector(
    name="DailyTotalsProjector",
    version=1,
    tables=(Table("daily_deposit_totals", "day date PRIMARY KEY, total bigint NOT NULL, deposits integer NOT NULL"),),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.daily_deposit_totals AS t (day, total, deposits)
        SELECT (d.created_at AT TIME ZONE 'UTC')::date, sum(d.amount), count(*)
          FROM ({_DEPOSITS}) d GROUP BY 1
        ON CONFLICT (day) DO UPDATE SET total = t.total + excluded.total, deposits = t.deposits + excluded.deposits
        """,
    ),
)


@dataclass(frozen=True)
class Release:
    name: str
    projectors: tuple[Projector, ...]

    def projector(self, name: str) -> Projector:
        for projector in self.projectors:
            if projector.name == name:
                return projector
        known = ", ".join(p.name for p in self.projectors)
        raise UnknownName(f"release {self.name} has no projector {name!r} (it has {known})")

    @property
    def versions(self) -> dict[str, int]:
        return {p.name: p.version for p in self.projectors}


RELEASES: dict[str, Release] = {
    "v1": Release("v1", (ACCOUNT_PROJECTOR_V1, AUDIT_PROJECTOR_V1)),
    "v2": Release("v2", (ACCOUNT_PROJECTOR_V2, AUDIT_PROJECTOR_V1)),
    "v3": Release("v3", (ACCOUNT_PROJECTOR_V2, AUDIT_PROJECTOR_V1)),
    "v4": Release("v4", (ACCOUNT_PROJECTOR_V2, AUDIT_PROJECTOR_V1, DAILY_TOTALS_PROJECTOR_V1)),
}


def get_release(name: str) -> Release:
    try:
        return RELEASES[name]
    except KeyError:
        raise UnknownName(f"unknown SAMPLEAPP_RELEASE {name!r}; known releases: {', '.join(RELEASES)}") from None
