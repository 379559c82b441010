"""The ``Cluster`` the controller uses, over ``kubejson.KubeJson``.

Manifests are built as plain dicts (``resources.py``) and objects are read back as the API
server's JSON: the client sends and returns dicts as they are. The client's failures become the
domain's ``ClusterError`` in one place, ``cluster_error``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, assert_never

from urllib3.exceptions import HTTPError

from projectorset import api
from projectorset.adapters.events import EventAggregator, EventKey, Posted
from projectorset.adapters.kubejson import (
    JSON_PATCH,
    STRATEGIC_MERGE_PATCH,
    ApiException,
    KubeJson,
    is_status,
    resource_path,
)
from projectorset.api.conditions import Reason
from projectorset.domain.cluster import ClusterError, Owner, ServiceRefused
from projectorset.domain.observation import (
    ClusterAction,
    ClusterView,
    DeleteDeployment,
    DeleteJob,
    DeploymentView,
    EnsureDeployment,
    Event,
    JobView,
    RunStageJob,
    ScaleDeployment,
    SwitchService,
)
from projectorset.domain.ownership import OWNER_ANNOTATION, owner_key, service_claim
from projectorset.domain.resources import (
    TEMPLATE_HASH_ANNOTATION,
    FailedStagePod,
    build_deployment,
    build_stage_job,
    deployment_name,
    deployment_update,
    deployment_view,
    failed_stage_pods,
    job_view,
    recorded_spec,
    service_selector,
    template_hash,
)
from projectorset.domain.stage_output import cause_lines

log = logging.getLogger(__name__)
COMPONENT = "projectorset-operator"
# Three or four reads per pass: passes wait for the API server, not for these threads (32 were
# measured no faster with 200 sets starting at once, and each idle thread costs memory).
OBSERVE_THREADS = 8
# A database URI read from its Secret is used again for this long, unless the database refused
# it or could not be reached meanwhile (forget_database_uri): a starting set's passes follow each
# other within seconds, and one read of the Secret serves them all.
SECRET_CACHE_SECONDS = 60.0
# How much of a failed stage's log is read for its cause: rake's backtrace runs to a hundred lines.
STAGE_LOG_LINES = 1000


def _check_owned(found: dict[str, Any], owner: Owner, version: str, what: str) -> None:
    """Names are unique per (set, version) but for a 32-bit hash clash (``resources._version_stem``):
    taking another's object for ours would be silent and wrong, so it is refused with a clear message."""
    labels = (found.get("metadata") or {}).get("labels") or {}
    if labels.get(api.NAME_LABEL) != owner.name or labels.get(api.VERSION_LABEL) != version:
        raise ClusterError(
            f"{what} exists for ProjectorSet {labels.get(api.NAME_LABEL)!r} version "
            f"{labels.get(api.VERSION_LABEL)!r}: its name collides with version {version!r} of "
            f"{owner.name!r} (a clash of their 8-digit hashes); choose another version name",
            Reason.KUBERNETES_CONFLICT,
        )


def _version_selector(owner: Owner, version: str) -> str:
    return f"{api.NAME_LABEL}={owner.name},{api.VERSION_LABEL}={version}"


_REASONS = {
    403: Reason.KUBERNETES_FORBIDDEN,
    404: Reason.KUBERNETES_NOT_FOUND,
    409: Reason.KUBERNETES_CONFLICT,
    422: Reason.KUBERNETES_INVALID,
}


def cluster_error(error: ApiException | HTTPError, what: str) -> ClusterError:
    """The client's failure as the domain's: an answer by its status (the API server's message
    names the object, never a credential); no answer at all (a lost connection or a timeout after
    the client's retries, urllib3's errors, or a TLS failure, status 0) as an API error."""
    if isinstance(error, ApiException) and error.status:
        message = getattr(error, "message", None) or error.reason
        return ClusterError(
            f"{_named(what)}{error.status} {message}", _REASONS.get(error.status, Reason.KUBERNETES_API_ERROR)
        )
    return ClusterError(
        f"{_named(what)}no answer from the API server ({type(error).__name__})", Reason.KUBERNETES_API_ERROR
    )


def _named(what: str) -> str:
    return f"{what}: " if what else ""


@contextlib.contextmanager
def _reported_as(what: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Raise the client's failures in the block as ``cluster_error``s; ``missing_ok``: a 404 ends
    the block quietly (the object or its namespace is gone)."""
    try:
        yield
    except (ApiException, HTTPError) as error:
        if missing_ok and is_status(error, 404):
            return
        raise cluster_error(error, what) from None


def _deployments(namespace: str, name: str | None = None) -> str:
    return resource_path("apps/v1", "deployments", namespace, name)


def _jobs(namespace: str, name: str | None = None) -> str:
    return resource_path("batch/v1", "jobs", namespace, name)


def _services(namespace: str, name: str) -> str:
    return resource_path("v1", "services", namespace, name)


def _projectorset(namespace: str, name: str, sub: str | None = None) -> str:
    return resource_path(f"{api.GROUP}/{api.VERSION}", api.PLURAL, namespace, name, sub)


@dataclass(frozen=True)
class _ServiceSeen:
    """What a claim check needs of a Service, as the pass's observation read it."""

    name: str
    resource_version: str
    annotations: dict[str, str]
    selector: dict[str, str]

    @classmethod
    def of(cls, service: dict[str, Any]) -> _ServiceSeen:
        metadata = service.get("metadata") or {}
        selector = (service.get("spec") or {}).get("selector") or {}
        return cls(
            metadata.get("name") or "",
            metadata.get("resourceVersion") or "",
            dict(metadata.get("annotations") or {}),
            dict(selector),
        )


@dataclass(frozen=True)
class _DeploymentFound:
    """What acting on a version's Deployment needs of it."""

    name: str
    uid: str
    replicas: int | None
    annotations: dict[str, str]

    @property
    def template_hash(self) -> str | None:
        return self.annotations.get(TEMPLATE_HASH_ANNOTATION)

    @classmethod
    def of(cls, deployment: dict[str, Any]) -> _DeploymentFound:
        metadata = deployment.get("metadata") or {}
        replicas = (deployment.get("spec") or {}).get("replicas")
        return cls(
            metadata.get("name") or "", metadata.get("uid") or "", replicas, dict(metadata.get("annotations") or {})
        )


class KubernetesCluster:
    def __init__(self, kube: KubeJson) -> None:
        self.kube = kube
        self.events = EventAggregator()
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._reads = ThreadPoolExecutor(max_workers=OBSERVE_THREADS, thread_name_prefix="observe")
        # (namespace, Secret, key) -> (database URI, when it was read): see _database_uri.
        self._uris: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._uris_lock = threading.Lock()
        # Failed stage Job uid -> the end of its output (a few hundred bytes each).
        self._failure_output: dict[str, str] = {}
        self._services_seen: dict[tuple[str, str], _ServiceSeen] = {}

    # -- reading --

    def read_projectorset(self, namespace: str, name: str) -> dict[str, Any] | None:
        with _reported_as(f"reading ProjectorSet {name}", missing_ok=True):
            return self.kube.get(_projectorset(namespace, name))
        return None

    def observe(self, owner: Owner, spec: api.ProjectorSetSpec) -> tuple[ClusterView, str | None]:
        selector = f"{api.NAME_LABEL}={owner.name}"
        # The four reads are independent: in parallel, a pass (and so the traffic switch that
        # follows an activation) waits for the slowest, not for their sum.
        deployments_call = self._reads.submit(self.kube.list_items, _deployments(owner.namespace), selector)
        jobs_call = self._reads.submit(self.kube.list_items, _jobs(owner.namespace), selector)
        service_call = self._reads.submit(self._service, owner, spec)
        secret_call = self._reads.submit(self._database_uri, owner, spec)
        with _reported_as("reading Deployments, Jobs, the Service and the Secret"):
            deployments = deployments_call.result()
            jobs = jobs_call.result()
            service_found, service_version = service_call.result()
            uri, secret_problem = secret_call.result()
        views: dict[str, DeploymentView] = {}
        for item in deployments:
            view = deployment_view(item)
            if view.version:
                views[view.version] = view
        pod_messages = self._failed_stage_output(owner, jobs)
        # Jobs being deleted stay in view until their pods are gone (foreground deletion): a stage
        # that still runs must not overlap with the abort that follows it.
        job_views: list[JobView] = [job_view(job, pod_messages) for job in jobs]
        return (
            ClusterView(
                service_found=service_found,
                service_version=service_version,
                secret_problem=secret_problem,
                deployments=views,
                jobs=tuple(job_views),
            ),
            uri,
        )

    def _failed_stage_output(self, owner: Owner, jobs: list[dict[str, Any]]) -> dict[str, str]:
        """The end of each failed stage's output. A failed Job never changes, so its pods are
        listed once (when some Job failed since the last look), not in every pass."""
        failed = {
            job["metadata"]["name"]: job["metadata"].get("uid") or job["metadata"]["name"]
            for job in jobs
            if any(
                c.get("type") == "Failed" and c.get("status") == "True"
                for c in (job.get("status") or {}).get("conditions") or []
            )
        }
        if any(uid not in self._failure_output for uid in failed.values()):
            try:
                pods = self.kube.list_items(
                    resource_path("v1", "pods", owner.namespace), f"{api.NAME_LABEL}={owner.name},{api.STAGE_LABEL}"
                )
            except (ApiException, HTTPError) as error:
                log.warning("%s/%s: cannot read the failed stage pods: %s", owner.namespace, owner.name, error)
                return {}
            found = failed_stage_pods(pods)
            for name, uid in failed.items():
                if uid not in self._failure_output:
                    failed_pod = found.get(name)
                    output = self._stage_log(owner, failed_pod) if failed_pod else ""
                    # Only the lines that name the cause are kept, not a log per failed Job.
                    self._failure_output[uid] = "\n".join(cause_lines(output))
        return {name: self._failure_output[uid] for name, uid in failed.items()}

    def _stage_log(self, owner: Owner, failed: FailedStagePod) -> str:
        """The end of a failed stage's log, where the cause often sits above a backtrace longer
        than the termination message keeps (the kubelet's last 80 lines or 2 KiB); the
        termination message when the log cannot be read (the pod gone, no pods/log permission)."""
        try:
            return self.kube.text(
                resource_path("v1", "pods", owner.namespace, failed.pod, sub="log"),
                container=failed.container,
                tailLines=STAGE_LOG_LINES,
            )
        except (ApiException, HTTPError) as error:
            log.info("%s/%s: cannot read the log of %s: %s", owner.namespace, owner.name, failed.pod, error)
            return failed.message

    def _service(self, owner: Owner, spec: api.ProjectorSetSpec) -> tuple[bool, str | None]:
        try:
            service = _ServiceSeen.of(self.kube.get(_services(owner.namespace, spec.service.name)))
        except ApiException as error:
            if error.status == 404:
                return False, None
            raise
        selector = service.selector
        # Kept for the switch that may follow in this pass: it claims the Service only if this is
        # still the Service it checked (resourceVersion), without reading it again.
        self._services_seen[(owner.namespace, owner.name)] = service
        if selector.get(api.NAME_LABEL) != owner.name:
            return True, None
        return True, selector.get(api.VERSION_LABEL)

    def _database_uri(self, owner: Owner, spec: api.ProjectorSetSpec) -> tuple[str | None, str | None]:
        ref = spec.database.secret_ref
        key = (owner.namespace, ref.name, ref.key)
        with self._uris_lock:
            cached = self._uris.get(key)
        if cached is not None and time.monotonic() - cached[1] < SECRET_CACHE_SECONDS:
            return cached[0], None
        uri, problem = self._read_database_uri(owner, spec)
        with self._uris_lock:
            if uri is None:
                self._uris.pop(key, None)
            else:
                self._uris[key] = (uri, time.monotonic())
        return uri, problem

    def forget_database_uri(self, owner: Owner, spec: api.ProjectorSetSpec) -> None:
        ref = spec.database.secret_ref
        with self._uris_lock:
            self._uris.pop((owner.namespace, ref.name, ref.key), None)

    def _read_database_uri(self, owner: Owner, spec: api.ProjectorSetSpec) -> tuple[str | None, str | None]:
        ref = spec.database.secret_ref
        try:
            secret = self.kube.get(resource_path("v1", "secrets", owner.namespace, ref.name))
        except ApiException as error:
            if error.status == 404:
                return None, f"Secret {ref.name} not found"
            if error.status == 403:
                return None, f"the operator may not read Secret {ref.name} (RBAC)"
            raise
        encoded = (secret.get("data") or {}).get(ref.key)
        if not encoded:
            return None, f"Secret {ref.name} has no key {ref.key}"
        try:
            return base64.b64decode(encoded).decode().strip(), None
        except (ValueError, UnicodeDecodeError):
            return None, f"Secret {ref.name} key {ref.key} is not a UTF-8 database URI"

    # -- acting --

    def apply(self, owner: Owner, spec: api.ProjectorSetSpec, action: ClusterAction) -> None:
        with _reported_as(""):  # the reconciler's message names the action
            self._apply(owner, spec, action)

    def _apply(self, owner: Owner, spec: api.ProjectorSetSpec, action: ClusterAction) -> None:
        match action:
            case EnsureDeployment(version=version, replicas=replicas):
                current = self._deployment(owner, version)
                if current is None:
                    if version != spec.version:
                        raise ClusterError(
                            f"Deployment {deployment_name(owner, version)} is gone", Reason.KUBERNETES_NOT_FOUND
                        )
                    self._create(_deployments(owner.namespace), build_deployment(owner, spec, version))
                    return
                if version == spec.version and current.template_hash not in (None, template_hash(spec.template)):
                    # The spec's template changed (a fixed retry, an edit): the release is the new template.
                    self.kube.patch(
                        _deployments(owner.namespace, current.name),
                        deployment_update(owner, spec, version),
                        JSON_PATCH,
                    )
                elif current.replicas != replicas:
                    self._scale(owner, current, replicas)
            case ScaleDeployment(version=version, replicas=replicas):
                current = self._deployment(owner, version)
                if current is None:
                    raise ClusterError(
                        f"Deployment {deployment_name(owner, version)} not found", Reason.KUBERNETES_NOT_FOUND
                    )
                self._scale(owner, current, replicas)
            case DeleteDeployment(version=version):
                gone = self._deployment(owner, version)
                if gone is not None:
                    # Only the Deployment checked above, should its name be taken again meanwhile.
                    self._delete(_deployments(owner.namespace, gone.name), "Background", uid=gone.uid)
            case RunStageJob(version=version, attempt=attempt, stage=stage, round=round_, projectors=projectors):
                code = spec
                if version != spec.version:
                    # A superseded rollout's Job runs that version's recorded code, not spec.version's.
                    recorded = self._deployment(owner, version)
                    if recorded is not None:
                        code = recorded_spec(spec, recorded.annotations)
                job = build_stage_job(owner, code, version, attempt, stage, round_, list(projectors))
                try:
                    self.kube.create(_jobs(owner.namespace), job)
                except ApiException as error:
                    if error.status != 409:
                        raise
                    # Already there: created by an earlier pass, unless the name is another's.
                    existing = self.kube.get(_jobs(owner.namespace, job["metadata"]["name"]))
                    _check_owned(existing, owner, version, f"Job {job['metadata']['name']}")
            case DeleteJob(name=name):
                self._delete(_jobs(owner.namespace, name), "Foreground")
            case SwitchService(version=version, first_install=first_install):
                self._switch_service(owner, spec.service.name, version, first_install)
            case _:
                assert_never(action)

    def _switch_service(self, owner: Owner, name: str, version: str, first_install: bool) -> None:
        """Point the Service at ``version``'s pods and claim it, unless another set owns it."""
        seen = self._services_seen.get((owner.namespace, owner.name))
        for attempt in range(3):
            if seen is None or seen.name != name or attempt:
                seen = _ServiceSeen.of(self.kube.get(_services(owner.namespace, name)))
            refusal = service_claim(
                owner.namespace, owner.name, name, seen.annotations, seen.selector, first_install=first_install
            )
            if refusal is not None and not (refusal.other and self._is_gone(refusal.other)):
                reason = Reason.SERVICE_OWNED_BY_OTHER if refusal.other else Reason.SERVICE_NOT_CLAIMED
                raise ServiceRefused(refusal.message, reason)
            patch: list[dict[str, Any]] = [
                # Only the Service checked above: another set that claimed it meanwhile wins.
                {"op": "test", "path": "/metadata/resourceVersion", "value": seen.resource_version},
                # Replace the whole selector: a merge would keep keys that select the old pods.
                {"op": "add", "path": "/spec/selector", "value": service_selector(owner, version)},
                {
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {**seen.annotations, OWNER_ANNOTATION: owner_key(owner.namespace, owner.name)},
                },
            ]
            try:
                self.kube.patch(_services(owner.namespace, name), patch, JSON_PATCH)
                return
            except ApiException as error:
                if error.status not in (409, 422) or attempt == 2:
                    raise
                log.info("%s/%s: Service %s changed meanwhile; checking it again", owner.namespace, owner.name, name)

    def _is_gone(self, other: str) -> bool:
        """Whether the set that owns a Service was deleted (its claim then lapses)."""
        namespace, _, name = other.partition("/")
        return self.read_projectorset(namespace, name) is None

    def _scale(self, owner: Owner, deployment: _DeploymentFound, replicas: int) -> None:
        self.kube.patch(
            _deployments(owner.namespace, deployment.name), {"spec": {"replicas": replicas}}, STRATEGIC_MERGE_PATCH
        )

    def _deployment(self, owner: Owner, version: str) -> _DeploymentFound | None:
        """The version's Deployment, None when it has none. By its name (refused if that name is
        another's, see ``_check_owned``); else by its labels, which say set and version exactly:
        operators before this naming rule named it ``<set>-<version>`` lowered, with ``_`` and
        ``.`` as ``-``, and a set that ran then keeps that Deployment until the version is
        retired (never a second one beside it: two Deployments would share one pod selector)."""
        name = deployment_name(owner, version)
        try:
            found = self.kube.get(_deployments(owner.namespace, name))
        except ApiException as error:
            if error.status != 404:
                raise
            listed = self.kube.list_items(_deployments(owner.namespace), _version_selector(owner, version))
            return min((_DeploymentFound.of(item) for item in listed), key=lambda d: d.name, default=None)
        _check_owned(found, owner, version, f"Deployment {name}")
        return _DeploymentFound.of(found)

    def _create(self, path: str, body: dict[str, Any]) -> None:
        try:
            self.kube.create(path, body)
        except ApiException as error:
            if error.status != 409:  # already there: an earlier pass or another operator created it
                raise

    def _delete(self, path: str, propagation_policy: str, uid: str | None = None) -> None:
        try:
            self.kube.delete(path, propagation_policy=propagation_policy, uid=uid)
        except ApiException as error:
            if error.status != 404:
                raise

    def patch_status(self, owner: Owner, status: dict[str, Any]) -> None:
        with _reported_as("writing status", missing_ok=True):  # 404: deleted meanwhile
            self.kube.patch(_projectorset(owner.namespace, owner.name, "status"), {"status": status})

    def emit(self, owner: Owner, event: Event) -> None:
        """A core/v1 Event as kubectl describe shows it, aggregated as client-go's EventRecorder
        does (``events.py``): a repeat counts on the Event it repeats, and a new Warning waits
        for its set's last to be a minute old (dropped meanwhile, as client-go's spam filter)."""
        message = event.message[:1024]
        key: EventKey = (owner.namespace, owner.name, owner.uid, event.type, str(event.reason), message)
        now = api.rfc3339(datetime.now(UTC))
        events = resource_path("v1", "events", owner.namespace)
        # 404: the namespace is being deleted.
        with _reported_as("writing an Event", missing_ok=True):
            posted = self.events.posted(key)
            if posted is not None:
                try:
                    self.kube.patch(f"{events}/{posted.name}", {"count": posted.count + 1, "lastTimestamp": now})
                    self.events.remember(key, Posted(posted.name, posted.count + 1))
                    return
                except ApiException as error:
                    if error.status != 404:
                        raise
                    self.events.forget(key)  # expired (the API server keeps Events an hour)
            if not self.events.may_create(key):
                log.debug("%s/%s: Warning %s not posted: another came less than a minute ago", *key[:2], event.reason)
                return
            created = self.kube.create(events, self._event_body(owner, event, message, now))
            self.events.remember(key, Posted(created["metadata"]["name"], 1))

    def _event_body(self, owner: Owner, event: Event, message: str, now: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": f"{api.GROUP}/{api.VERSION}",
                "kind": api.KIND,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "reason": event.reason,
            "message": message,
            "type": event.type,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
