"""The Kopf daemon of each ProjectorSet, run in-process over a stand-in API: retries after an outage
spread by the back-off's jitter, log lines that name their set as JSON fields, and the reconcile
metrics of its passes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import psycopg
import pytest
from fake_cluster import FakeCluster
from prometheus_client import REGISTRY

from projectorset.api.conditions import Reason
from projectorset.controller.reconciler import DatabaseRegistry, PassRunner, Reconciler
from projectorset.domain.backoff import Backoff
from projectorset.domain.cluster import ClusterError, Owner, ServiceRefused
from projectorset.runtime import handlers, main
from projectorset.runtime.handlers import runtime
from sampleapp.config import Settings
from sampleapp.migrate import migrate
from sampleapp.releases import get_release
from testbed.manifests import sample_projectorset


class NeverStopped:
    """Kopf's ``stopped`` flag of a daemon nobody stops."""

    reason = None

    def __bool__(self) -> bool:
        return False


class ApiServer(FakeCluster):
    """The stand-in cluster, with the ProjectorSet reads a set's loop begins each pass with:
    ``reads`` answers them in turn (a body, None for a deleted set, or an exception to raise)."""

    def __init__(self, workdir: Path, reads: Callable[[str, str, int], Any]) -> None:
        super().__init__(workdir)
        self.reads = reads
        self.read_count: Counter[tuple[str, str]] = Counter()
        self.read_at: dict[tuple[str, str], list[float]] = {}

    def read_projectorset(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.read_count[(namespace, name)] += 1
        self.read_at.setdefault((namespace, name), []).append(time.monotonic())
        answer = self.reads(namespace, name, self.read_count[(namespace, name)])
        if isinstance(answer, Exception):
            raise answer
        return answer


class InlineRunner(PassRunner):
    """Runs each call on the event loop itself: the stand-in's reads are instant, and their times are
    then those the loops asked at, not those a busy thread pool got to them."""

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)


@pytest.fixture
def operator_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[ApiServer], None]]:
    """Points the handlers' process-wide state at a stand-in cluster, with a seeded jitter."""
    runner = PassRunner()
    databases = DatabaseRegistry()

    def use(cluster: ApiServer) -> None:
        monkeypatch.setattr(runtime, "cluster", cluster)
        monkeypatch.setattr(runtime, "reconciler", Reconciler(cluster, databases))
        monkeypatch.setattr(runtime, "databases", databases)
        monkeypatch.setattr(runtime, "pass_runner", runner)
        monkeypatch.setattr(runtime, "jitter", random.Random(18))

    yield use
    runner.shutdown(wait=True)
    databases.close()


def invalid_set(namespace: str, name: str) -> dict[str, Any]:
    """A ProjectorSet whose spec the CRD would have refused: its pass reports it, no database needed."""
    return {
        "apiVersion": "projectorset.io/v1alpha1",
        "kind": "ProjectorSet",
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {"replicas": -1},
    }


@pytest.fixture
def app_database(database_url: str) -> str:
    """The sample application's database, migrated and activated at v1."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, Settings(database_url=database_url, release="v1"), get_release("v1"), activate=True)
    return database_url


OUTAGE = ClusterError("reading ProjectorSet: the API server did not answer", Reason.KUBERNETES_API_ERROR)


def test_a_thousand_sets_whose_passes_failed_in_one_outage_retry_spread_out(
    operator_runtime: Callable[[ApiServer], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every set's first pass fails in the same API outage. Their retries come back over the
    back-off's two-second window, a few at a time, not all at once (as they would after a fixed
    doubling: a thousand requests in the same instant, after every failure again)."""
    sets = [("crowd", f"set-{number}") for number in range(1000)]
    cluster = ApiServer(tmp_path, lambda namespace, name, read: OUTAGE if read == 1 else None)
    operator_runtime(cluster)
    monkeypatch.setattr(runtime, "pass_runner", InlineRunner(workers=1))
    # A thousand warnings would take long enough to spread the outage's own failures apart.
    caplog.set_level(logging.ERROR, logger=handlers.__name__)

    async def run_all() -> None:
        loops = [handlers.run_rollouts(name, namespace, None, NeverStopped()) for namespace, name in sets]
        await asyncio.wait_for(asyncio.gather(*loops), timeout=60)

    asyncio.run(run_all())

    assert all(cluster.read_count[key] == 2 for key in sets)
    outage = min(cluster.read_at[key][0] for key in sets)
    retries = sorted(cluster.read_at[key][1] - outage for key in sets)
    # Evenly spread, a tenth of them would come back in each 200 ms; in lockstep, all of them. A
    # quarter leaves room for a stalled event loop on a busy machine (its timers then fire together).
    per_200ms = Counter(math.floor(at * 5) for at in retries)
    assert max(per_200ms.values()) <= 250, per_200ms.most_common(3)
    assert retries[-1] - retries[0] > 1.5  # over the whole window (its ceiling is 2 s)


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The operator's logging set up as ``projectorset-operator --log-format json`` does it, into a buffer."""
    monkeypatch.setattr(kopf, "run", lambda **_: None)
    root = logging.getLogger()
    handlers_before, level_before = list(root.handlers), root.level
    main.main(["--log-format", "json", "--metrics-port", "0"])
    stream = io.StringIO()
    for handler in root.handlers:
        if handler not in handlers_before and isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    yield stream
    root.handlers[:] = handlers_before
    root.setLevel(level_before)


def test_json_log_lines_name_their_set_in_fields(
    operator_runtime: Callable[[ApiServer], None],
    json_log: io.StringIO,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[Any] = [OUTAGE, invalid_set("shop", "blog")]
    cluster = ApiServer(tmp_path, lambda namespace, name, read: reads[read - 1] if read <= len(reads) else None)
    operator_runtime(cluster)
    monkeypatch.setattr(handlers, "PASS_RETRY_BACKOFF", Backoff(base=0.01, cap=0.05))

    async def run() -> None:
        loop = asyncio.create_task(handlers.run_rollouts("blog", "shop", "uid-blog", NeverStopped()))
        while cluster.read_count[("shop", "blog")] < 2 or not cluster.events:
            await asyncio.sleep(0.01)
        runtime.wake("shop", "blog")  # the third read finds the set deleted: the loop ends
        await asyncio.wait_for(loop, timeout=10)

    asyncio.run(run())
    logging.getLogger("projectorset.elsewhere").warning("a line about no set")

    lines = [json.loads(line) for line in json_log.getvalue().splitlines() if line.strip()]
    about_blog = {"apiVersion": "projectorset.io/v1alpha1", "kind": "ProjectorSet", "namespace": "shop", "name": "blog"}
    # The loop's own line (the outage), and one from the pass's worker thread (the controller's Event).
    retried = next(line for line in lines if "retrying in" in line["message"])
    reported = next(line for line in lines if "InvalidSpec" in line["message"])
    for line in (retried, reported):
        assert {key: line["object"][key] for key in about_blog} == about_blog, line
        assert line["object"]["uid"] == "uid-blog"
    assert retried["severity"] == "warn" and reported["severity"] == "info"
    elsewhere = next(line for line in lines if line["message"] == "a line about no set")
    assert "object" not in elsewhere


def reconcile_samples(result: str) -> float:
    return REGISTRY.get_sample_value("projectorset_reconcile_duration_seconds_count", {"result": result}) or 0.0


def reconcile_errors(reason: str) -> float:
    return REGISTRY.get_sample_value("projectorset_reconcile_errors_total", {"reason": reason}) or 0.0


class RefusingApiServer(ApiServer):
    """Refuses the pass's actions while ``refusing`` (the Service belongs to another set)."""

    refusing = False

    def apply(self, owner: Owner, spec: Any, action: Any) -> None:
        if self.refusing:
            raise ServiceRefused("Service accounts is switched by ProjectorSet shop/other")
        super().apply(owner, spec, action)


def test_passes_are_timed_and_the_failed_ones_counted_by_reason(
    operator_runtime: Callable[[ApiServer], None], app_database: str, tmp_path: Path
) -> None:
    accounts = sample_projectorset("v1")
    accounts["metadata"].update(namespace="shop", uid="uid-accounts", generation=1)

    def reads(namespace: str, name: str, read: int) -> Any:
        cluster.refusing = read == 3
        # An API outage, a bug, a pass whose action is refused, a pass that succeeds; then it is deleted.
        return [OUTAGE, KeyError("metadata"), accounts, accounts][read - 1] if read <= 4 else None

    cluster = RefusingApiServer(tmp_path, reads)
    cluster.services["accounts"] = {"app": "accounts"}
    cluster.secrets["accounts-db"] = {"uri": app_database}
    operator_runtime(cluster)
    counted = ("success", "error", "KubernetesAPIError", "KeyError", "ServiceOwnedByOther")
    before = [*map(reconcile_samples, counted[:2]), *map(reconcile_errors, counted[2:])]

    async def run() -> None:
        loop = asyncio.create_task(handlers.run_rollouts("accounts", "shop", "uid-accounts", NeverStopped()))
        # Each retry waits its back-off and a pass that succeeded comes back later: wake it each time.
        while not loop.done():
            await asyncio.sleep(0.05)
            runtime.wake("shop", "accounts")
        await loop

    asyncio.run(asyncio.wait_for(run(), timeout=60))
    after = [*map(reconcile_samples, counted[:2]), *map(reconcile_errors, counted[2:])]
    assert dict(zip(counted, (a - b for a, b in zip(after, before, strict=True)), strict=True)) == {
        "success": 1,
        "error": 3,
        "KubernetesAPIError": 1,
        "KeyError": 1,
        "ServiceOwnedByOther": 1,
    }
    assert cluster.read_count[("shop", "accounts")] == 5
