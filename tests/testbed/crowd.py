"""Many cheap ProjectorSets in one namespace, for ``bench_scale`` and the tests of many sets.

Each set ``crowd-<n>`` has its own event store (schema ``crowd_<n>`` of one shared database, so
all of them share one connection target and one Secret), one projector, its own Service and
one pod running ``sleep`` without probes; its migrate step runs ``true``. ``placement`` puts
the pods on a node of choice (the virtual node of ``testbed.virtual_node`` for hundreds).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from kubernetes import client

from testbed.postgres import PostgresServer
from testbed.sequent_schema import create_sequent_tables

GROUP, VERSION, PLURAL = "projectorset.io", "v1alpha1", "projectorsets"
SECRET = "crowd-db"
PROJECTOR = "CounterProjector"


def set_name(number: int) -> str:
    return f"crowd-{number}"


def schema_of(number: int) -> str:
    return f"crowd_{number}"


def crowd_projectorset(namespace: str, number: int, placement: dict[str, Any] | None = None) -> dict[str, Any]:
    name = set_name(number)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProjectorSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "version": "v1",
            "replicas": 1,
            "service": {"name": name},
            "database": {"secretRef": {"name": SECRET, "key": "uri"}, "eventStoreSchema": schema_of(number)},
            "projectors": [{"name": PROJECTOR, "version": 1}],
            # Its migrate step has nothing to do (a first install needs no replay stage).
            "replay": {"commands": {"migrate": ["true"]}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "infinity"]}],
                    "terminationGracePeriodSeconds": 1,
                    **(placement or {}),
                },
            },
        },
    }


def create_event_stores(postgres: PostgresServer, count: int, database: str | None = None) -> str:
    """One database holding ``count`` event stores, one schema each; returns its URI."""
    url = postgres.create_database(database)
    with psycopg.connect(url) as conn:
        for number in range(count):
            create_sequent_tables(conn, schema_of(number))
            if number % 50 == 49:
                conn.commit()
    return url


def create_crowd(
    api: client.ApiClient, namespace: str, url: str, count: int, placement: dict[str, Any] | None = None
) -> None:
    """The Secret, and per set its Service and ProjectorSet (eight at a time)."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET}, "stringData": {"uri": url}})

    def one(number: int) -> None:
        name = set_name(number)
        core.create_namespaced_service(
            namespace,
            {"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}},
        )
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, crowd_projectorset(namespace, number, placement)
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(count)))


def phases(api: client.ApiClient, namespace: str) -> dict[str, str]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return {item["metadata"]["name"]: (item.get("status") or {}).get("phase", "") for item in listed["items"]}


def wait_all_active(api: client.ApiClient, namespace: str, expected: int, timeout: float, report: bool = True) -> None:
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while True:
        seen = phases(api, namespace)
        active = sum(1 for phase in seen.values() if phase == "Active")
        if len(seen) >= expected and active == len(seen):
            return
        if report and time.monotonic() - last_report > 15:
            counts: dict[str, int] = {}
            for phase in seen.values():
                counts[phase or "(none)"] = counts.get(phase or "(none)", 0) + 1
            print(f"[crowd] {active}/{expected} Active: {counts}", flush=True)
            last_report = time.monotonic()
        if time.monotonic() > deadline:
            stuck = sorted(name for name, phase in seen.items() if phase != "Active")[:10]
            raise AssertionError(f"not all Active after {timeout:.0f} s; e.g. {stuck}")
        time.sleep(2)
