"""The releases of the sample application: which projectors, at which versions, with which tables.

A projector turns ``Deposited`` events into its view tables. Every projector applies events
from the event store with the same statements (``SELECT ... FROM events WHERE <filter>``), so
every path shares them and cannot drift apart: live publishing, catch-ups and golive apply one
event at a time (``project_event``: the filter selects one event by its key, as Sequent's
default ``ActiveRecordPersistor`` writes each event by itself), the initial replay and the seed
apply many at once (the filter is an ``xact_id`` window or a group, as a bulk replay persistor
would).

| release | AccountProjector | AuditProjector | view-schema migrations |
|---------|------------------|----------------|------------------------|
| v1      | 1                | 1              | 1, 2                   |
| v2      | 2 (new columns: replay) | 1       | + 3 (columns for version 2) |
| v3      | 2 (no change: activation only) | 1 | same as v2           |
| v4      | 2                | 1              | + 4 (a table for the new DailyTotalsProjector 1: replay) |
| v2-currency | 2, reading ``ACCOUNT_CURRENCY`` | 1 | same as v2                  |

v2-currency is v2 whose AccountProjector reads a configuration variable when it projects: a pod
template without it fails the replay (Sequent marks it failed) and answers 500 to every write
that projector handles, as a Rails application missing an ``ENV.fetch`` variable does.

Each release's migrations run (``python -m sampleapp.rake db:migrate``) while the previous
release still serves, before ``prepare``: ``prepare`` copies the view tables' definitions
from the view schema, as Sequent does with ``pg_dump``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from sampleapp.config import ACCOUNT_CURRENCY, fetch_env

DEPOSITED = "Deposited"


class UnknownName(ValueError):
    """An unknown release or projector name."""


@dataclass(frozen=True)
class Migration:
    """One view-schema migration (an ActiveRecord migration in a Sequent application).

    Every migration is written so that the releases before it keep working on the migrated
    schema (added columns are nullable, new tables are unused by old code): it runs while the
    old release still serves, before ``prepare`` copies the tables' definitions. The statements
    are idempotent; ``{view}`` is the view schema."""

    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class EventKey:
    """An event's primary key in the event store."""

    partition_key: str
    aggregate_id: uuid.UUID
    sequence_number: int

    @property
    def params(self) -> dict[str, Any]:
        """The parameters ONE_EVENT binds."""
        return {"key": self.partition_key, "agg": self.aggregate_id, "seq": self.sequence_number}


# The filter selecting the one event of an EventKey (bound by Projector.project_event).
ONE_EVENT = sql.SQL("e.partition_key = %(key)s AND e.aggregate_id = %(agg)s AND e.sequence_number = %(seq)s")


@dataclass(frozen=True)
class Projector:
    name: str
    version: int
    # The view tables it writes (Sequent's ``manages_tables``): prepare copies their definitions
    # from the view schema, golive swaps them.
    managed_tables: tuple[str, ...]
    # Statements applying the events selected by {filter} from {events}.events to the tables
    # in schema {target}; placeholders in the filter are bound from the params given to apply().
    apply_statements: tuple[str, ...]
    # Environment variables its code reads each time it projects (Ruby's ENV.fetch): missing, they
    # fail the replay and every write it projects, not the process's start.
    reads_env: tuple[str, ...] = ()

    def project_event(
        self, conn: psycopg.Connection, *, target_schema: str, event_store_schema: str, key: EventKey
    ) -> None:
        """Apply one event, found by its key (the live path, catch-up and golive)."""
        self.apply(
            conn,
            target_schema=target_schema,
            event_store_schema=event_store_schema,
            event_filter=ONE_EVENT,
            params=key.params,
        )

    def apply(
        self,
        conn: psycopg.Connection,
        *,
        target_schema: str,
        event_store_schema: str,
        event_filter: sql.Composable,
        params: Mapping[str, Any],
    ) -> None:
        for name in self.reads_env:
            fetch_env(name, f"{self.name} v{self.version}")
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

# The view schema as it evolves. A release's schema is the migrations up to its own.
CREATE_ACCOUNT_BALANCES = Migration(
    1,
    "create account_balances",
    ("CREATE TABLE IF NOT EXISTS {view}.account_balances (account_id text PRIMARY KEY, balance bigint NOT NULL)",),
)
CREATE_ACCOUNT_AUDIT_LOG = Migration(
    2,
    "create account_audit_log",
    (
        "CREATE TABLE IF NOT EXISTS {view}.account_audit_log (aggregate_id uuid NOT NULL, "
        "sequence_number integer NOT NULL, account_id text NOT NULL, amount bigint NOT NULL, "
        "recorded_at timestamptz NOT NULL, PRIMARY KEY (aggregate_id, sequence_number))",
        "CREATE INDEX IF NOT EXISTS account_audit_log_account_id_idx ON {view}.account_audit_log (account_id)",
    ),
)
# For AccountProjector 2. Nullable, so version 1 keeps inserting (account_id, balance); the
# replay of version 2 fills them. The index is dropped in the replay tables and rebuilt by optimize.
ADD_ACCOUNT_BALANCES_COUNTS = Migration(
    3,
    "add deposit counts to account_balances",
    (
        "ALTER TABLE {view}.account_balances ADD COLUMN IF NOT EXISTS deposit_count integer, "
        "ADD COLUMN IF NOT EXISTS last_sequence_number integer, "
        "ADD COLUMN IF NOT EXISTS last_deposit_at timestamptz",
        "CREATE INDEX IF NOT EXISTS account_balances_balance_idx ON {view}.account_balances (balance)",
    ),
)
CREATE_DAILY_DEPOSIT_TOTALS = Migration(
    4,
    "create daily_deposit_totals",
    (
        "CREATE TABLE IF NOT EXISTS {view}.daily_deposit_totals "
        "(day date PRIMARY KEY, total bigint NOT NULL, deposits integer NOT NULL)",
    ),
)

ACCOUNT_PROJECTOR_V1 = Projector(
    name="AccountProjector",
    version=1,
    managed_tables=("account_balances",),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.account_balances AS t (account_id, balance)
        SELECT d.account_id, sum(d.amount) FROM ({_DEPOSITS}) d GROUP BY d.account_id ORDER BY d.account_id
        ON CONFLICT (account_id) DO UPDATE SET balance = t.balance + excluded.balance
        """,
    ),
)

# Version 2 fills the columns migration 3 added: existing rows cannot be completed in place
# (deposit_count needs every event again), so this version must be replayed.
ACCOUNT_PROJECTOR_V2 = Projector(
    name="AccountProjector",
    version=2,
    managed_tables=("account_balances",),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.account_balances AS t
               (account_id, balance, deposit_count, last_sequence_number, last_deposit_at)
        SELECT d.account_id, sum(d.amount), count(*), max(d.sequence_number), max(d.created_at)
          FROM ({_DEPOSITS}) d GROUP BY d.account_id ORDER BY d.account_id
        ON CONFLICT (account_id) DO UPDATE SET
            balance = t.balance + excluded.balance,
            deposit_count = coalesce(t.deposit_count, 0) + excluded.deposit_count,
            last_sequence_number = greatest(t.last_sequence_number, excluded.last_sequence_number),
            last_deposit_at = greatest(t.last_deposit_at, excluded.last_deposit_at)
        """,
    ),
)

# The same projector, whose code also reads the currency from the environment.
ACCOUNT_PROJECTOR_V2_CURRENCY = dataclasses.replace(ACCOUNT_PROJECTOR_V2, reads_env=(ACCOUNT_CURRENCY,))

# One row per event, primary key on the event's identity: applying an event twice fails loudly.
AUDIT_PROJECTOR_V1 = Projector(
    name="AuditProjector",
    version=1,
    managed_tables=("account_audit_log",),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.account_audit_log
               (aggregate_id, sequence_number, account_id, amount, recorded_at)
        SELECT d.aggregate_id, d.sequence_number, d.account_id, d.amount, d.created_at
          FROM ({_DEPOSITS}) d
        """,
    ),
)


# Only in v4: a new projector, so going to v4 replays a projector whose table only migration 4
# created, and once it is active, code without it (v1-v3) is refused with UnknownActiveProjectorError.
DAILY_TOTALS_PROJECTOR_V1 = Projector(
    name="DailyTotalsProjector",
    version=1,
    managed_tables=("daily_deposit_totals",),
    apply_statements=(
        f"""
        INSERT INTO {{target}}.daily_deposit_totals AS t (day, total, deposits)
        SELECT (d.created_at AT TIME ZONE 'UTC')::date, sum(d.amount), count(*)
          FROM ({_DEPOSITS}) d GROUP BY 1 ORDER BY 1
        ON CONFLICT (day) DO UPDATE SET total = t.total + excluded.total, deposits = t.deposits + excluded.deposits
        """,
    ),
)


@dataclass(frozen=True)
class Release:
    name: str
    projectors: tuple[Projector, ...]
    # The view-schema migrations this release's code expects, oldest first.
    migrations: tuple[Migration, ...]

    def projector(self, name: str) -> Projector:
        for projector in self.projectors:
            if projector.name == name:
                return projector
        known = ", ".join(p.name for p in self.projectors)
        raise UnknownName(f"release {self.name} has no projector {name!r} (it has {known})")

    @property
    def versions(self) -> dict[str, int]:
        return {p.name: p.version for p in self.projectors}

    @property
    def reads_env(self) -> tuple[str, ...]:
        """The environment variables its projectors read: a pod template must set them."""
        return tuple(sorted({name for p in self.projectors for name in p.reads_env}))

    @property
    def schema_version(self) -> int:
        """Sequent's ``migrations_class.version``: the view schema this code expects."""
        return self.migrations[-1].version


_V1_SCHEMA = (CREATE_ACCOUNT_BALANCES, CREATE_ACCOUNT_AUDIT_LOG)
_V2_SCHEMA = (*_V1_SCHEMA, ADD_ACCOUNT_BALANCES_COUNTS)
RELEASES: dict[str, Release] = {
    "v1": Release("v1", (ACCOUNT_PROJECTOR_V1, AUDIT_PROJECTOR_V1), _V1_SCHEMA),
    "v2": Release("v2", (ACCOUNT_PROJECTOR_V2, AUDIT_PROJECTOR_V1), _V2_SCHEMA),
    "v3": Release("v3", (ACCOUNT_PROJECTOR_V2, AUDIT_PROJECTOR_V1), _V2_SCHEMA),
    "v4": Release(
        "v4",
        (ACCOUNT_PROJECTOR_V2, AUDIT_PROJECTOR_V1, DAILY_TOTALS_PROJECTOR_V1),
        (*_V2_SCHEMA, CREATE_DAILY_DEPOSIT_TOTALS),
    ),
    "v2-currency": Release("v2-currency", (ACCOUNT_PROJECTOR_V2_CURRENCY, AUDIT_PROJECTOR_V1), _V2_SCHEMA),
}


def get_release(name: str) -> Release:
    try:
        return RELEASES[name]
    except KeyError:
        raise UnknownName(f"unknown SAMPLEAPP_RELEASE {name!r}; known releases: {', '.join(RELEASES)}") from None
