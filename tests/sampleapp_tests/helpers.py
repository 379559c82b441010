"""Helpers for the sample application's tests: in-process web servers and the stage CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from sampleapp import manifests
from sampleapp.config import Settings
from sampleapp.migrate import migrate
from sampleapp.releases import get_release
from sampleapp.web import make_pool, make_server

TESTS_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Response:
    status: int
    body: Any


@dataclass
class AppClient:
    base_url: str
    release: str

    def request(self, method: str, path: str, body: object = None) -> Response:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Response(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return Response(error.code, json.loads(error.read()))

    def deposit(self, account_id: str, amount: int) -> Response:
        return self.request("POST", f"/accounts/{account_id}/deposits", {"amount": amount})

    def account(self, account_id: str) -> Response:
        return self.request("GET", f"/accounts/{account_id}")


def settings_for(database_url: str, release: str) -> Settings:
    return Settings(database_url=database_url, release=release, listen_host="127.0.0.1", listen_port=0)


def run_migrate(database_url: str, release: str, activate: bool) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, settings_for(database_url, release), get_release(release), activate=activate)


@contextmanager
def running_app(settings: Settings) -> Iterator[AppClient]:
    """The web service on a free port, served from a thread of this process."""
    pool = make_pool(settings)
    server = make_server(settings, pool)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield AppClient(f"http://{settings.listen_host}:{port}", settings.release)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        pool.close()


@dataclass
class StageResult:
    returncode: int
    stdout: str
    stderr: str


def stage_env(database_url: str, release: str, **overrides: str) -> dict[str, str]:
    """The environment a stage Job of the sample app's pod template has."""
    return {
        **os.environ,
        "PYTHONPATH": str(TESTS_DIR),
        "DATABASE_URL": database_url,
        "SAMPLEAPP_RELEASE": release,
        "SEQUENT_ENV": "test",
        "PATH": manifests.search_path(),  # pg_dump and psql of the embedded PostgreSQL first
        **overrides,
    }


def run_stage(
    database_url: str, release: str, *args: str, module: str = "sampleapp.replay", env: dict[str, str] | None = None
) -> StageResult:
    """Run a stage exactly as a Job would: ``python -m sampleapp.replay <stage> ...``."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=stage_env(database_url, release) if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return StageResult(completed.returncode, completed.stdout, completed.stderr)


def projector_state_rows(database_url: str) -> dict[str, tuple[int | None, int | None, int | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT name, active_version, activating_version, replaying_version "
            "FROM sequent_schema.projector_states ORDER BY name"
        ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def replay_state(database_url: str) -> dict[str, Any] | None:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM sequent_schema.replay_states ORDER BY id DESC LIMIT 1").fetchone()
