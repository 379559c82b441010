"""The controller's reconcile passes over the in-process fake cluster, with a real PostgreSQL and
the sample application's real replay stages running as processes; ``tests/conftest.py`` registers
this module's fixtures for the whole suite."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fake_cluster import FakeCluster

from projectorset.controller.reconciler import Reconciler
from sampleapp.config import Settings
from sampleapp.migrate import migrate
from sampleapp.releases import get_release
from sampleapp.store import Schemas, deposit
from testbed.manifests import sample_projectorset
from testbed.sequent_schema import projector_rows

DEPOSITS = 60


@pytest.fixture
def app_database(database_url: str) -> str:
    """The sample application's database, migrated and activated at v1, with some deposits."""
    settings = Settings(database_url=database_url, release="v1")
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, settings, get_release("v1"), activate=True)
        for number in range(DEPOSITS):
            deposit(conn, get_release("v1"), Schemas("sequent_schema", "view_schema"), f"acct-{number % 7}", 10)
    return database_url


class Harness:
    """One ProjectorSet, ``accounts`` in ``default``, reconciled pass by pass as Kopf would."""

    def __init__(self, cluster: FakeCluster, database_url: str) -> None:
        self.cluster = cluster
        self.database_url = database_url
        self.reconciler = Reconciler(cluster)
        self.body: dict[str, Any] = sample_projectorset("v1")
        self.body["metadata"].update(namespace="default", uid="uid-1", generation=1)
        cluster.services["accounts"] = {"app": "accounts"}
        cluster.secrets["accounts-db"] = {"uri": database_url}

    def set_spec(self, version: str, **spec: Any) -> None:
        fresh = sample_projectorset(version, spec=spec)
        self.body["spec"] = fresh["spec"]
        self.body["metadata"]["generation"] += 1

    def edit_spec(self, **changes: Any) -> None:
        self.body["spec"] = {**self.body["spec"], **changes}
        self.body["metadata"]["generation"] += 1

    def reconcile(self) -> None:
        self.reconciler.reconcile(copy.deepcopy(self.body))
        if self.cluster.status is not None:
            self.body["status"] = self.cluster.status

    def run_until(self, done: Callable[[], bool], timeout: float = 120) -> None:
        """Reconcile pass after pass, as Kopf's timer would, until ``done``; a pass's error is raised."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out; status: {json.dumps(self.status, indent=1)}"
            self.reconcile()
            time.sleep(0.05)  # the pace of the passes: the stages run as processes meanwhile

    @property
    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    def phase_is(self, phase: str) -> Callable[[], bool]:
        return lambda: (
            self.status.get("phase") == phase
            and self.status.get("observedGeneration") == self.body["metadata"]["generation"]
        )

    def projector_rows(self) -> dict[str, tuple[int | None, int | None, int | None]]:
        return projector_rows(self.database_url)


@pytest.fixture
def harness(app_database: str, tmp_path: Path) -> Iterator[Harness]:
    cluster = FakeCluster(tmp_path)
    yield Harness(cluster, app_database)
    cluster.stop()


def serving(harness: Harness) -> str | None:
    """The version the Service ``accounts`` sends traffic to."""
    return harness.cluster.services["accounts"].get("projectorset.io/version")
