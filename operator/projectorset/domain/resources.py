"""The Kubernetes objects the operator owns, as plain manifests, and how it reads them back.

Pure functions over dicts: the adapter in ``kube.py`` sends them with the official client.
Names are deterministic, so creating an object that already exists is how every step
stays idempotent across restarts; and no two (set, version) pairs share one (``_version_stem``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from projectorset import api
from projectorset.domain.cluster import Owner
from projectorset.domain.observation import DeploymentView, JobState, JobView
from projectorset.domain.sequent import STAGES, Stage
from projectorset.domain.stage_output import cause

ATTEMPT_LABEL = f"{api.GROUP}/attempt"
ROUND_LABEL = f"{api.GROUP}/round"
TEMPLATE_HASH_ANNOTATION = f"{api.GROUP}/template-hash"
# The release a Deployment runs (version, projector versions, replicas and the spec's own template, as
# JSON): what the database must show active for this version to serve, and what a rollback re-applies.
RELEASE_ANNOTATION = f"{api.GROUP}/release"
MANAGED_BY = "projectorset-operator"
# How long the Deployment controller may take before it reports the new version as failed.
PROGRESS_DEADLINE_SECONDS = 600


# Object names are DNS-1123 labels: Job names become the pods' ``job-name`` label (63 at most).
NAME_LIMIT = 63
_PLAIN = re.compile(r"[a-z0-9]+")
_DIGEST_LENGTH = 8


def _sanitized(part: str) -> str:
    """``part`` lowered, every run of other characters than [a-z0-9] one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-")


def _version_stem(set_name: str, version: str, limit: int) -> str:
    """A DNS-1123 label of at most ``limit`` characters that only this (set, version) pair gets.

    Plain ``<set>-<version>`` when both are lower-case letters and digits only: the name then has
    exactly one ``-`` and splits back into the pair. Otherwise ``<set>-<version>-<digest>``, each
    part sanitized and shortened (never empty: set names and versions begin with a letter or a
    digit), ending in 8 hex digits of sha256 over ``<set>/<version>``: ``/`` is in neither a set
    name (a DNS subdomain) nor a version (a label value), so that string tells the exact pair.
    Such a name has at least two ``-``, so it is never a plain one; two of them are equal only
    when sha256 of two different pairs agrees on 32 bits, which the adapter still refuses
    (``kube._check_owned``) rather than take another's object for its own."""
    if _PLAIN.fullmatch(set_name) and _PLAIN.fullmatch(version) and len(set_name) + 1 + len(version) <= limit:
        return f"{set_name}-{version}"
    digest = hashlib.sha256(f"{set_name}/{version}".encode()).hexdigest()[:_DIGEST_LENGTH]
    room = limit - len(digest) - 2  # for the two parts, between their three hyphens
    if room < 2:
        raise ValueError(f"no room for a name of {set_name!r} version {version!r} in {limit} characters")
    set_part, version_part = _sanitized(set_name), _sanitized(version)
    set_part = set_part[: room - min(len(version_part), room // 2)].rstrip("-")
    version_part = version_part[: room - len(set_part)].rstrip("-")
    return f"{set_part}-{version_part}-{digest}"


def deployment_name(owner: Owner, version: str) -> str:
    """``blog-v2``, or ``blog-v2-1-1cb9feb5`` for version ``v2.1``: see ``_version_stem``."""
    return _version_stem(owner.name, version, NAME_LIMIT)


def job_name(owner: Owner, version: str, attempt: int, stage: str, round_: int = 0) -> str:
    """``<stem>-a<attempt>-<stage>[-<round>]``, the stem as a Deployment's with room for the rest.

    Read from the end, the name gives back attempt, stage and round (a stage is letters, a round
    digits, round 0 is left out), hence the room the stem had; and the stem gives the pair back."""
    suffix = f"-a{attempt}-{stage}" + (f"-{round_}" if round_ else "")
    return _version_stem(owner.name, version, NAME_LIMIT - len(suffix)) + suffix


def version_labels(owner: Owner, version: str) -> dict[str, str]:
    return {
        api.NAME_LABEL: owner.name,
        api.VERSION_LABEL: version,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def _owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def release_annotation(spec: api.ProjectorSetSpec, version: str) -> str:
    release = {
        "version": version,
        "projectors": dict(sorted(spec.projector_versions.items())),
        "replicas": spec.replicas,
        "template": spec.template,
    }
    if spec.required_versions:
        # Another set's projectors this code needs active (never this set's to deactivate).
        release["requiredProjectors"] = dict(sorted(spec.required_versions.items()))
    return json.dumps(release, sort_keys=True, separators=(",", ":"))


def _release_projectors(annotations: dict[str, str], key: str = "projectors") -> dict[str, int] | None:
    """The projector versions recorded on a Deployment; None when absent or unreadable (never guessed)."""
    try:
        projectors = json.loads(annotations[RELEASE_ANNOTATION])[key]
        return {str(name): int(version) for name, version in projectors.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def recorded_spec(spec: api.ProjectorSetSpec, annotations: dict[str, str]) -> api.ProjectorSetSpec:
    """``spec`` with the template a Deployment's release annotation records: a stage Job for an
    earlier version (aborting the replay a superseded rollout left) must run that version's code,
    which knows its projectors. Unchanged when the annotation is absent or unreadable."""
    try:
        template = json.loads(annotations[RELEASE_ANNOTATION])["template"]
        return spec.model_copy(update={"template": dict(template)})
    except (KeyError, TypeError, ValueError, AttributeError):
        return spec


def _pod_template(owner: Owner, spec: api.ProjectorSetSpec, version: str) -> dict[str, Any]:
    template = copy.deepcopy(spec.template)
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **version_labels(owner, version)}
    return template


def build_deployment(owner: Owner, spec: api.ProjectorSetSpec, version: str) -> dict[str, Any]:
    labels = version_labels(owner, version)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(owner, version),
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": {
                TEMPLATE_HASH_ANNOTATION: template_hash(spec.template),
                RELEASE_ANNOTATION: release_annotation(spec, version),
            },
            "ownerReferences": [_owner_reference(owner)],
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {api.NAME_LABEL: owner.name, api.VERSION_LABEL: version}},
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "template": _pod_template(owner, spec, version),
        },
    }


def stale_template(deployment: DeploymentView | None, spec: api.ProjectorSetSpec) -> bool:
    """The version's Deployment runs another pod template than the spec's (a retry that fixed
    the template, or a template edit of the serving version). A Deployment without the hash
    (made before it was recorded) is taken as current: an operator upgrade rolls no pods."""
    return deployment is not None and deployment.template_hash not in (None, template_hash(spec.template))


def deployment_update(owner: Owner, spec: api.ProjectorSetSpec, version: str) -> list[dict[str, Any]]:
    """A JSON patch that gives the version's Deployment the spec's pod template, replicas and
    release record (the annotation ``undo`` reads): Kubernetes then rolls its pods. The template is
    replaced whole, so a field the edit removed is gone too (a merge patch would keep it)."""
    built = build_deployment(owner, spec, version)
    annotations = [
        {"op": "add", "path": f"/metadata/annotations/{key.replace('~', '~0').replace('/', '~1')}", "value": value}
        for key, value in built["metadata"]["annotations"].items()
    ]
    return [
        *annotations,
        {"op": "replace", "path": "/spec/replicas", "value": built["spec"]["replicas"]},
        {"op": "replace", "path": "/spec/template", "value": built["spec"]["template"]},
    ]


def stage_command(spec: api.ProjectorSetSpec, stage: str, projectors: list[str]) -> list[str]:
    command: list[str] = getattr(spec.replay.commands, stage)
    values = {
        "{projectors}": ",".join(projectors),
        "{groupSize}": str(spec.replay.group_size),
        "{processes}": str(spec.replay.processes),
    }
    substituted = []
    for part in command:
        for placeholder, value in values.items():
            part = part.replace(placeholder, value)
        substituted.append(part)
    return substituted


# Stages a Job may simply run again (backoffLimit stageRetries): migrations are idempotent, and a
# failed optimize or golive leaves the replay as it was (golive is one transaction). A failed
# prepare, replay or catchup marks the replay failed: running it again only fails on Sequent's state
# checks. abort runs once a Job: the rollout retries it itself, with a back-off it reports.
RETRYABLE_STAGES = frozenset(
    {Stage.MIGRATE} | {stage for stage, step in STAGES.items() if step.retryable and stage is not Stage.ABORT}
)


def stage_backoff_limit(spec: api.ProjectorSetSpec, stage: str) -> int:
    return spec.replay.stage_retries if stage in RETRYABLE_STAGES else 0


def build_stage_job(
    owner: Owner,
    spec: api.ProjectorSetSpec,
    version: str,
    attempt: int,
    stage: str,
    round_: int,
    projectors: list[str],
) -> dict[str, Any]:
    """A Job running one replay stage with the new version's pod template and code."""
    template = _pod_template(owner, spec, version)
    labels = {
        **version_labels(owner, version),
        api.STAGE_LABEL: stage,
        ATTEMPT_LABEL: str(attempt),
        ROUND_LABEL: str(round_),
    }
    # The stage's pods carry no version label, so the Service (which selects set and version) never
    # sends them traffic: with no probe a running stage pod is Ready, and golive's pod, still
    # exiting when the Service switched to its version, took connections that nothing accepted.
    pod_labels = {**template["metadata"]["labels"], **labels}
    del pod_labels[api.VERSION_LABEL]
    template["metadata"]["labels"] = pod_labels
    pod_spec = template.setdefault("spec", {})
    containers = pod_spec["containers"]
    chosen = next(
        (c for c in containers if c.get("name") == spec.replay.container), containers[0] if containers else None
    )
    assert chosen is not None  # the API schema and the model require a container
    job_container = {
        key: value
        for key, value in chosen.items()
        # A stage is a batch command: the web server's probes, ports and lifecycle hooks do not apply.
        if key not in ("livenessProbe", "readinessProbe", "startupProbe", "ports", "lifecycle", "args")
    }
    job_container["command"] = stage_command(spec, stage, projectors)
    # A failed stage's last output (e.g. "cannot determine full path of the `pg_dump` executable")
    # becomes its termination message, which the operator shows in the rollout's condition.
    job_container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    job_container["env"] = [
        *(chosen.get("env") or []),
        {"name": "PROJECTORSET_NAME", "value": owner.name},
        {"name": "PROJECTORSET_VERSION", "value": version},
        {"name": "PROJECTORSET_STAGE", "value": stage},
    ]
    pod_spec["containers"] = [job_container]
    pod_spec["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(owner, version, attempt, stage, round_),
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [_owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": stage_backoff_limit(spec, stage),
            "activeDeadlineSeconds": spec.replay.stage_timeout_seconds,
            "template": template,
        },
    }


def service_selector(owner: Owner, version: str) -> dict[str, str]:
    return {api.NAME_LABEL: owner.name, api.VERSION_LABEL: version}


def pod_selector(owner: Owner, version: str) -> str:
    """The pods of the version's Deployment, which the Service selects, as a label selector in text
    (status.selector: what an autoscaler measures)."""
    return ",".join(f"{key}={value}" for key, value in sorted(service_selector(owner, version).items()))


# ---- reading objects back -----------------------------------------------------------------------


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def deployment_view(obj: dict[str, Any]) -> DeploymentView:
    labels = obj["metadata"].get("labels") or {}
    annotations = obj["metadata"].get("annotations") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    conditions = _conditions(obj)
    progressing = conditions.get("Progressing", {})
    failure = None
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        failure = f"ProgressDeadlineExceeded: {progressing.get('message', '')}".strip()
    up_to_date = (
        status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
        and status.get("updatedReplicas", 0) >= replicas
        and status.get("availableReplicas", 0) >= replicas
    )
    return DeploymentView(
        version=labels.get(api.VERSION_LABEL, ""),
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas") or 0),
        current_replicas=int(status.get("replicas") or 0),
        available=replicas > 0 and up_to_date and conditions.get("Available", {}).get("status") == "True",
        failure=failure,
        template_hash=annotations.get(TEMPLATE_HASH_ANNOTATION),
        projectors=_release_projectors(annotations),
        required=_release_projectors(annotations, "requiredProjectors") or {},
    )


def job_view(obj: dict[str, Any], pod_messages: dict[str, str] | None = None) -> JobView:
    """The Job as the rollout sees it; ``pod_messages`` maps Job names to their last failed pod's
    termination message (the end of its output)."""
    metadata = obj["metadata"]
    labels = metadata.get("labels") or {}
    status = obj.get("status") or {}
    conditions = _conditions(obj)
    state = JobState.RUNNING
    message = ""
    finished = None
    if conditions.get("Complete", {}).get("status") == "True":
        state = JobState.SUCCEEDED
        finished = conditions["Complete"]
    elif conditions.get("Failed", {}).get("status") == "True":
        state = JobState.FAILED
        finished = conditions["Failed"]
        message = f"{finished.get('reason', '')}: {finished.get('message', '')}".strip(": ")
        error = cause((pod_messages or {}).get(metadata["name"], ""))
        if error:
            message = f"{message}; the error: {error}"
        # The whole output stays with the Job's pods: name the command that shows it.
        namespace = metadata.get("namespace")
        message += f" (full output: kubectl logs{f' -n {namespace}' if namespace else ''} job/{metadata['name']})"
    return JobView(
        name=metadata["name"],
        version=labels.get(api.VERSION_LABEL, ""),
        attempt=int(labels.get(ATTEMPT_LABEL, "0") or 0),
        stage=labels.get(api.STAGE_LABEL, ""),
        round=int(labels.get(ROUND_LABEL, "0") or 0),
        state=state,
        message=message,
        active=int(status.get("active") or 0) + int(status.get("terminating") or 0),
        finished_at=api.parse_time(finished.get("lastTransitionTime")) if finished else None,
        deleting=bool(metadata.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class FailedStagePod:
    """The latest failed container of a stage Job: where its whole output is, and the end of it
    that the kubelet kept as its termination message."""

    pod: str
    container: str
    message: str


def failed_stage_pods(pods: list[dict[str, Any]]) -> dict[str, FailedStagePod]:
    """Job name -> its latest failed stage container."""
    latest: dict[str, tuple[str, FailedStagePod]] = {}
    for pod in pods:
        job = (pod["metadata"].get("labels") or {}).get("job-name")
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if job and terminated.get("exitCode") not in (None, 0):
                finished = str(terminated.get("finishedAt") or "")
                if job not in latest or finished >= latest[job][0]:
                    found = FailedStagePod(
                        str(pod["metadata"].get("name") or ""),
                        str(container.get("name") or ""),
                        str(terminated.get("message") or ""),
                    )
                    latest[job] = (finished, found)
    return {job: found for job, (_, found) in latest.items()}


def failed_pod_messages(pods: list[dict[str, Any]]) -> dict[str, str]:
    """Job name -> the termination message of its latest failed stage container."""
    return {job: found.message for job, found in failed_stage_pods(pods).items() if found.message}
