"""``python -m sampleapp.migrate [--activate]``: the release's offline migration.

Creates Sequent's event-store tables (in EVENT_STORE_SCHEMA) and the release's view tables
(in VIEW_SCHEMA) when missing. With ``--activate`` it then registers every projector of the
release active, as ``sequent:migrate:offline`` ends; it refuses when a projector is active
at another version, because that needs a replay, not an activation.
"""

from __future__ import annotations

import argparse
import sys

import psycopg
from psycopg import sql

from sampleapp import projector_states
from sampleapp.config import ConfigurationError, Settings
from sampleapp.releases import Release, UnknownName, get_release
from testbed.sequent_schema import create_sequent_tables


class MigrationError(Exception):
    pass


def migrate(conn: psycopg.Connection, settings: Settings, release: Release, *, activate: bool) -> list[str]:
    """``conn`` must be in autocommit mode. Returns what was done, for the log."""
    done: list[str] = []
    create_sequent_tables(conn, settings.event_store_schema)
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.view_schema)))
        for projector in release.projectors:
            projector.create_tables(conn, settings.view_schema, with_indexes=True)
    done.append(f"tables of release {release.name} present in {settings.view_schema}")
    if activate:

        def change(conn: psycopg.Connection, schema: str) -> None:
            current = {s.name: s for s in projector_states.read_states(conn, schema)}
            for projector in release.projectors:
                state = current.get(projector.name)
                if state and state.active_version not in (None, projector.version):
                    raise MigrationError(
                        f"{projector.name} is active at version {state.active_version}; release "
                        f"{release.name} has version {projector.version}: replay it instead of activating"
                    )
            projector_states.set_active(conn, schema, release.versions.items())

        projector_states.write(conn, settings.event_store_schema, change)
        versions = ", ".join(f"{name}={v}" for name, v in release.versions.items())
        done.append(f"registered active: {versions}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sampleapp.migrate", description=__doc__)
    parser.add_argument("--activate", action="store_true", help="register the release's projectors active")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        release = get_release(settings.release)
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
            for line in migrate(conn, settings, release, activate=args.activate):
                print(line)
    except (ConfigurationError, UnknownName, MigrationError, TimeoutError, psycopg.Error) as error:
        print(f"migrate failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
