"""The sample application's HTTP service: ``python -m sampleapp.web``.

Endpoints:
- ``POST /accounts/<id>/deposits`` ``{"amount": n}``: publish a Deposited event (201), or 503
  with ``{"error": <Sequent error class>, "message": ...}`` when the publisher rules refuse it.
- ``GET /accounts/<id>``: the AccountProjector's view row (404 if none).
- ``GET /healthz``: readiness, the database answers.
- ``GET /version``: the release and its projector versions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from sampleapp import store
from sampleapp.config import ConfigurationError, Settings
from sampleapp.gate import PublishRefused
from sampleapp.releases import Release, UnknownName, get_release

log = logging.getLogger("sampleapp.web")

DEPOSIT_PATH = re.compile(r"^/accounts/([^/]+)/deposits$")
ACCOUNT_PATH = re.compile(r"^/accounts/([^/]+)$")
MAX_BODY = 64 * 1024
MAX_AMOUNT = 1_000_000_000


class App:
    def __init__(self, settings: Settings, pool: ConnectionPool) -> None:
        self.settings = settings
        self.release: Release = get_release(settings.release)
        self.pool = pool
        self.schemas = store.Schemas(settings.event_store_schema, settings.view_schema)

    def version(self) -> dict[str, Any]:
        return {"release": self.release.name, "projectors": self.release.versions}


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for load generators
    # Headers and body go out in separate writes; without TCP_NODELAY, keep-alive clients
    # stall ~40 ms per response on delayed ACKs.
    disable_nagle_algorithm = True
    server_version = "sampleapp"
    app: App  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict[str, Any] | list[Any]) -> None:
        data = json.dumps(body, default=_json_default).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, error: str, message: str) -> None:
        self._send(status, {"error": error, "message": message})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        try:
            self._get()
        except Exception as error:  # a request must never kill the server thread silently
            self._unexpected(error)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        try:
            self._post()
        except Exception as error:
            self._unexpected(error)

    def _unexpected(self, error: Exception) -> None:
        if isinstance(error, psycopg.OperationalError | PoolTimeout):
            log.warning("database unavailable: %s", error)
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "DatabaseUnavailable", str(error).strip())
        elif isinstance(error, psycopg.errors.UndefinedTable):
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "SchemaMissing", str(error).strip())
        else:
            log.exception("request failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, type(error).__name__, str(error).strip())

    def _get(self) -> None:
        app = self.app
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            with app.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
            self._send(HTTPStatus.OK, {"status": "ok", **app.version()})
        elif path == "/version":
            self._send(HTTPStatus.OK, app.version())
        elif match := ACCOUNT_PATH.match(path):
            account_id = match.group(1)
            if not store.ACCOUNT_ID.match(account_id):
                self._error(HTTPStatus.BAD_REQUEST, "InvalidAccountId", "account id: 1-100 of [A-Za-z0-9_.-]")
                return
            with app.pool.connection() as conn:
                row = store.read_account(conn, app.schemas, account_id)
            if row is None:
                self._error(HTTPStatus.NOT_FOUND, "NotFound", f"no account {account_id}")
            else:
                self._send(HTTPStatus.OK, row)
        else:
            self._error(HTTPStatus.NOT_FOUND, "NotFound", f"no route for GET {path}")

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"null")

    def _post(self) -> None:
        app = self.app
        path = self.path.split("?", 1)[0]
        match = DEPOSIT_PATH.match(path)
        if not match:
            self._error(HTTPStatus.NOT_FOUND, "NotFound", f"no route for POST {path}")
            return
        account_id = match.group(1)
        try:
            body = self._read_body()
        except ValueError as error:
            self._error(HTTPStatus.BAD_REQUEST, "InvalidRequest", str(error))
            return
        amount = body.get("amount") if isinstance(body, dict) else None
        if not store.ACCOUNT_ID.match(account_id):
            self._error(HTTPStatus.BAD_REQUEST, "InvalidAccountId", "account id: 1-100 of [A-Za-z0-9_.-]")
            return
        if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
            self._error(HTTPStatus.BAD_REQUEST, "InvalidAmount", f"amount: an integer in 1..{MAX_AMOUNT}")
            return
        try:
            with app.pool.connection() as conn:
                result = store.deposit(conn, app.release, app.schemas, account_id, amount)
        except PublishRefused as refused:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, refused.error, refused.message)
            return
        self._send(HTTPStatus.CREATED, result)


def make_pool(settings: Settings) -> ConnectionPool:
    return ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.pool_size,
        kwargs={"connect_timeout": 5, "application_name": f"sampleapp-web-{settings.release}"},
        check=ConnectionPool.check_connection,
        open=True,
        name="sampleapp",
    )


def make_server(settings: Settings, pool: ConnectionPool) -> ThreadingHTTPServer:
    """A server bound to LISTEN_HOST:LISTEN_PORT (port 0: any free port); not yet serving."""
    app = App(settings, pool)
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((settings.listen_host, settings.listen_port), handler)
    server.daemon_threads = True
    return server


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("SAMPLEAPP_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
        get_release(settings.release)
    except (ConfigurationError, UnknownName) as error:
        print(f"sampleapp.web: {error}", file=sys.stderr)
        return 2
    pool = make_pool(settings)
    server = make_server(settings, pool)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        # shutdown() blocks until serve_forever returns, so it cannot run in this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log.info("release %s listening on %s:%s", settings.release, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
