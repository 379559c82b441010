"""The upgrade scenario the end-to-end tests, ``make demo`` and ``make bench`` run.

On a local cluster and a real PostgreSQL: the sample application at v1 behind its Service,
the operator as a process, a load generator writing deposits through a local service proxy
(as users would, through the Service), and watchers that see, every few milliseconds, when
the database shows the new projector active and when the Service selector moves.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from kubernetes import client

from sampleapp.config import Settings
from sampleapp.migrate import migrate
from sampleapp.releases import get_release
from testbed import toolchain
from testbed.cluster import LocalCluster
from testbed.manifests import sample_projectorset
from testbed.postgres import PostgresServer, free_port
from testbed.proxy import ServiceProxy

REPO = Path(__file__).resolve().parents[2]
OPERATOR = Path(sys.executable).parent / "projectorset-operator"


# ---- the operator as a process --------------------------------------------------------------------


class OperatorProcess:
    """``projectorset-operator`` watching one namespace, as a user would run it."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, arguments: Sequence[str] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = log
        self.arguments = tuple(arguments)  # more, or later ones that override the defaults below
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0

    def start(self) -> OperatorProcess:
        self.health_port = free_port()
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(OPERATOR),
                    "--namespace",
                    self.namespace,
                    "--liveness",
                    f"http://127.0.0.1:{self.health_port}/healthz",
                    "--log-format",
                    "plain",
                    *self.arguments,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """As a crash or an OOM kill would: no clean-up at all."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_memory_kib(self) -> int:
        """VmHWM: the peak resident memory of the operator process."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0


# ---- writes through the Service ----------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    account: str
    amount: int
    started: float
    finished: float
    status: int  # HTTP status, or 0 when the connection failed
    error: str = ""


class LoadGenerator:
    """Writers depositing continuously through the service proxy; every answer is recorded."""

    def __init__(
        self, port: int, writers: int = 4, accounts: int = 8, host: str = "127.0.0.1", prefix: str = "acct"
    ) -> None:
        self.host, self.port = host, port
        self.writers, self.accounts = writers, accounts
        self.prefix = prefix  # account names: each generator its own, so its writes can be counted apart
        self.writes: list[Write] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        for number in range(self.writers):
            thread = threading.Thread(target=self._write_loop, args=(number,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _write_loop(self, number: int) -> None:
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            account = f"{self.prefix}-{(number * 7919 + sequence) % self.accounts}"
            amount = 1 + (sequence % 9)
            started = time.monotonic()
            status, error = self._post(account, amount)
            with self._lock:
                self.writes.append(Write(account, amount, started, time.monotonic(), status, error))
            if status != 201:
                time.sleep(0.02)  # a refused client backs off a little, as real ones do

    def _post(self, account: str, amount: int) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(
                "POST",
                f"/accounts/{account}/deposits",
                body=json.dumps({"amount": amount}),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            body = response.read()
            error = ""
            if response.status != 201:
                with contextlib.suppress(ValueError, AttributeError):
                    error = json.loads(body).get("error", "")
            return response.status, error
        except (OSError, http.client.HTTPException) as failure:
            return 0, type(failure).__name__
        finally:
            conn.close()

    def snapshot(self) -> list[Write]:
        with self._lock:
            return list(self.writes)


# ---- watching the moments that matter ----------------------------------------------------------------


class MomentWatcher:
    """Polls, every few milliseconds, the database and the Service, and keeps the first moment
    each one showed the target version."""

    def __init__(self, database_url: str, core: client.CoreV1Api, namespace: str, service: str) -> None:
        self.database_url = database_url
        self.core = core
        self.namespace, self.service = namespace, service
        self.target_projectors: dict[str, int] = {}
        self.target_version = ""
        self.active_at: float | None = None
        self.switched_at: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def watch(self, version: str, projectors: dict[str, int]) -> None:
        self.stop()
        self._stop = threading.Event()
        self.target_version, self.target_projectors = version, projectors
        self.active_at = self.switched_at = None
        self._threads = [
            threading.Thread(target=self._watch_database, daemon=True),
            threading.Thread(target=self._watch_service, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _watch_database(self) -> None:
        query = "SELECT name, active_version, updated_at FROM sequent_schema.projector_states"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            # Only a write after the watch began counts: a release whose projectors were already
            # active (no replay, e.g. v2 -> v3) is activated when its rows are written again.
            baseline = max((row[2] for row in conn.execute(query)), default=None)
            while not self._stop.is_set() and self.active_at is None:
                rows = conn.execute(query).fetchall()
                versions = {name: version for name, version, _ in rows}
                latest = max((row[2] for row in rows), default=None)
                written = baseline is None or (latest is not None and latest > baseline)
                if written and all(versions.get(name) == v for name, v in self.target_projectors.items()):
                    self.active_at = time.monotonic()
                time.sleep(0.005)

    def _watch_service(self) -> None:
        while not self._stop.is_set() and self.switched_at is None:
            service = self.core.read_namespaced_service(self.service, self.namespace)
            if (service.spec.selector or {}).get("projectorset.io/version") == self.target_version:
                self.switched_at = time.monotonic()
            time.sleep(0.005)


# ---- the scenario ---------------------------------------------------------------------------------------


@dataclass
class UpgradeResult:
    source: str
    target: str
    lost: int
    acknowledged: int
    refused: int
    refused_window_ms: float
    active_to_switch_ms: float | None
    refused_outside_window: int
    total_s: float
    events: int
    phases: list[str] = field(default_factory=list)

    def summary(self) -> str:
        switch = "n/a" if self.active_to_switch_ms is None else f"{self.active_to_switch_ms:.0f}"
        return (
            f"upgrade {self.source} -> {self.target}: lost={self.lost} "
            f"refused_window_ms={self.refused_window_ms:.0f} active_to_switch_ms={switch} "
            f"total_s={self.total_s:.1f} events={self.events}"
        )


def install_crd(cluster: LocalCluster) -> None:
    """The ProjectorSet CRD applied with kubectl, and established."""
    kubectl = [str(toolchain.binary("kubectl")), f"--kubeconfig={cluster.kubeconfig}"]
    crd = REPO / "crds" / "projectorsets.yaml"
    subprocess.run([*kubectl, "apply", "-f", str(crd)], check=True, capture_output=True, timeout=120)
    established = ["wait", "--for=condition=Established", "crd/projectorsets.projectorset.io", "--timeout=60s"]
    subprocess.run([*kubectl, *established], check=True, capture_output=True, timeout=120)


class Scenario:
    """One namespace holding the sample application, its database, Service, and the operator."""

    def __init__(
        self,
        cluster: LocalCluster,
        api_client: client.ApiClient,
        postgres: PostgresServer,
        namespace: str,
        workdir: Path,
        name: str = "accounts",
        replay_event_overhead_ms: float | None = 0.0,
    ) -> None:
        self.cluster = cluster
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.postgres = postgres
        self.namespace = namespace
        self.workdir = workdir
        self.name = name
        # The sample app's per-event replay cost (testbed.manifests.sample_projectorset): none in
        # the tests, the calibrated default (None) in the demo and the benchmarks.
        self.replay_event_overhead_ms = replay_event_overhead_ms
        self.database_url = ""
        self.operator: OperatorProcess | None = None
        self.proxy: ServiceProxy | None = None
        self.load: LoadGenerator | None = None
        self.phases_seen: list[str] = []

    # -- set-up --

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KUBECONFIG=str(self.cluster.kubeconfig))
        return subprocess.run(
            [str(toolchain.binary("kubectl")), *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def prepare(self) -> Scenario:
        """Namespace, CRD, and the application's database (migrated for v1, not yet activated),
        Secret and Service."""
        install_crd(self.cluster)
        self.cluster.create_namespace(self.namespace)
        self.database_url = self.add_database(self.name)
        return self

    def add_database(self, name: str) -> str:
        """A database, Secret ``<name>-db`` and Service ``<name>`` for one application."""
        database_url = self.postgres.create_database()
        with psycopg.connect(database_url, autocommit=True) as conn:
            migrate(conn, Settings(database_url=database_url, release="v1"), get_release("v1"), activate=False)
        self.core.create_namespaced_secret(
            self.namespace,
            {"metadata": {"name": f"{name}-db"}, "stringData": {"uri": database_url}},
        )
        self.core.create_namespaced_service(
            self.namespace,
            {
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            },
        )
        return database_url

    def add_application(self, name: str, version: str = "v1") -> None:
        """Another ProjectorSet in the same namespace, with its own database."""
        self.add_database(name)
        manifest = sample_projectorset(
            version,
            name=name,
            namespace=self.namespace,
            secret=f"{name}-db",
            service=name,
            replay_event_overhead_ms=self.replay_event_overhead_ms,
        )
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def status_of(self, name: str) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(
            "projectorset.io", "v1alpha1", self.namespace, "projectorsets", name
        )
        return dict(found.get("status") or {})

    def start_operator(self, kubeconfig: Path | None = None) -> OperatorProcess:
        """The operator as a process; ``kubeconfig`` gives it an identity of its own."""
        self.operator = OperatorProcess(
            kubeconfig or self.cluster.kubeconfig, self.namespace, self.workdir / "operator.log"
        ).start()
        return self.operator

    def start_traffic(self, writers: int = 4) -> LoadGenerator:
        self.proxy = ServiceProxy(self.api_client, self.namespace, self.name).start()
        self.load = LoadGenerator(self.proxy.port, writers=writers).start()
        return self.load

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.operator is not None:
            self.operator.stop()

    # -- driving --

    def apply(self, version: str, **spec: Any) -> None:
        manifest = sample_projectorset(
            version,
            name=self.name,
            namespace=self.namespace,
            secret=f"{self.name}-db",
            service=self.name,
            spec=spec or None,
            replay_event_overhead_ms=self.replay_event_overhead_ms,
        )
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def patch_spec(self, **spec: Any) -> None:
        self.kubectl(
            "patch",
            "projectorset",
            self.name,
            "-n",
            self.namespace,
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": spec}),
        )

    def projectorset(self) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(
            "projectorset.io", "v1alpha1", self.namespace, "projectorsets", self.name
        )
        return dict(found)

    def status(self) -> dict[str, Any]:
        return dict(self.projectorset().get("status") or {})

    def wait_for(
        self,
        what: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 240,
        on_poll: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.projectorset()
            status = body.get("status") or {}
            phase = status.get("phase")
            if phase and (not self.phases_seen or self.phases_seen[-1] != phase):
                self.phases_seen.append(phase)
            if check(status) and status.get("observedGeneration") == body["metadata"]["generation"]:
                return status
            if on_poll is not None:
                on_poll()
            time.sleep(0.2)
        raise AssertionError(
            f"timed out waiting for {what}; status: {json.dumps(status, indent=1)}\n{self.tail_logs()}"
        )

    def wait_active(
        self, version: str, timeout: float = 240, on_poll: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        return self.wait_for(
            f"version {version} active",
            lambda s: s.get("phase") == "Active" and s.get("activeVersion") == version,
            timeout,
            on_poll,
        )

    def events(self) -> list[dict[str, Any]]:
        listed = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name},involvedObject.kind=ProjectorSet"
        )
        ordered = sorted(
            listed.items, key=lambda e: (e.first_timestamp or e.metadata.creation_timestamp, e.metadata.name)
        )
        return [{"type": e.type, "reason": e.reason, "message": e.message} for e in ordered]

    def deployment_replicas(self, version: str) -> int | None:
        """The replicas of the version's Deployment, found by its labels (its name may carry a hash)."""
        selector = f"projectorset.io/name={self.name},projectorset.io/version={version}"
        found = client.AppsV1Api(self.api_client).list_namespaced_deployment(self.namespace, label_selector=selector)
        return int(found.items[0].spec.replicas) if found.items else None

    def tail_logs(self, lines: int = 40) -> str:
        if self.operator is None or not self.operator.log.exists():
            return ""
        text = self.operator.log.read_text(errors="replace").splitlines()[-lines:]
        return "operator log:\n" + "\n".join(text)

    # -- the upgrade, measured --

    def upgrade(
        self, source: str, target: str, timeout: float = 300, on_poll: Callable[[], None] | None = None, **spec: Any
    ) -> UpgradeResult:
        """Apply ``target`` while the load generator writes; wait until it serves; measure."""
        assert self.load is not None
        watcher = MomentWatcher(self.database_url, self.core, self.namespace, self.name)
        watcher.watch(target, get_release(target).versions)
        # Stopped however the upgrade ends: a demo stopped by SIGTERM mid-upgrade stops PostgreSQL
        # next, and a watcher still polling it then ended the process with SIGABRT, not 143.
        try:
            began = time.monotonic()
            self.apply(target, **spec)
            self.wait_active(target, timeout, on_poll)
            total = time.monotonic() - began
            time.sleep(1.0)  # writes in flight at the switch finish on the new pods
        finally:
            watcher.stop()
        writes = [w for w in self.load.snapshot() if w.started >= began]
        return self.measure(source, target, writes, watcher, total)

    def measure(
        self,
        source: str,
        target: str,
        writes: list[Write],
        watcher: MomentWatcher,
        total: float,
        load: LoadGenerator | None = None,
    ) -> UpgradeResult:
        """``writes`` of ``load`` (the scenario's own by default) measured against ``watcher``'s moments."""
        refused = [w for w in writes if w.status != 201]
        window = (max(w.finished for w in refused) - min(w.started for w in refused)) * 1000 if refused else 0.0
        active_to_switch = None
        if watcher.active_at is not None and watcher.switched_at is not None:
            active_to_switch = max(0.0, watcher.switched_at - watcher.active_at) * 1000
        # Writes may be refused only between the activation commit and the switch (plus the time the
        # proxy takes to follow the EndpointSlices): one answered before the commit, or sent well
        # after the switch, would be a bug, not the window.
        outside = 0
        if watcher.switched_at is not None:
            outside += sum(1 for w in refused if w.started > watcher.switched_at + 5.0)
        if watcher.active_at is not None:
            # 0.1 s: the watcher sees the commit a few milliseconds after it happens.
            outside += sum(1 for w in refused if w.finished < watcher.active_at - 0.1)
        load = load or self.load
        assert load is not None
        lost = len(self.lost_writes(load.snapshot()))
        return UpgradeResult(
            source=source,
            target=target,
            lost=lost,
            acknowledged=sum(1 for w in writes if w.status == 201),
            refused=len(refused),
            refused_window_ms=window,
            active_to_switch_ms=active_to_switch,
            refused_outside_window=outside,
            total_s=total,
            events=self.event_count(),
            phases=list(self.phases_seen),
        )

    def event_count(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM sequent_schema.events").fetchone()
        return int(row[0]) if row else 0

    def lost_writes(self, writes: list[Write]) -> list[str]:
        """Acknowledged deposits missing from the event store or from the projection."""
        acked: dict[str, list[int]] = {}
        for write in writes:
            if write.status == 201:
                acked.setdefault(write.account, []).append(write.amount)
        problems: list[str] = []
        with psycopg.connect(self.database_url) as conn:
            stored = dict(
                conn.execute(
                    "SELECT event_json->>'account_id', count(*) FROM sequent_schema.events GROUP BY 1"
                ).fetchall()
            )
            projected = dict(conn.execute("SELECT account_id, balance FROM view_schema.account_balances").fetchall())
        for account, amounts in acked.items():
            if stored.get(account, 0) < len(amounts):
                problems.append(f"{account}: {len(amounts)} acknowledged, {stored.get(account, 0)} stored")
            if projected.get(account, 0) < sum(amounts):
                problems.append(f"{account}: balance {projected.get(account, 0)} < acknowledged {sum(amounts)}")
        return problems


@contextlib.contextmanager
def running_scenario(
    cluster: LocalCluster, api_client: client.ApiClient, postgres: PostgresServer, namespace: str, workdir: Path
) -> Iterator[Scenario]:
    scenario = Scenario(cluster, api_client, postgres, namespace, workdir)
    try:
        yield scenario
    finally:
        scenario.close()
