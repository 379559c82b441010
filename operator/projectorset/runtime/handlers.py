"""Kopf handlers: thin wiring from watch events to ``controller.Reconciler``.

One daemon per ProjectorSet runs the reconcile passes one at a time. It sleeps until a
watch event about the ProjectorSet or one of its Deployments or Jobs wakes it, or until
the time the last pass asked for (a short interval only while a rollout runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client import Configuration
from kubernetes.client.rest import should_bypass_proxies

from projectorset import api
from projectorset.adapters.kube import KubernetesCluster
from projectorset.adapters.kubejson import ConfigException, KubeJson
from projectorset.api.conditions import ReportedError
from projectorset.controller.reconciler import DatabaseRegistry, PassRunner, Reconciler
from projectorset.domain.backoff import Backoff
from projectorset.domain.cluster import ClusterError, Owner
from projectorset.domain.observation import DeploymentView, JobView
from projectorset.domain.resources import MANAGED_BY, deployment_view, job_view
from projectorset.runtime import memory
from projectorset.runtime.logfields import about_set
from projectorset.runtime.metrics import metrics

log = logging.getLogger(__name__)

# Watch events wake a ProjectorSet when it, its Deployments or its Jobs change. As a safety net
# (a Service or the database changed by hand), every set is re-read once an hour anyway, all in
# one five-minute window that opens an hour after the operator started (its first passes read
# every set then), each at its own offset: the rest of the hour, sets at rest make no API request
# and hold no database connection.
IDLE_RESYNC_SECONDS = 3600.0
RESYNC_WINDOW_SECONDS = 300.0
# While golive runs, projector_states is read this often so traffic moves right after its commit.
ACTIVATION_POLL_SECONDS = 0.02
# A pass that raised is retried after a wait drawn with full jitter below 2, 4, 8, ... 60 s: sets that
# failed together in an outage come back spread over the window, not all at once.
PASS_RETRY_BACKOFF = Backoff(base=1.0, cap=60.0)
# At exit, passes still running in their threads may end (bounded) before the pools are closed:
# a pool closed under a pass would make it report a database outage that never was.
PASS_DRAIN_SECONDS = 10.0
TRIM_CHECK_SECONDS = 30.0
# The label every Deployment and Job the operator creates carries (resources.version_labels).
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


class _Runtime:
    """State shared by the handlers of one operator process."""

    def __init__(self) -> None:
        self.reconciler: Reconciler | None = None
        # One client, one login for Kopf's watches and the passes' requests (made on first use).
        self.kube: KubeJson | None = None
        self.cluster: KubernetesCluster | None = None
        self.databases = DatabaseRegistry()
        self.pass_runner = PassRunner()
        self.wakeups: dict[tuple[str, str], asyncio.Event] = {}
        self.generations: dict[tuple[str, str], int] = {}
        # By uid: the last view of each Deployment and Job that woke a pass.
        self.deployment_views: dict[str, DeploymentView] = {}
        self.job_views: dict[str, JobView] = {}
        self.passes = 0  # passes finished, and running now: when they stop, memory is trimmed
        self.running = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.trimming: asyncio.Task[None] | None = None
        self.started = time.time()  # the hourly resync window is counted from here
        self.jitter = random.Random()  # draws the retry back-offs; tests seed it

    def wake_from_thread(self, namespace: str, name: str) -> None:
        """``wake`` from a pass's thread (asyncio's Events belong to the loop's thread)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake, namespace, name)

    def wake(self, namespace: str | None, name: str | None) -> None:
        if namespace and name:
            event = self.wakeups.get((namespace, name))
            if event is not None:
                event.set()


runtime = _Runtime()


USER_AGENT = "projectorset-operator"


def _kube() -> KubeJson:
    if runtime.kube is None:
        runtime.kube = KubeJson.connect(user_agent=USER_AGENT)
    return runtime.kube


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf asks at start and after the API server refused its credentials: log in anew, and the
    passes use the same login from then on. Not ``kopf.login_via_client``: that one prefers the
    pod's ServiceAccount to an explicit KUBECONFIG and drops the kubeconfig's ``proxy-url``, so
    Kopf's watches could run as another identity, or around the proxy, than the passes."""
    try:
        if runtime.kube is None:
            _kube()
        else:
            runtime.kube.renew()
    except (ConfigException, OSError) as error:
        raise kopf.LoginError(f"cannot log in to the Kubernetes API: {error}") from None
    assert runtime.kube is not None
    return connection_info(runtime.kube.configuration)


def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
    """The client's login as Kopf's: the same server, TLS files, credential and proxy."""
    header = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    scheme, _, token = header.rpartition(" ")
    proxy = configuration.proxy
    if proxy and should_bypass_proxies(configuration.host, configuration.no_proxy or ""):
        proxy = None
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        proxy_url=proxy,
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own Events describe the rollout; Kopf's per-handler log Events would only add noise.
    settings.posting.enabled = False
    settings.persistence.finalizer = f"{api.GROUP}/daemon"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.execution.max_workers = 20
    settings.watching.server_timeout = 300
    # Only the operator's own Deployments and Jobs, filtered by the API server: the cluster's
    # other Deployments and Jobs never reach this process.
    for resource in (("apps", "deployments"), ("batch", "jobs")):
        settings.watching.label_selectors[resource] = f"{MANAGED_BY_LABEL}={MANAGED_BY},{api.NAME_LABEL}"
    settings.watching.client_timeout = 330
    runtime.cluster = KubernetesCluster(_kube())
    runtime.reconciler = Reconciler(
        metrics.timed(runtime.cluster), runtime.databases, observer=metrics.observe, wake=runtime.wake_from_thread
    )


@kopf.on.startup()
async def start_memory_trim(**_: Any) -> None:
    runtime.loop = asyncio.get_running_loop()  # for wakes from passes' threads
    runtime.trimming = runtime.loop.create_task(_trim_after_bursts())


async def _trim_after_bursts() -> None:
    """After passes ran, once none runs any more, give freed memory back (``memory.trim``)."""
    trimmed_at = 0
    while True:
        await asyncio.sleep(TRIM_CHECK_SECONDS)
        if runtime.passes != trimmed_at and runtime.running == 0:
            trimmed_at = runtime.passes
            await asyncio.to_thread(memory.trim)


@kopf.on.cleanup()
async def close_connections(**_: Any) -> None:
    """At exit, after Kopf stopped every set's loop: no queued pass starts, the running ones may end,
    then every database pool is closed, so PostgreSQL sees its clients leave."""
    # Left running, the trim loop is a task Kopf waits 5 s for before it cancels it and exits.
    if runtime.trimming is not None:
        runtime.trimming.cancel()
    try:
        await asyncio.wait_for(asyncio.to_thread(runtime.pass_runner.shutdown, wait=True), PASS_DRAIN_SECONDS)
    except TimeoutError:
        log.warning("passes still running after %.0f s; closing the database pools under them", PASS_DRAIN_SECONDS)
    closed = await asyncio.to_thread(runtime.databases.close)
    log.info("closed %d open database connection pool(s)", closed)
    if runtime.kube is not None:
        runtime.kube.close()  # the API server's connections


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=10.0)
async def run_rollouts(
    name: str, namespace: str | None, uid: str | None, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    assert runtime.reconciler is not None and runtime.cluster is not None
    assert namespace is not None  # ProjectorSets are namespaced
    with about_set(namespace, name, uid):
        await _run_rollouts(namespace, name, stopped)


async def _run_rollouts(namespace: str, name: str, stopped: kopf.DaemonStopped) -> None:
    key = (namespace, name)
    wakeup = runtime.wakeups.setdefault(key, asyncio.Event())
    failures = 0
    deleted = False
    try:
        while not stopped:
            wakeup.clear()
            try:
                outcome = await _pass(namespace, name)
                if outcome is None:
                    deleted = True
                    return
                failures = 0
                delay, await_activation = outcome
                if await_activation:
                    await _watch_activation(namespace, name, wakeup, delay)
                    continue
            except Exception as error:
                # Never a crash loop: come back later, with the state as it was.
                failures += 1
                delay = PASS_RETRY_BACKOFF.delay(failures, runtime.jitter)
                if isinstance(error, ClusterError):
                    log.warning("%s/%s: %s; retrying in %.1f s", namespace, name, error.message, delay)
                else:
                    log.exception("%s/%s: reconcile failed; retrying in %.1f s", namespace, name, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=delay)
    finally:
        runtime.wakeups.pop(key, None)
        runtime.generations.pop(key, None)
        metrics.forget(Owner(name, namespace, ""))
        # Only a deleted ProjectorSet gives its pool up: when the operator stops, a pass may still
        # be running in its thread, and a closed pool would make it report a false outage. Kopf
        # usually stops the loop of a set being deleted before a pass sees the deletion.
        reason = stopped.reason
        if deleted or (reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason):
            runtime.databases.forget(Owner(name, namespace, ""))
            if runtime.reconciler is not None:
                runtime.reconciler.forget_set(namespace, name)


async def _pass(namespace: str, name: str) -> tuple[float, bool] | None:
    """One reconcile pass: the seconds until the next one and whether to watch for golive, or None
    when the set is gone. Only these leave the pass: its body, spec and decision (~30 KiB) must not
    stay referenced by the set's loop while it sleeps, a thousand sets would keep 30 MiB."""
    assert runtime.reconciler is not None and runtime.cluster is not None
    started = time.monotonic()
    try:
        body = await runtime.pass_runner.run(runtime.cluster.read_projectorset, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        runtime.generations[(namespace, name)] = int(body["metadata"].get("generation", 0))
        runtime.running += 1
        try:
            result = await runtime.pass_runner.run(runtime.reconciler.reconcile, body)
        finally:
            runtime.running -= 1
            runtime.passes += 1
    except Exception as error:
        metrics.reconciled(time.monotonic() - started, error_reason(error))
        raise
    metrics.reconciled(time.monotonic() - started, result.error_reason)
    delay = result.requeue_after or next_resync_delay(namespace, name, runtime.started, time.time())
    return delay, result.await_activation


def error_reason(error: Exception) -> str:
    """The reason a pass that raised is counted under: the reported reason, or the exception's class."""
    return str(error.reason) if isinstance(error, ReportedError) else type(error).__name__


def next_resync_delay(namespace: str, name: str, started: float, now: float) -> float:
    """Seconds until this set's slot in the next resync window: ``started`` plus whole hours (at
    least one) plus the set's offset. Not the wall clock's hour: an operator at rest for its first
    hour never resyncs, wherever in the hour it started."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    offset = int.from_bytes(digest[:4], "big") / 2**32 * RESYNC_WINDOW_SECONDS
    hours = max(1, math.floor((now - started - offset) / IDLE_RESYNC_SECONDS) + 1)
    return started + hours * IDLE_RESYNC_SECONDS + offset - now


async def _watch_activation(namespace: str, name: str, wakeup: asyncio.Event, timeout: float) -> None:
    """Return as soon as the database shows the release active, a watch event arrives, or time is up."""
    assert runtime.reconciler is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while not wakeup.is_set() and asyncio.get_running_loop().time() < deadline:
        if await runtime.pass_runner.run(runtime.reconciler.activation_seen, namespace, name):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=ACTIVATION_POLL_SECONDS)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def projectorset_changed(name: str, namespace: str | None, body: kopf.Body, type: str | None, **_: Any) -> None:
    # Every set the operator watches, for the sets that share an event store (ownership.ProjectorIndex).
    if runtime.reconciler is not None and namespace:
        if type == "DELETED":
            runtime.reconciler.forget_set(namespace, name)
        else:
            runtime.reconciler.observe_set(dict(body))
    # Our own status patches also arrive here; only a spec change (a new generation) needs a pass.
    generation = int(body.metadata.get("generation", 0))
    if namespace and runtime.generations.get((namespace, name)) != generation:
        runtime.wake(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={api.NAME_LABEL: kopf.PRESENT})
async def deployment_changed(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, uid: str | None, type: str | None, **_: Any
) -> None:
    # A Deployment changes a few times while its pods start.
    if _seen_differently(runtime.deployment_views, uid, type, lambda: deployment_view(dict(body))):
        runtime.wake(namespace, labels.get(api.NAME_LABEL))


@kopf.on.event("batch", "v1", "jobs", labels={api.NAME_LABEL: kopf.PRESENT})
async def job_changed(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, uid: str | None, type: str | None, **_: Any
) -> None:
    # The Job controller writes a Job's status several times per pod (started, ready, finished).
    if _seen_differently(runtime.job_views, uid, type, lambda: job_view(dict(body))):
        runtime.wake(namespace, labels.get(api.NAME_LABEL))


def _seen_differently(views: dict[str, Any], uid: str | None, type: str | None, view_of: Callable[[], Any]) -> bool:
    """Whether what the rollout sees of an object (its view) changed with this watch event:
    only then does its set need a pass. Remembers the view by uid until the object is deleted."""
    if not uid:
        return True
    if type == "DELETED":
        views.pop(uid, None)
        return True
    view = view_of()
    if views.get(uid) == view:
        return False
    views[uid] = view
    return True


@kopf.on.probe(id="projectorsets")
def count_projectorsets(**_: Any) -> int:
    return len(runtime.wakeups)
