"""The release's database migrations and Sequent's activate-the-current-configuration.

- ``migrate_view_schema`` is ``rake db:migrate`` of a Sequent application: it creates Sequent's
  event-store tables when missing, then runs the release's view-schema migrations that have not
  run yet (recorded in ``schema_migrations``, as ActiveRecord does; serialised by an advisory
  lock, so two pods starting at once do not race). Idempotent; every migration is compatible
  with the previous release's code, so it runs while that release serves, before ``prepare``.
- ``activate_current_configuration`` is ``Sequent.activate_current_configuration!`` (the end of
  ``rake sequent:migrate:offline``): after checking that the view schema is at the version this
  code expects, it registers every projector of the code active at the code's version (clearing
  its activating/replaying versions). Projectors the code no longer has are left as they are.

``python -m sampleapp.migrate [--activate]`` runs the first, then with ``--activate`` the second;
``python -m sampleapp.rake db:migrate`` and ``sequent:migrate:offline`` are the same steps under
their rake names.
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


def _migrations_table(settings: Settings) -> sql.Composed:
    return sql.SQL("{}.schema_migrations").format(sql.Identifier(settings.event_store_schema))


def current_schema_version(conn: psycopg.Connection, settings: Settings) -> int | None:
    """The highest view-schema migration that has run (Sequent's ``Versions.current_version``)."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [f'"{settings.event_store_schema}".schema_migrations']
    ).fetchone()
    if not (row and row[0]):
        return None
    version = conn.execute(sql.SQL("SELECT max(version) FROM {}").format(_migrations_table(settings))).fetchone()
    return None if version is None else version[0]


def migrate_view_schema(conn: psycopg.Connection, settings: Settings, release: Release) -> list[str]:
    """``conn`` must be in autocommit mode. Returns what was done, for the log."""
    create_sequent_tables(conn, settings.event_store_schema)
    view = sql.Identifier(settings.view_schema)
    done: list[str] = []
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"sampleapp db:migrate {settings.event_store_schema}"]
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(_migrations_table(settings))
        )
        applied = {
            row[0] for row in conn.execute(sql.SQL("SELECT version FROM {}").format(_migrations_table(settings)))
        }
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(view))
        for migration in release.migrations:
            if migration.version in applied:
                continue
            for statement in migration.statements:
                conn.execute(sql.SQL(statement).format(view=view))
            conn.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(_migrations_table(settings)),
                [migration.version, migration.name],
            )
            done.append(f"migrated {migration.version} {migration.name}")
    if not done:
        done.append(f"view schema {settings.view_schema} is up to date for release {release.name}")
    return done


def activate_current_configuration(conn: psycopg.Connection, settings: Settings, release: Release) -> str:
    current = current_schema_version(conn, settings)
    if current != release.schema_version:
        raise MigrationError(
            f"new version [{release.schema_version}] must be the same as current view schema version [{current}]"
        )
    projector_states.register_active(conn, settings.event_store_schema, release.versions)
    return "registered active: " + ", ".join(f"{name}={v}" for name, v in release.versions.items())


def migrate(conn: psycopg.Connection, settings: Settings, release: Release, *, activate: bool) -> list[str]:
    """``conn`` must be in autocommit mode. Returns what was done, for the log."""
    done = migrate_view_schema(conn, settings, release)
    if activate:
        done.append(activate_current_configuration(conn, settings, release))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sampleapp.migrate",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--activate", action="store_true", help="then activate the current configuration")
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
