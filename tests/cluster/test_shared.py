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

from projectorset.api import NAME_LABEL, VERSION_LABEL
from projectorset.ownership import OWNER_ANNOTATION
from projectorset.pools import APPLICATION_NAME, DEFAULT_MAX_CONNECTIONS
from testbed.cluster import LocalCluster
from testbed.crowd import (
    GROUP,
    PLURAL,
    PROJECTOR,
    SECRET,
    VERSION,
    create_crowd,
    create_event_stores,
    crowd_projectorset,
    phases,
    schema_of,
    wait_all_active,
)
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


def test_two_sets_naming_one_service_the_first_claims_it_the_other_never_switches_it(
    local_cluster: LocalCluster,
    kube_api: client.ApiClient,
    kubectl: Callable[..., Any],
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    namespace = f"claim-{int(time.time()) % 100000}"
    local_cluster.create_namespace(namespace)
    kubectl("apply", "-f", str(REPO / "crds" / "projectorsets.yaml"), check=True)
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    url = create_event_stores(postgres_server, 2)
    core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET}, "stringData": {"uri": url}})
    # A Service that selects pods the operator did not create: taken over by a first install.
    core.create_namespaced_service(
        namespace, {"metadata": {"name": "front"}, "spec": {"selector": {"app": "front"}, "ports": [{"port": 80}]}}
    )
    operator = OperatorProcess(local_cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        first, second = (crowd_projectorset(namespace, number) for number in range(2))
        for body in (first, second):
            body["spec"]["service"]["name"] = "front"
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, first)
        wait_until("crowd-0 Active", lambda: phases(kube_api, namespace).get("crowd-0") == "Active", 240)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, second)

        def refused() -> dict[str, Any] | None:
            found = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "crowd-1")
            conditions = (found.get("status") or {}).get("conditions") or []
            applied = next((c for c in conditions if c["type"] == "ActionsApplied"), None)
            return applied if applied and applied["reason"] == "ServiceOwnedByOther" else None

        condition = wait_until("crowd-1 refused the Service", refused, 240)
        assert condition["status"] == "False"
        assert f"{namespace}/crowd-0" in condition["message"]
        time.sleep(10)  # passes go on: the Service must stay as crowd-0 left it

        service = core.read_namespaced_service("front", namespace)
        assert service.spec.selector == {NAME_LABEL: "crowd-0", VERSION_LABEL: "v1"}
        assert service.metadata.annotations[OWNER_ANNOTATION] == f"{namespace}/crowd-0"
        now = phases(kube_api, namespace)
        assert now["crowd-0"] == "Active" and now["crowd-1"] != "Active", now  # the refusal is not a switch
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=crowd-1,reason=ServiceOwnedByOther"
        ).items
        assert len(events) == 1, [e.message for e in events]  # one Event, not one per pass
        # crowd-1 activated its own projector in its own event store; crowd-0's is untouched.
        assert projector_rows(url, schema_of(0)) == {PROJECTOR: (1, None, None)}
        assert projector_rows(url, schema_of(1)) == {PROJECTOR: (1, None, None)}
    finally:
        operator.stop()
        core.delete_namespace(namespace)
