"""A load generator and a zero-loss check for the sample application.

``python -m sampleapp.load run --url http://HOST:PORT --seconds 30 --threads 4 --out acks.jsonl``
writes deposits continuously and records every outcome; ``python -m sampleapp.load verify
--acks acks.jsonl`` (with DATABASE_URL) checks them against the database. Tests and the demo
use ``LoadGenerator`` and ``verify`` directly.

A refusal (503 from the publisher rules) and a transport error are recorded, never retried
under the same identity: the write is simply not acknowledged. Only acknowledged writes
count for "lost".
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Ack:
    account_id: str
    sequence_number: int
    amount: int
    at: float  # time.time() when the response arrived


@dataclass
class LoadGenerator:
    """Deposits from ``threads`` threads to ``url`` (which can be changed while running)."""

    url: str
    threads: int = 4
    accounts: int = 20
    rate_per_thread: float | None = None  # requests per second; None: as fast as answered
    timeout: float = 10.0
    acks: list[Ack] = field(default_factory=list)
    refusals: list[tuple[float, str]] = field(default_factory=list)  # (time, Sequent error)
    errors: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> LoadGenerator:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), name=f"load-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.timeout + 5)

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def counts(self) -> tuple[int, int, int]:
        with self._lock:
            return len(self.acks), len(self.refusals), len(self.errors)

    def wait_for_acks(self, more: int, timeout: float = 60.0) -> None:
        goal = self.counts()[0] + more
        deadline = time.monotonic() + timeout
        while self.counts()[0] < goal:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.counts()[0]} of {goal} deposits acknowledged in {timeout:g} s")
            time.sleep(0.01)

    def _run(self, index: int) -> None:
        connection: http.client.HTTPConnection | None = None
        connected_to = ""
        n = 0
        interval = 1.0 / self.rate_per_thread if self.rate_per_thread else 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            n += 1
            account = f"acct-{(index * 7919 + n) % self.accounts}"
            amount = 1 + (n * 31 + index) % 100
            url = self.url
            try:
                if connection is None or connected_to != url:
                    if connection is not None:
                        connection.close()
                    parts = urlsplit(url)
                    connection = http.client.HTTPConnection(
                        parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout
                    )
                    connected_to = url
                body = json.dumps({"amount": amount})
                connection.request("POST", f"/accounts/{account}/deposits", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = json.loads(response.read() or b"null")
            except (OSError, http.client.HTTPException, ValueError) as error:
                with self._lock:
                    self.errors.append((time.time(), f"{type(error).__name__}: {error}"))
                if connection is not None:
                    connection.close()
                connection = None
                self._stop.wait(0.05)  # a proxy switching backends: do not spin
                continue
            now = time.time()
            with self._lock:
                if response.status == 201:
                    self.acks.append(Ack(account, int(payload["sequence_number"]), amount, now))
                elif response.status == 503 and isinstance(payload, dict) and "error" in payload:
                    self.refusals.append((now, str(payload["error"])))
                else:
                    self.errors.append((now, f"HTTP {response.status}: {payload}"))
        if connection is not None:
            connection.close()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            refused_at = [at for at, _ in self.refusals]
            return {
                "acknowledged": len(self.acks),
                "refused": dict(Counter(error for _, error in self.refusals)),
                "errors": len(self.errors),
                "first_refused_at": min(refused_at) if refused_at else None,
                "last_refused_at": max(refused_at) if refused_at else None,
                # From the first to the last refused write: the window in which writes failed.
                "refused_window_ms": round((max(refused_at) - min(refused_at)) * 1000) if refused_at else 0,
            }


def verify(
    database_url: str,
    acks: list[Ack],
    event_store_schema: str = "sequent_schema",
    view_schema: str = "view_schema",
) -> dict[str, Any]:
    """Zero loss: every acknowledged deposit is an event, and the projections equal the events."""
    es, view = sql.Identifier(event_store_schema), sql.Identifier(view_schema)
    with psycopg.connect(database_url) as conn:
        events = {
            (row[0], row[1]): row[2]
            for row in conn.execute(
                sql.SQL(
                    "SELECT event_json ->> 'account_id', sequence_number, (event_json ->> 'amount')::bigint "
                    "FROM {}.events WHERE event_type = 'Deposited'"
                ).format(es)
            )
        }
        balances = {
            row[0]: row[1]
            for row in conn.execute(sql.SQL("SELECT account_id, balance FROM {}.account_balances").format(view))
        }
        audit_row = conn.execute(sql.SQL("SELECT count(*) FROM {}.account_audit_log").format(view)).fetchone()
    lost = [ack for ack in acks if events.get((ack.account_id, ack.sequence_number)) != ack.amount]
    sums: Counter[str] = Counter()
    for (account, _), amount in events.items():
        sums[account] += amount
    wrong_balances = sorted(a for a in set(sums) | set(balances) if balances.get(a) != sums.get(a))
    audit = int(audit_row[0]) if audit_row else 0
    return {
        "events": len(events),
        "acknowledged": len(acks),
        "lost": len(lost),
        "lost_examples": [asdict(ack) for ack in lost[:5]],
        "wrong_balances": wrong_balances,
        "audit_rows": audit,
        "ok": not lost and not wrong_balances and audit == len(events),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sampleapp.load", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="write deposits for a while")
    run.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    run.add_argument("--seconds", type=float, default=10.0)
    run.add_argument("--threads", type=int, default=4)
    run.add_argument("--accounts", type=int, default=20)
    run.add_argument("--rate", type=float, default=None, help="requests per second per thread")
    run.add_argument("--out", help="write acknowledgements as JSON lines here")
    check = sub.add_parser("verify", help="check recorded acknowledgements against DATABASE_URL")
    check.add_argument("--acks", required=True)
    args = parser.parse_args(argv)
    if args.command == "verify":
        lines = Path(args.acks).read_text(encoding="utf-8").splitlines()
        acks = [Ack(**json.loads(line)) for line in lines if line.strip()]
        result = verify(os.environ["DATABASE_URL"], acks)
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    load = LoadGenerator(args.url, threads=args.threads, accounts=args.accounts, rate_per_thread=args.rate)
    with load:
        time.sleep(args.seconds)  # the run's duration, not a synchronisation
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            for ack in load.acks:
                out.write(json.dumps(asdict(ack)) + "\n")
    print(json.dumps(load.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
