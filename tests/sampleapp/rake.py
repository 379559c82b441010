"""``python -m sampleapp.rake TASK[ARGS] [TASK[ARGS] ...]``: Sequent's rake tasks for the sample app.

The task names and arguments are those of ``lib/sequent/rake/migration_tasks.rb`` (and Rails'
``db:migrate``), written the way rake takes them, so a ProjectorSet's stage commands look like
a Sequent application's (``bundle exec rake sequent:projectors:replay:replay[250000,4]``):

| task | what it does |
|---|---|
| ``db:migrate`` | the release's view-schema migrations (idempotent; ``sampleapp.migrate``) |
| ``sequent:db:migrate`` | ``sequent:db:create``, the same migrations, then ``pg_dump`` into ``db/structure.sql`` |
| ``sequent:migrate:offline`` | activate the current configuration (``Sequent.activate_current_configuration!``) |
| ``sequent:projectors:replay:prepare[P1,P2,...]`` | a new replay of the named projectors (none named: all) |
| ``sequent:projectors:replay:replay[group_size,processes]`` | initial replay (defaults 250000, 4) |
| ``sequent:projectors:replay:catchup[group_size,processes]`` | replay the events since the last replay |
| ``sequent:projectors:replay:optimize`` | VACUUM/CLUSTER, recreate indexes, ANALYZE |
| ``sequent:projectors:replay:golive`` | swap the replayed tables in, activate |
| ``sequent:projectors:replay:abort`` | abort the replay in progress (arguments are ignored, as rake does) |
| ``sequent:projectors:replay:status`` | the latest replay as JSON |
| ``sequent:projectors:deactivate[P1,...]`` | clear the active version of the named projectors |
| ``sequent:projectors:deactivate_unknown_projectors`` | clear the active version of projectors the code lacks |

Like Sequent's ``sequent:connect``, every task needs an environment: ``SEQUENT_ENV``, else
``RAILS_ENV``, else ``RACK_ENV``; with none set it fails with ``SEQUENT_ENV not set``. Exit
status 0 on success, 1 when a task fails (message on stderr, ``rake aborted!`` as rake says it),
2 on bad usage (an argument that is not a positive integer).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from sampleapp import migrate, projector_states
from sampleapp.config import ConfigurationError, Settings
from sampleapp.releases import Release, UnknownName, get_release
from sampleapp.replay import DEFAULT_GROUP_SIZE, DEFAULT_PROCESSES, Replayer, ReplayError

REPLAY = "sequent:projectors:replay:"
TASK = re.compile(r"^(?P<name>[a-z_:]+)(?:\[(?P<args>[^\]]*)\])?$")


class UsageError(Exception):
    pass


@dataclass(frozen=True)
class Context:
    conn: psycopg.Connection
    settings: Settings
    release: Release

    def replayer(self) -> Replayer:
        return Replayer(self.conn, self.settings, self.release, out=_say)


def _say(line: str) -> None:
    print(line, flush=True)


def _count(args: list[str], index: int, default: int) -> int:
    if index >= len(args) or args[index] == "":
        return default
    try:
        value = int(args[index])
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{args[index]!r} is not a positive integer")
    return value


def _show(replayer: Replayer) -> None:
    """Sequent's ``show_replay_state``."""
    row = replayer.latest()
    if row is None:
        _say("replay state is not present, use sequent:projectors:replay:prepare to start replaying")
        return
    _say(
        f"replay state: {row['state']} at {row['updated_at']}, continue at xact_id: "
        f"{row['continue_replay_at_xact_id'] or 0}, projectors: {', '.join(row['projectors'])}"
    )


def _prepare(ctx: Context, args: list[str]) -> None:
    replayer = ctx.replayer()
    replayer.prepare([name for name in args if name])
    _show(replayer)


def _replay(ctx: Context, args: list[str]) -> None:
    replayer = ctx.replayer()
    replayer.replay(_count(args, 0, DEFAULT_GROUP_SIZE), _count(args, 1, DEFAULT_PROCESSES))
    _show(replayer)


def _catchup(ctx: Context, args: list[str]) -> None:
    replayer = ctx.replayer()
    replayer.catchup(_count(args, 0, DEFAULT_GROUP_SIZE), _count(args, 1, DEFAULT_PROCESSES))
    _show(replayer)


def _optimize(ctx: Context, args: list[str]) -> None:
    _say("preparing replayed tables for activation")
    replayer = ctx.replayer()
    replayer.optimize()
    _show(replayer)


def _golive(ctx: Context, args: list[str]) -> None:
    _say("activating replayed projectors")
    replayer = ctx.replayer()
    replayer.golive()
    _show(replayer)
    _say("replayed projectors are now live (previous data saved in the archive schema)")


def _abort(ctx: Context, args: list[str]) -> None:
    replayer = ctx.replayer()
    replayer.abort()
    _show(replayer)


def _status(ctx: Context, args: list[str]) -> None:
    print(ctx.replayer().status_json(), flush=True)


def _db_migrate(ctx: Context, args: list[str]) -> None:
    for line in migrate.migrate_view_schema(ctx.conn, ctx.settings, ctx.release):
        _say(line)


def _sequent_db_create(settings: Settings) -> None:
    created, message = migrate.create_database(settings)
    print(message, file=sys.stdout if created else sys.stderr, flush=True)


def _sequent_db_migrate(ctx: Context, args: list[str]) -> None:
    """Sequent's ``sequent:db:migrate``, after its prerequisite ``sequent:db:create`` (run in
    ``main`` before connecting): the migrations, then ``sequent:db:schema:dump`` into the
    release directory (the working directory)."""
    _db_migrate(ctx, args)
    _say(migrate.dump_structure(ctx.settings, Path.cwd()))


def _migrate_offline(ctx: Context, args: list[str]) -> None:
    _say(migrate.activate_current_configuration(ctx.conn, ctx.settings, ctx.release))


def _deactivate(ctx: Context, args: list[str]) -> None:
    projector_states.deactivate(ctx.conn, ctx.settings.event_store_schema, [name for name in args if name])


def _deactivate_unknown(ctx: Context, args: list[str]) -> None:
    # Sequent's deactivate_unknown_projectors! is a plain update, without the exclusive lock.
    with ctx.conn.transaction():
        ctx.conn.execute(
            sql.SQL(
                "UPDATE {}.projector_states SET active_version = NULL, updated_at = now() WHERE NOT (name = ANY(%s))"
            ).format(sql.Identifier(ctx.settings.event_store_schema)),
            [list(ctx.release.versions)],
        )


TASKS: Mapping[str, Callable[[Context, list[str]], None]] = {
    "db:migrate": _db_migrate,
    # Sequent's own task runs the same ActiveRecord migrations (db/migrate), where Sequent's
    # documentation puts the view-schema migrations, between creating the database and dumping it.
    "sequent:db:migrate": _sequent_db_migrate,
    "sequent:migrate:offline": _migrate_offline,
    REPLAY + "prepare": _prepare,
    REPLAY + "replay": _replay,
    REPLAY + "catchup": _catchup,
    REPLAY + "optimize": _optimize,
    REPLAY + "golive": _golive,
    REPLAY + "abort": _abort,
    REPLAY + "status": _status,
    "sequent:projectors:deactivate": _deactivate,
    "sequent:projectors:deactivate_unknown_projectors": _deactivate_unknown,
}


def parse(task: str) -> tuple[str, list[str]]:
    match = TASK.match(task)
    if match is None or match["name"] not in TASKS:
        raise UnknownName(f"Don't know how to build task '{task}'")
    return match["name"], match["args"].split(",") if match["args"] else []


def sequent_env(environ: Mapping[str, str]) -> str:
    """Sequent's ``set_env_var`` and ``ensure_sequent_env_set!``."""
    env = environ.get("SEQUENT_ENV") or environ.get("RAILS_ENV") or environ.get("RACK_ENV")
    if not env:
        raise ConfigurationError("SEQUENT_ENV not set")
    return env


def from_short_form(argv: list[str] | None) -> list[str]:
    """``<stage> [arg ...]`` (the form ``python -m sampleapp.replay`` takes) as a rake task."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        return []
    stage, rest = args[0], args[1:]
    return [f"{REPLAY}{stage}[{','.join(rest)}]" if rest else REPLAY + stage]


def main(argv: list[str] | None = None) -> int:
    tasks = list(sys.argv[1:] if argv is None else argv)
    if not tasks or tasks[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if tasks else 2
    label = " ".join(tasks)
    try:
        parsed = [parse(task) for task in tasks]
        sequent_env(os.environ)
        settings = Settings.from_env()
        release = get_release(settings.release)
        if any(name == "sequent:db:migrate" for name, _ in parsed):
            _sequent_db_create(settings)  # a prerequisite that runs before sequent:connect
        with psycopg.connect(
            settings.database_url,
            autocommit=True,
            connect_timeout=10,
            application_name=f"sampleapp-rake {label}"[:63],
        ) as conn:
            for name, args in parsed:
                TASKS[name](Context(conn, settings, release), args)
    except UsageError as error:
        print(f"rake {label}: {error}", file=sys.stderr, flush=True)
        return 2
    except (
        ConfigurationError,
        UnknownName,
        ReplayError,
        migrate.MigrationError,
        TimeoutError,
        psycopg.Error,
    ) as error:
        message = str(error).strip() or type(error).__name__
        print(f"rake aborted!\n{label} failed: {message}", file=sys.stderr, flush=True)
        # As rake shows an exception raised while another was being handled.
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        while cause is not None:
            print(f"\nCaused by:\n{str(cause).strip() or type(cause).__name__}", file=sys.stderr, flush=True)
            cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
