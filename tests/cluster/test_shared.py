"""Many ProjectorSets on one operator and one database server, on the real cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kubernetes import client

from projectorset.pools import APPLICATION_NAME, DEFAULT_MAX_CONNECTIONS
from testbed.cluster import LocalCluster
from testbed.crowd import PROJECTOR, create_crowd, create_event_stores, schema_of, wait_all_active
from testbed.postgres import PostgresServer
from testbed.scenario import REPO, OperatorProcess
from testbed.sequent_schema import projector_rows
from testbed.workloads import wait_until


@pytest.fixture
def small_postgres() -> Iterator[PostgresServer]:
    """A server with room for 20 connections only (PostgreSQL's default is 100)."""
    server = PostgresServer.start(max_connections=20)
    try:
        yield server
    finally:
        server.stop()


def operator_connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,))
        found = row.fetchone()
    return int(found[0]) if found else 0


def test_fifty_sets_on_a_server_with_twenty_connections_all_go_active(
    local_cluster: LocalCluster,
    kube_api: client.ApiClient,
    kubectl: Callable[..., Any],
    small_postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    count = 50
    namespace = f"shared-{int(time.time()) % 100000}"
    local_cluster.create_namespace(namespace)
    kubectl("apply", "-f", str(REPO / "crds" / "projectorsets.yaml"), check=True)
    url = create_event_stores(small_postgres, count)
    operator = OperatorProcess(local_cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.is_set():
            peak = max(peak, operator_connections(small_postgres.url))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        create_crowd(kube_api, namespace, url, count)
        try:
            wait_all_active(kube_api, namespace, count, timeout=900, report=False)
        except AssertionError as error:
            log = (tmp_path / "operator.log").read_text(errors="replace").splitlines()[-30:]
            raise AssertionError(f"{error}\noperator log:\n" + "\n".join(log)) from None
        sampling.set()
        sampler.join()

        # Each set activated its own projector in its own event store, and nothing else.
        for number in range(count):
            assert projector_rows(url, schema_of(number)) == {PROJECTOR: (1, None, None)}
        # Fifty sets never held more connections than the one shared pool allows.
        assert 1 <= peak <= DEFAULT_MAX_CONNECTIONS
        # At rest, the operator holds no connection at all.
        wait_until("the operator's idle pool to close", lambda: operator_connections(small_postgres.url) == 0, 120)
    finally:
        sampling.set()
        operator.stop()
        client.CoreV1Api(kube_api).delete_namespace(namespace)
