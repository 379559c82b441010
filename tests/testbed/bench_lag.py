"""``make bench-lag``: what one read of the replay lag costs on a large event store.

Seeds ``--events`` events (default 10 million) into Sequent's events table (``xact_id`` nullable
and not indexed, ``command_id`` indexed, as in Sequent master), one transaction id per
``--per-xact`` events and one command id per event, rising together, then times
``--reads`` calls of the operator's ``read_state`` (projector_states, the replay, and the lag)
while a replay is ``optimized`` with a given number of events still to catch up. For comparison it
times a few ``count(*) ... WHERE xact_id >= ...``: the full scan the lag used to be.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psycopg

from projectorset.adapters.database import SequentDatabase
from testbed import stopping
from testbed.postgres import PostgresServer
from testbed.sequent_schema import create_sequent_tables

FIRST_XACT_ID = 1_000


def seed(url: str, events: int, per_xact: int, aggregates: int = 10_000) -> None:
    """Bulk-load ``events`` events set-wise: aggregates first, then the events in batches of a
    million (each batch one INSERT ... SELECT generate_series), xact_id and command_id rising with
    the position."""
    with psycopg.connect(url, autocommit=True) as conn:
        create_sequent_tables(conn)
        # As in Sequent master: no index on xact_id (an older test schema had one).
        conn.execute("DROP INDEX IF EXISTS sequent_schema.events_xact_id_idx")
        # Foreign keys are checked per row; a bulk load of consistent data skips them.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO sequent_schema.aggregates (aggregate_id, aggregate_type) "
            "SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(a), 12, '0'))::uuid, 'Account' "
            "FROM generate_series(0, %s - 1) a",
            (aggregates,),
        )
        batch = 1_000_000
        for start in range(0, events, batch):
            stop = min(events, start + batch)
            conn.execute(
                "INSERT INTO sequent_schema.events "
                "(aggregate_id, sequence_number, event_type, event_json, command_id, xact_id) "
                "SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g %% %(aggs)s), 12, '0'))::uuid, "
                "       g / %(aggs)s + 1, 'Deposited', "
                "       jsonb_build_object('account_id', 'seed-' || (g %% %(aggs)s), 'amount', 1 + g %% 100), "
                "       g + 1, %(first)s + g / %(per)s "
                "FROM generate_series(%(start)s, %(stop)s - 1) g",
                {"aggs": aggregates, "first": FIRST_XACT_ID, "per": per_xact, "start": start, "stop": stop},
            )
            print(f"[bench-lag] seeded {stop:,} events", flush=True)
        conn.execute("SELECT setval('sequent_schema.commands_id_seq', %s)", (events,))
        conn.execute("VACUUM ANALYZE sequent_schema.events")


def set_replay(url: str, continue_at: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM sequent_schema.replay_states")
        conn.execute(
            "INSERT INTO sequent_schema.replay_states (state, projectors, continue_replay_at_xact_id) "
            "VALUES ('optimized', ARRAY['AccountProjector'], %s)",
            (continue_at,),
        )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.bench_lag", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--per-xact", type=int, default=2, help="events a transaction")
    parser.add_argument("--reads", type=int, default=100)
    parser.add_argument("--behind", default="0,1000,100000", help="events left to catch up (comma-separated)")
    arguments = parser.parse_args(argv)
    behinds = [int(part) for part in arguments.behind.split(",") if part.strip()]

    with PostgresServer.start() as server:
        url = server.create_database("bench_lag")
        started = time.monotonic()
        seed(url, arguments.events, arguments.per_xact)
        print(f"[bench-lag] seeding took {time.monotonic() - started:.0f} s", flush=True)
        with psycopg.connect(url) as conn:
            size = conn.execute(
                "SELECT pg_size_pretty(coalesce((SELECT sum(pg_relation_size(relid)) "
                "FROM pg_partition_tree('sequent_schema.events')), pg_relation_size('sequent_schema.events')))"
            ).fetchone()
            print(f"[bench-lag] events table: {size[0] if size else '?'}", flush=True)
        last_xact = FIRST_XACT_ID + (arguments.events - 1) // arguments.per_xact
        database = SequentDatabase(url)
        failures = 0
        try:
            for behind in behinds:
                continue_at = last_xact + 1 - behind // arguments.per_xact
                set_replay(url, continue_at)
                timings, lag_timings = [], []
                lag, at_least = None, False
                for _ in range(arguments.reads):
                    started = time.perf_counter()
                    state = database.read_state()
                    lag, at_least = state.replay_lag, state.replay_lag_at_least
                    timings.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    database.replay_lag(continue_at)
                    lag_timings.append((time.perf_counter() - started) * 1000)
                with psycopg.connect(url) as conn:
                    scans = []
                    for _ in range(2):
                        started = time.perf_counter()
                        exact = conn.execute(
                            "SELECT count(*) FROM sequent_schema.events WHERE xact_id >= %s", (continue_at,)
                        ).fetchone()
                        scans.append((time.perf_counter() - started) * 1000)
                exact_count = int(exact[0]) if exact else -1
                print(
                    f"events={arguments.events:,} behind={exact_count:,}: "
                    f"lag read {'at least ' if at_least else ''}{lag or 0:,} "
                    f"p50 {percentile(lag_timings, 0.5):.1f} ms, p95 {percentile(lag_timings, 0.95):.1f} ms; "
                    f"whole read_state p50 {percentile(timings, 0.5):.1f} ms, p95 {percentile(timings, 0.95):.1f} ms "
                    f"({arguments.reads} reads each); full count(*) scan {statistics.median(scans):.0f} ms; "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if lag is None or (lag < exact_count if at_least else lag != exact_count):
                    failures += 1
        finally:
            database.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(stopping.run(main))
