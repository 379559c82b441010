"""Sequent 9's event-store tables, shaped like Sequent master's db/structure.sql (docs/sequent-protocol.md).

The operator never creates these tables (the application's migrations do); tests,
the sample application and the demo create them with ``create_sequent_tables``.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

REPLAY_STATES = (
    "created",
    "prepared",
    "replaying",
    "catching_up",
    "replayed",
    "optimized",
    "live",
    "failed",
    "aborted",
)

_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};

-- Partitioned like Sequent's: aggregates by aggregate_id, events by partition_key, each with a
-- default partition. Type names are text here (Sequent keeps them in *_types tables).
CREATE TABLE IF NOT EXISTS {schema}.aggregates (
    aggregate_id uuid NOT NULL,
    aggregate_type text NOT NULL,
    events_partition_key text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_id),
    UNIQUE (events_partition_key, aggregate_id)
) PARTITION BY RANGE (aggregate_id);
CREATE TABLE IF NOT EXISTS {schema}.aggregates_default PARTITION OF {schema}.aggregates DEFAULT;

-- Sequent's commands.id is an identity column (CACHE 1) and every event names its command in
-- command_id, indexed. The sample app stores no commands: an event draws its command id from the
-- same sequence, in the INSERT that stores it, as Sequent's store_events does.
CREATE SEQUENCE IF NOT EXISTS {schema}.commands_id_seq;

-- xact_id is nullable and has no index, as in Sequent: "events at or after an xact_id" is a
-- scan of the whole table.
CREATE TABLE IF NOT EXISTS {schema}.events (
    aggregate_id uuid NOT NULL,
    partition_key text NOT NULL DEFAULT '',
    sequence_number integer NOT NULL,
    event_type text NOT NULL,
    event_json jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    command_id bigint NOT NULL DEFAULT nextval({commands_seq}),
    xact_id bigint DEFAULT pg_current_xact_id()::text::bigint,
    PRIMARY KEY (partition_key, aggregate_id, sequence_number),
    FOREIGN KEY (partition_key, aggregate_id) REFERENCES {schema}.aggregates (events_partition_key, aggregate_id)
        ON UPDATE CASCADE ON DELETE RESTRICT
) PARTITION BY RANGE (partition_key);
CREATE TABLE IF NOT EXISTS {schema}.events_default PARTITION OF {schema}.events DEFAULT;
CREATE INDEX IF NOT EXISTS events_event_type_idx ON {schema}.events (event_type);
CREATE INDEX IF NOT EXISTS events_command_id_idx ON {schema}.events (command_id);

CREATE TABLE IF NOT EXISTS {schema}.projector_states (
    name text PRIMARY KEY,
    active_version integer,
    activating_version integer,
    replaying_version integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT replaying_conflicts_with_activating
        CHECK (replaying_version IS NULL OR activating_version IS NULL)
);

CREATE TABLE IF NOT EXISTS {schema}.replay_states (
    id bigserial PRIMARY KEY,
    state text NOT NULL CONSTRAINT valid_replay_state CHECK (state IN ({states})),
    projectors text[] NOT NULL,
    continue_replay_at_xact_id bigint,
    index_definitions jsonb,
    table_cluster_indexes jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS replay_states_active_replay_idx
    ON {schema}.replay_states ((true)) WHERE state NOT IN ('live', 'aborted');
"""


def create_sequent_tables(conn: psycopg.Connection, schema: str = "sequent_schema") -> None:
    """Create the event store, ``projector_states`` and ``replay_states`` in ``schema``."""
    statement = sql.SQL(_DDL).format(
        schema=sql.Identifier(schema),
        commands_seq=sql.Literal(sql.Identifier(schema, "commands_id_seq").as_string(conn)),
        states=sql.SQL(", ").join(sql.Literal(state) for state in REPLAY_STATES),
    )
    with conn.transaction():
        conn.execute(statement)


def projector_rows(url: str, schema: str = "sequent_schema") -> dict[str, tuple[int | None, int | None, int | None]]:
    """``projector_states`` as ``{name: (active, activating, replaying)}``, for assertions."""
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT name, active_version, activating_version, replaying_version FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier("projector_states")
        )
        return {name: (active, activating, replaying) for name, active, activating, replaying in conn.execute(query)}


def replay_rows(url: str) -> list[tuple[int, str, list[str]]]:
    """``replay_states`` in order as ``[(id, state, projectors)]``, for assertions."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, state, projectors FROM sequent_schema.replay_states ORDER BY id").fetchall()
    return [(int(id_), str(state), list(projectors)) for id_, state, projectors in rows]
