"""Does one silent database delay other ProjectorSets? Measured at the controller, with a real
PostgreSQL for the healthy sets and a TCP listener that accepts and never answers for the others.

Every ProjectorSet runs its passes in a loop of its own, as the operator's daemons do, on the
executor under test: the operator's ``PassRunner`` or, for comparison, asyncio's default one
(what passes used before). A healthy set is installed at v1: a few passes read its database,
activate the release and switch its Service; the figure is the time to that switch.

``python -m testbed.isolation`` (``make bench-isolation``) prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from fake_cluster import FakeCluster

from projectorset.controller.reconciler import PassRunner, Reconciler
from projectorset.domain.cluster import Owner
from sampleapp.config import Settings
from sampleapp.migrate import migrate
from sampleapp.releases import get_release
from testbed import stopping
from testbed.manifests import sample_projectorset
from testbed.postgres import PostgresServer
from testbed.sequent_schema import create_sequent_tables

T = TypeVar("T")
Executor = Callable[[Callable[..., Any], Any], Awaitable[Any]]


class SilentDatabase:
    """A TCP listener that accepts connections and never says a word: a hung database server."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port = self._socket.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._held.append(connection)

    @property
    def uri(self) -> str:
        return f"postgresql://app:pw@127.0.0.1:{self.port}/app"

    def close(self) -> None:
        self._socket.close()
        for connection in self._held:
            connection.close()


def healthy_database(server: PostgresServer) -> str:
    """A fresh database with Sequent's tables and the sample application migrated at v1."""
    url = server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        create_sequent_tables(conn)
        migrate(conn, Settings(database_url=url, release="v1"), get_release("v1"), activate=True)
    return url


@dataclass
class SetResult:
    name: str
    healthy: bool
    # Seconds from the start until the Service selected v1 (None: not within the deadline).
    switched_s: float | None
    passes: int


async def _run_set(
    name: str,
    uri: str,
    healthy: bool,
    run: Executor,
    workdir: Path,
    deadline: float,
    started: float,
    passes_done: dict[str, int],
) -> SetResult:
    cluster = FakeCluster(workdir / name)
    (workdir / name).mkdir(parents=True, exist_ok=True)
    cluster.services["accounts"] = {"app": "accounts"}
    cluster.secrets["accounts-db"] = {"uri": uri}
    reconciler = Reconciler(cluster)
    body = sample_projectorset("v1", name=name)
    body["metadata"].update(namespace="default", uid=f"uid-{name}", generation=1)
    passes = 0
    try:
        while time.monotonic() < deadline:
            await run(reconciler.reconcile, copy.deepcopy(body))
            passes += 1
            passes_done[name] = passes
            body["status"] = cluster.status
            if cluster.services["accounts"].get("projectorset.io/version") == "v1":
                return SetResult(name, healthy, time.monotonic() - started, passes)
            await asyncio.sleep(0.05)
        return SetResult(name, healthy, None, passes)
    finally:
        cluster.stop()
        reconciler.databases.forget(Owner(name, "default", f"uid-{name}"))


@dataclass
class Measure:
    healthy: list[SetResult]
    # Passes of the silent sets that had ended (given up on their database) when the last
    # healthy set switched: 0 means no healthy set waited behind a silent one.
    silent_passes_ended: int


async def measure(
    healthy_uris: list[str], silent_uris: list[str], run: Executor, workdir: Path, timeout: float = 60.0
) -> Measure:
    """Start every set's loop at once (the silent ones first) and wait for the healthy ones."""
    started = time.monotonic()
    deadline = started + timeout
    passes_done: dict[str, int] = {}
    silent = [
        asyncio.create_task(_run_set(f"silent-{n}", uri, False, run, workdir, deadline, started, passes_done))
        for n, uri in enumerate(silent_uris)
    ]
    await asyncio.sleep(0.2)  # their first passes hold their threads before the others begin
    healthy = [
        asyncio.create_task(_run_set(f"healthy-{n}", uri, True, run, workdir, deadline, started, passes_done))
        for n, uri in enumerate(healthy_uris)
    ]
    results = await asyncio.gather(*healthy)
    ended = sum(count for name, count in passes_done.items() if name.startswith("silent-"))
    for task in silent:
        task.cancel()
    return Measure(list(results), ended)


def pass_runner(workers: int | None = None) -> tuple[Executor, Callable[[], None]]:
    runner = PassRunner() if workers is None else PassRunner(workers)
    return runner.run, runner.shutdown


async def default_executor(function: Callable[..., T], *args: Any) -> T:
    """asyncio's default executor: what passes ran on before the PassRunner."""
    return await asyncio.to_thread(function, *args)


@contextmanager
def silent_databases(count: int) -> Iterator[list[str]]:
    listeners = [SilentDatabase() for _ in range(count)]
    try:
        yield [listener.uri for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.isolation", description=__doc__)
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--silent", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args(argv)
    healthy_count = arguments.sets - arguments.silent
    server = PostgresServer.start()
    workdir = Path(tempfile.mkdtemp(prefix="projectorset-isolation-"))
    try:
        print(f"{arguments.sets} ProjectorSets, {arguments.silent} with a silent database; time to switch (s)")
        print("executor                         silent  healthy_switch_p50  healthy_switch_max  not_switched")
        for label, silent in (
            ("PassRunner (dedicated, 32)", 0),
            ("PassRunner (dedicated, 32)", arguments.silent),
            ("asyncio default executor", arguments.silent),
        ):
            figures: list[float] = []
            missing = 0
            for run_number in range(arguments.runs):
                uris = [healthy_database(server) for _ in range(healthy_count)]
                with silent_databases(silent) as silent_uris:
                    if label.startswith("PassRunner"):
                        run, shutdown = pass_runner()
                    else:
                        run, shutdown = default_executor, (lambda: None)
                    try:
                        measured = asyncio.run(
                            measure(uris, silent_uris, run, workdir / f"{label[:5]}-{silent}-{run_number}")
                        )
                    finally:
                        shutdown()
                figures += [r.switched_s for r in measured.healthy if r.switched_s is not None]
                missing += sum(r.switched_s is None for r in measured.healthy)
            p50 = statistics.median(figures) if figures else float("nan")
            worst = max(figures) if figures else float("nan")
            print(f"{label:<32} {silent:>6} {p50:>19.2f} {worst:>19.2f} {missing:>13}", flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(stopping.run(main))
