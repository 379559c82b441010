"""Many ProjectorSets on one operator and one database server, on the real cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from kubernetes import client

from projectorset.adapters.pools import APPLICATION_NAME, DEFAULT_MAX_CONNECTIONS
from projectorset.api import NAME_LABEL, VERSION_LABEL
from projectorset.domain.ownership import OWNER_ANNOTATION
from sampleapp.releases import get_release
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
from testbed.manifests import sample_projectorset
from testbed.postgres import PostgresServer
from testbed.proxy import ServiceProxy
from testbed.scenario import REPO, LoadGenerator, MomentWatcher, OperatorProcess, Scenario, UpgradeResult
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
            time.sleep(0.05)  # the sampling rate, while the sets roll out

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
        time.sleep(10)  # kept: passes go on meanwhile, and nothing may change: no condition to wait for

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


# ---- two sets on one event store: web and worker of one application --------------------------------------


class SharedStoreSet:
    """One of the application's ProjectorSets on the shared event store: its Service, the writes
    through it, and the moments its version went active in the database and its Service switched."""

    def __init__(self, scenario: Scenario, name: str, owns: set[str], namespace: str | None = None) -> None:
        self.scenario, self.name, self.owns = scenario, name, owns
        self.namespace = namespace or scenario.namespace
        scenario.core.create_namespaced_service(
            self.namespace,
            {
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            },
        )
        self.proxy: ServiceProxy | None = None
        self.load: LoadGenerator | None = None
        self.watcher = MomentWatcher(scenario.database_url, scenario.core, self.namespace, name)

    def apply(self, version: str) -> None:
        running = self.scenario
        manifest = sample_projectorset(
            version,
            name=self.name,
            namespace=self.namespace,
            secret=f"{running.name}-db",  # one database, one event store, for both sets
            service=self.name,
            owns=self.owns,
        )
        running.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def start_traffic(self) -> None:
        running = self.scenario
        self.proxy = ServiceProxy(running.api_client, self.namespace, self.name).start()
        self.load = LoadGenerator(self.proxy.port, writers=2, prefix=self.name).start()
        wait_until(
            f"writes through {self.name}",
            lambda: sum(1 for w in self.load.snapshot() if w.status == 201) >= 10 if self.load else False,
            60,
        )

    def active(self, version: str) -> bool:
        body = self.scenario.custom.get_namespaced_custom_object(
            "projectorset.io", "v1alpha1", self.namespace, "projectorsets", self.name
        )
        status = body.get("status") or {}
        return (
            status.get("phase") == "Active"
            and status.get("activeVersion") == version
            and status.get("observedGeneration") == body["metadata"]["generation"]
        )

    def events(self) -> list[str]:
        listed = self.scenario.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name},involvedObject.kind=ProjectorSet"
        )
        return [f"{e.reason}: {e.message}" for e in listed.items]

    def stage_jobs(self, version: str) -> list[str]:
        jobs = client.BatchV1Api(self.scenario.api_client).list_namespaced_job(
            self.namespace, label_selector=f"{NAME_LABEL}={self.name},{VERSION_LABEL}={version}"
        )
        return [job.metadata.name for job in jobs.items]

    def close(self) -> None:
        self.watcher.stop()
        if self.load is not None:
            self.load.stop()
        if self.proxy is not None:
            self.proxy.stop()


def replays_since(url: str, after_id: int) -> list[tuple[str, list[str]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT state, projectors FROM sequent_schema.replay_states WHERE id > %s ORDER BY id", (after_id,)
        ).fetchall()
    return [(state, sorted(projectors)) for state, projectors in rows]


def last_replay_id(url: str) -> int:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT coalesce(max(id), 0) FROM sequent_schema.replay_states").fetchone()
    return int(found[0]) if found else 0


def row_written_at(url: str, name: str) -> Any:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT updated_at FROM sequent_schema.projector_states WHERE name = %s", (name,))
        row = found.fetchone()
    return row[0] if row else None


def upgrade_both(sets: list[SharedStoreSet], source: str, target: str) -> dict[str, UpgradeResult]:
    """Apply ``target`` to every set at once, under writes through every Service; measure each."""
    running = sets[0].scenario
    for each in sets:
        each.watcher.watch(target, get_release(target).versions)
    began = time.monotonic()
    for each in sets:
        each.apply(target)
    try:
        wait_until(
            f"{', '.join(s.name for s in sets)} Active at {target}", lambda: all(s.active(target) for s in sets), 420
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{running.tail_logs(60)}") from None
    total = time.monotonic() - began
    time.sleep(1.0)  # kept: writes in flight at the switch finish (the load records no in-flight writes)
    results = {}
    for each in sets:
        each.watcher.stop()
        assert each.load is not None
        writes = [w for w in each.load.snapshot() if w.started >= began]
        results[each.name] = running.measure(source, target, writes, each.watcher, total, load=each.load)
        print(f"store set={each.name} {results[each.name].summary()} refused={results[each.name].refused}")
    return results


def install_v1_with_traffic(sets: list[SharedStoreSet]) -> None:
    for each in sets:
        each.apply("v1")
    wait_until(f"{', '.join(s.name for s in sets)} Active at v1", lambda: all(s.active("v1") for s in sets), 300)
    for each in sets:
        each.start_traffic()


def assert_nothing_lost(results: dict[str, UpgradeResult]) -> None:
    """No acknowledged write lost, some went through, none refused outside golive-to-switch."""
    for name, result in results.items():
        assert result.lost == 0, (name, result.summary())
        assert result.acknowledged > 0, (name, result.summary())
        assert result.refused_outside_window == 0, (name, result.summary())


def test_web_and_worker_on_one_event_store_switch_once_the_owner_of_their_projectors_went_live(
    scenario: Scenario,
) -> None:
    """One application split in two Deployments on one event store, each a ProjectorSet running the
    same code: web owns AccountProjector, worker AuditProjector, each requires the other's. Both are
    edited v1 -> v2 at once (AccountProjector 1 -> 2): web replays, worker waits for web's golive and
    switches without a replay. Then v2 -> v4 (DailyTotalsProjector, given to worker): worker replays,
    web waits."""
    url = scenario.database_url
    web = SharedStoreSet(scenario, "web", {"AccountProjector"})
    worker = SharedStoreSet(scenario, "worker", {"AuditProjector", "DailyTotalsProjector"})
    sets = [web, worker]
    try:
        install_v1_with_traffic(sets)

        # -- v1 -> v2: AccountProjector 1 -> 2, web's --
        replay_before = last_replay_id(url)
        audit_written = row_written_at(url, "AuditProjector")
        results = upgrade_both(sets, "v1", "v2")
        assert projector_rows(url) == {"AccountProjector": (2, None, None), "AuditProjector": (1, None, None)}
        assert replays_since(url, replay_before) == [("live", ["AccountProjector"])]  # web's, and only it
        assert web.stage_jobs("v2"), "web ran no replay"
        assert worker.stage_jobs("v2") == []  # worker: no replay Job, nothing run against the store
        assert row_written_at(url, "AuditProjector") == audit_written  # nobody rewrote worker's projector
        assert any(e.startswith("WaitingForProjectors") and "ProjectorSet" in e for e in worker.events())
        assert_nothing_lost(results)

        # -- v2 -> v4: DailyTotalsProjector added, worker's --
        replay_before = last_replay_id(url)
        account_written = row_written_at(url, "AccountProjector")
        results = upgrade_both(sets, "v2", "v4")
        assert projector_rows(url) == {
            "AccountProjector": (2, None, None),
            "AuditProjector": (1, None, None),
            "DailyTotalsProjector": (1, None, None),
        }
        assert replays_since(url, replay_before) == [("live", ["DailyTotalsProjector"])]
        assert web.stage_jobs("v4") == []
        assert row_written_at(url, "AccountProjector") == account_written
        assert_nothing_lost(results)
    finally:
        for each in sets:
            each.close()


def test_a_set_whose_owner_another_operator_runs_switches_by_its_own_poll(scenario: Scenario) -> None:
    """web in the scenario's namespace, worker in another one with an operator of its own, both on one
    event store: worker's operator knows nothing of web, so no wake-up reaches it; its 2 s poll of
    projector_states must find web's golive. Prints the active-to-switch this fallback gives."""
    url = scenario.database_url
    other = f"{scenario.namespace}-b"
    scenario.cluster.create_namespace(other)
    scenario.core.create_namespaced_secret(
        other, {"metadata": {"name": f"{scenario.name}-db"}, "stringData": {"uri": url}}
    )
    second = OperatorProcess(scenario.cluster.kubeconfig, other, scenario.workdir / "operator-b.log").start()
    web = SharedStoreSet(scenario, "web", {"AccountProjector"})
    worker = SharedStoreSet(scenario, "worker", {"AuditProjector"}, namespace=other)
    sets = [web, worker]
    try:
        install_v1_with_traffic(sets)
        results = upgrade_both(sets, "v1", "v2")
        assert projector_rows(url) == {"AccountProjector": (2, None, None), "AuditProjector": (1, None, None)}
        assert worker.stage_jobs("v2") == []
        # Its own operator knows no set owning AccountProjector: it waited by reading the database.
        assert any(
            e.startswith("WaitingForProjectors") and "no ProjectorSet on this event store lists it" in e
            for e in worker.events()
        ), worker.events()
        assert_nothing_lost(results)
    finally:
        for each in sets:
            each.close()
        second.stop()
        scenario.core.delete_namespace(other)
