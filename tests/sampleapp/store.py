"""The command side: publishing a deposit, gated by the active-projectors rules."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sampleapp import projector_states
from sampleapp.gate import projectors_to_run
from sampleapp.releases import DEPOSITED, EventKey, Release

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
AGGREGATE_NAMESPACE = uuid.UUID("6f1c1b7e-5d2a-4c55-9d0e-3a4b6a1f2c01")
MAX_ATTEMPTS = 5
# Sequent's events_partition_key: the events table is partitioned by it. The sample app keeps
# every account in one partition (the default one).
PARTITION_KEY = ""


@dataclass(frozen=True)
class Schemas:
    event_store: str
    view: str


def aggregate_id(account_id: str) -> uuid.UUID:
    return uuid.uuid5(AGGREGATE_NAMESPACE, account_id)


def deposit(
    conn: psycopg.Connection, release: Release, schemas: Schemas, account_id: str, amount: int
) -> dict[str, Any]:
    """Write one Deposited event and project it, in one transaction; retried on write conflicts."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return _deposit_once(conn, release, schemas, account_id, amount)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _deposit_once(
    conn: psycopg.Connection, release: Release, schemas: Schemas, account_id: str, amount: int
) -> dict[str, Any]:
    es = sql.Identifier(schemas.event_store)
    agg = aggregate_id(account_id)
    with conn.transaction():
        # First statement of the transaction, plain SELECT: golive's exclusive lock on
        # projector_states waits for this transaction to end, so no event written under the
        # old states can slip past golive's final catch-up.
        states = projector_states.read_states(conn, schemas.event_store)
        run = projectors_to_run(release.versions, states)
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.aggregates (aggregate_id, aggregate_type, events_partition_key) "
                "VALUES (%s, 'Account', %s) ON CONFLICT (aggregate_id) DO NOTHING"
            ).format(es),
            [agg, PARTITION_KEY],
        )
        # Serialise writers per aggregate so sequence numbers are gapless and unique.
        conn.execute(sql.SQL("SELECT 1 FROM {}.aggregates WHERE aggregate_id = %s FOR UPDATE").format(es), [agg])
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {es}.events (partition_key, aggregate_id, sequence_number, event_type, event_json) "
                "SELECT %(key)s, %(agg)s, coalesce(max(sequence_number), 0) + 1, %(type)s, %(json)s "
                "FROM {es}.events WHERE partition_key = %(key)s AND aggregate_id = %(agg)s "
                "RETURNING sequence_number, xact_id, created_at"
            ).format(es=es),
            {
                "key": PARTITION_KEY,
                "agg": agg,
                "type": DEPOSITED,
                "json": Jsonb({"account_id": account_id, "amount": amount}),
            },
        ).fetchone()
        assert row is not None
        sequence_number, xact_id, created_at = row
        key = EventKey(PARTITION_KEY, agg, sequence_number)
        for name in run:
            release.projector(name).project_event(
                conn, target_schema=schemas.view, event_store_schema=schemas.event_store, key=key
            )
    return {
        "account_id": account_id,
        "aggregate_id": str(agg),
        "sequence_number": sequence_number,
        "xact_id": xact_id,
        "amount": amount,
        "created_at": created_at.isoformat(),
        "projected_by": run,
    }


def read_account(conn: psycopg.Connection, schemas: Schemas, account_id: str) -> dict[str, Any] | None:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {}.account_balances WHERE account_id = %s").format(sql.Identifier(schemas.view)),
            [account_id],
        )
        return cur.fetchone()
