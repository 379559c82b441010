"""``python -m sampleapp.seed --events N [--accounts M]``: bulk-load deposits for benchmarks.

Writes N Deposited events in one transaction, the way the web service would have (same gate,
same per-aggregate sequence numbers, same projections), but set-wise in SQL, so 100k or 1M
events take seconds instead of a long load run.
"""

from __future__ import annotations

import argparse
import sys
import time

import psycopg
from psycopg import sql

from sampleapp import projector_states
from sampleapp.config import ConfigurationError, Settings
from sampleapp.gate import PublishRefused, projectors_to_run
from sampleapp.releases import DEPOSITED, Release, UnknownName, get_release
from sampleapp.store import aggregate_id


def seed(conn: psycopg.Connection, settings: Settings, release: Release, events: int, accounts: int) -> list[str]:
    """Returns the projectors that processed the events; raises PublishRefused like a deposit."""
    es = sql.Identifier(settings.event_store_schema)
    params = {"events": events, "accounts": accounts, "type": DEPOSITED}
    with conn.transaction():
        run = projectors_to_run(release.versions, projector_states.read_states(conn, settings.event_store_schema))
        # Account ids seed-0 .. seed-(M-1), aggregate ids derived as the web service does (uuid5,
        # which PostgreSQL lacks without an extension, hence computed here and copied in).
        conn.execute(
            "CREATE TEMPORARY TABLE seed_accounts (n integer, account_id text, aggregate_id uuid) ON COMMIT DROP"
        )
        with conn.cursor() as cur, cur.copy("COPY seed_accounts (n, account_id, aggregate_id) FROM STDIN") as copy:
            for n in range(accounts):
                copy.write_row((n, f"seed-{n}", aggregate_id(f"seed-{n}")))
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.aggregates (aggregate_id, aggregate_type) "
                "SELECT aggregate_id, 'Account' FROM seed_accounts ORDER BY aggregate_id "
                "ON CONFLICT (aggregate_id) DO NOTHING"
            ).format(es)
        )
        conn.execute(
            sql.SQL(
                "SELECT 1 FROM {es}.aggregates a JOIN seed_accounts s USING (aggregate_id) "
                "ORDER BY a.aggregate_id FOR UPDATE OF a"
            ).format(es=es)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {es}.events (aggregate_id, sequence_number, event_type, event_json) "
                "SELECT s.aggregate_id, coalesce(m.max_seq, 0) + g / %(accounts)s + 1, %(type)s, "
                "       jsonb_build_object('account_id', s.account_id, 'amount', 1 + g %% 100) "
                "  FROM generate_series(0, %(events)s - 1) g "
                "  JOIN seed_accounts s ON s.n = g %% %(accounts)s "
                "  LEFT JOIN (SELECT aggregate_id, max(sequence_number) AS max_seq FROM {es}.events "
                "             GROUP BY aggregate_id) m ON m.aggregate_id = s.aggregate_id"
            ).format(es=es),
            params,
        )
        this_transaction = sql.SQL("e.xact_id = pg_current_xact_id()::text::bigint")
        for name in run:
            release.projector(name).apply(
                conn,
                target_schema=settings.view_schema,
                event_store_schema=settings.event_store_schema,
                event_filter=this_transaction,
                params={},
            )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sampleapp.seed", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--accounts", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.events < 1 or args.accounts < 1:
        parser.error("--events and --accounts must be positive")
    try:
        settings = Settings.from_env()
        release = get_release(settings.release)
        started = time.monotonic()
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
            run = seed(conn, settings, release, args.events, args.accounts)
        print(
            f"seeded {args.events} events over {args.accounts} accounts in {time.monotonic() - started:.1f} s; "
            f"projected by {', '.join(run) or 'none'}"
        )
    except PublishRefused as refused:
        print(f"seed refused: {refused.error}: {refused.message}", file=sys.stderr)
        return 1
    except (ConfigurationError, UnknownName, psycopg.Error) as error:
        print(f"seed failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
