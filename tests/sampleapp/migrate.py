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

- ``create_database`` and ``dump_structure`` are what Sequent's ``sequent:db:migrate`` does
  around the migrations: ``sequent:db:create`` (ActiveRecord's ``DatabaseTasks.create``) before,
  ``sequent:db:schema:dump`` (``pg_dump`` into ``db/structure.sql``) after.

``python -m sampleapp.migrate [--activate]`` runs the first, then with ``--activate`` the second;
``python -m sampleapp.rake db:migrate`` and ``sequent:migrate:offline`` are the same steps under
their rake names.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sampleapp import projector_states
from sampleapp.config import ConfigurationError, Settings
from sampleapp.releases import Release, UnknownName, get_release
from sampleapp.replay import pg_environment
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


def create_database(settings: Settings) -> tuple[bool, str]:
    """ActiveRecord's ``DatabaseTasks.create``, as ``sequent:db:create`` runs it: connect to the
    maintenance database ``postgres`` with the application's credentials and CREATE DATABASE.
    One that exists is said (on stderr) and passed over; any other failure (a role that may not
    create databases, no access to ``postgres``) fails the task. Returns (created, message)."""
    name = conninfo_to_dict(settings.database_url).get("dbname")
    if not name:
        raise MigrationError("DATABASE_URL names no database")
    try:
        with psycopg.connect(make_conninfo(settings.database_url, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'utf8'").format(sql.Identifier(str(name))))
    except psycopg.errors.DuplicateDatabase:
        return False, f"Database '{name}' already exists"
    except psycopg.Error as error:
        raise MigrationError(
            f"{str(error).strip()}\nCouldn't create '{name}' database. Please check your configuration."
        ) from None
    return True, f"Created database '{name}'"


def dump_structure(settings: Settings, release_directory: Path) -> str:
    """``sequent:db:schema:dump``: ``pg_dump --schema-only`` of the whole database, without the
    replay and archive schemas (and the view schema: the sample's code has a migrations class,
    as Sequent then leaves it out), into ``db/structure.sql`` under the release directory
    (ActiveRecord's ``db_dir``, ``db`` in Sequent's template project), made if missing. Needs
    ``pg_dump`` on PATH, one that can dump the server's version, and a writable directory."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise MigrationError("failed to execute: pg_dump (not found on PATH); dumping the schema needs it")
    directory = release_directory / "db"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MigrationError(f"cannot write the schema dump: {error}") from None
    target = directory / "structure.sql"
    excluded = [f"--exclude-schema={schema}" for schema in (settings.replay_schema, settings.archive_schema)]
    excluded.append(f"--exclude-schema={settings.view_schema}")
    dump = subprocess.run(
        [pg_dump, "--schema-only", "--no-privileges", "--no-owner", "--file", str(target), *excluded],
        env=pg_environment(settings.database_url),
        capture_output=True,
        text=True,
    )
    if dump.returncode != 0:
        raise MigrationError(f"failed to execute: pg_dump: {dump.stderr.strip()}")
    return f"dumped the schema into {target}"


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
