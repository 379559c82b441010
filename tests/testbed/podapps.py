"""Tiny programs for pods run by the process kubelet in tests.

``python -m testbed.podapps serve --port 8080`` is an HTTP server bound to ``$POD_IP`` (which the
pod spec sets from ``status.podIP``):

- ``GET /`` answers JSON with the pod name (``HOSTNAME``), ``VERSION``, ``GREETING`` and the pid;
- ``GET /healthz`` answers 200, or 500 once ``--healthy-checks`` health checks have been served,
  so a liveness probe can be made to fail;
- on SIGTERM it appends ``terminated <pid>`` to ``--events-file`` and exits 0.

``--events-file`` also receives ``started <pid>`` at start, so a test can see processes come and go.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
from pathlib import Path


def _record(events_file: str | None, line: str) -> None:
    if events_file:
        with Path(events_file).open("a") as out:
            out.write(line + "\n")


def serve(port: int, healthy_checks: int | None, events_file: str | None) -> int:
    host = os.environ["POD_IP"]
    checks = 0
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so a test can hold a connection open

        def do_GET(self) -> None:
            nonlocal checks
            if self.path == "/healthz":
                with lock:
                    checks += 1
                    healthy = healthy_checks is None or checks <= healthy_checks
                self._answer(200 if healthy else 500, {"healthy": healthy})
                return
            self._answer(
                200,
                {
                    "pod": os.environ.get("HOSTNAME", ""),
                    "version": os.environ.get("VERSION", ""),
                    "greeting": os.environ.get("GREETING", ""),
                    "pid": os.getpid(),
                    "ip": host,
                },
            )

        def _answer(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            print(format % args, file=sys.stderr, flush=True)

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def on_term(signum: int, _frame: object) -> None:
        _record(events_file, f"terminated {os.getpid()}")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    _record(events_file, f"started {os.getpid()}")
    print(f"serving on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve")
    serve_parser.add_argument("--port", type=int, default=8080)
    serve_parser.add_argument("--healthy-checks", type=int, default=None)
    serve_parser.add_argument("--events-file", default=None)
    args = parser.parse_args(argv)
    return serve(args.port, args.healthy_checks, args.events_file)


if __name__ == "__main__":
    raise SystemExit(main())
