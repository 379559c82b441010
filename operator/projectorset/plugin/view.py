"""From what ``get`` read to one document: the tree draws it, ``-o json|yaml`` prints it.

Pure: objects in, a JSON-ready dict out; the time and the lag samples are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projectorset import api
from projectorset.api import parse_time
from projectorset.api.conditions import ConditionType
from projectorset.domain.resources import ATTEMPT_LABEL, RELEASE_ANNOTATION, ROUND_LABEL
from projectorset.plugin.cluster import Object, Snapshot

# Lag samples older than this are not used for the estimate: the rate of the last minutes counts.
ESTIMATE_WINDOW_SECONDS = 300.0
EVENTS_SHOWN = 8


@dataclass(frozen=True)
class LagSample:
    at: float  # seconds (any clock, the same for every sample)
    lag: int


def catching_up_now(status: dict[str, Any]) -> bool:
    """The replay is past optimize and catches up (the lag then falls towards maxLag)."""
    replay = status.get("replay") or {}
    return status.get("phase") == api.Phase.REPLAYING and (
        replay.get("stage") == "catchup" or replay.get("state") in ("optimized", "catching_up")
    )


def record(samples: list[LagSample], status: dict[str, Any], at: float, keep: int = 200) -> None:
    """Add the status's lag to ``samples`` during catch-up (earlier lags measure something else:
    the replay stage absorbs them), only when the operator wrote a new one: redraws of the same
    status are not samples (they would make a falling lag look flat)."""
    if not catching_up_now(status):
        samples.clear()
        return
    lag = (status.get("replay") or {}).get("lag")
    if isinstance(lag, int) and (not samples or samples[-1].lag != lag):
        samples.append(LagSample(at, lag))
        del samples[:-keep]


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def release_of(deployment: Object) -> dict[str, Any] | None:
    """The release a Deployment runs (its annotation): version, projectors, replicas, template."""
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    try:
        release = json.loads(annotations[RELEASE_ANNOTATION])
    except (KeyError, TypeError, ValueError):
        return None
    return release if isinstance(release, dict) else None


def progressing(status: dict[str, Any]) -> dict[str, Any]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == ConditionType.PROGRESSING:
            return dict(condition)
    return {}


def served_version(snapshot: Snapshot) -> str | None:
    """The version the Service selects now (read from the Service itself), else the status's."""
    status = snapshot.projectorset.get("status") or {}
    name = snapshot.projectorset["metadata"]["name"]
    if snapshot.service is not None:
        selector = (snapshot.service.get("spec") or {}).get("selector") or {}
        if selector.get(api.NAME_LABEL) == name:
            return selector.get(api.VERSION_LABEL)
        return None
    return status.get("activeVersion")


def _pod_ready(pod: Object) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _versions(snapshot: Snapshot, serving: str | None) -> list[dict[str, Any]]:
    spec = snapshot.projectorset.get("spec") or {}
    status = snapshot.projectorset.get("status") or {}
    target = spec.get("version")
    previous = status.get("previousVersion")
    pods_by_version: dict[str, list[dict[str, Any]]] = {}
    for pod in snapshot.pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if api.STAGE_LABEL in labels:
            continue  # a stage Job's pod, shown with its Job
        pods_by_version.setdefault(labels.get(api.VERSION_LABEL, ""), []).append(
            {
                "name": pod["metadata"]["name"],
                "phase": (pod.get("status") or {}).get("phase", "Unknown"),
                "ready": _pod_ready(pod),
                "terminating": bool(pod["metadata"].get("deletionTimestamp")),
            }
        )
    versions = []
    for deployment in snapshot.deployments:
        labels = deployment["metadata"].get("labels") or {}
        version = labels.get(api.VERSION_LABEL, "")
        roles = []
        if version == serving:
            roles.append("serving")
        if version == target and version != serving:
            roles.append("target")
        if version == previous and version != serving:
            roles.append("previous")
        replicas = int((deployment.get("spec") or {}).get("replicas", 1))
        if not roles:
            roles.append("history" if replicas == 0 else "old")
        release = release_of(deployment) or {}
        versions.append(
            {
                "version": version,
                "roles": roles,
                "deployment": deployment["metadata"]["name"],
                "replicas": replicas,
                "readyReplicas": int((deployment.get("status") or {}).get("readyReplicas") or 0),
                "projectors": release.get("projectors"),
                "created": deployment["metadata"].get("creationTimestamp"),
                "pods": sorted(pods_by_version.get(version, []), key=lambda p: p["name"]),
            }
        )
    order = {"serving": 0, "target": 1, "previous": 2, "old": 3, "history": 4}
    versions.sort(key=lambda v: (order[v["roles"][0]], str(v["created"] or "")), reverse=False)
    return versions


def _job_state(job: Object) -> str:
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
    if (conditions.get("Complete") or {}).get("status") == "True":
        return "Succeeded"
    if (conditions.get("Failed") or {}).get("status") == "True":
        return "Failed"
    return "Running"


def _stages(snapshot: Snapshot, now: datetime) -> list[dict[str, Any]]:
    """The stage Jobs of the rollout's current attempt, in the order they ran."""
    spec = snapshot.projectorset.get("spec") or {}
    status = snapshot.projectorset.get("status") or {}
    attempt = str(status.get("attempt") or 0)
    stages = []
    for job in snapshot.jobs:
        labels = job["metadata"].get("labels") or {}
        if labels.get(api.VERSION_LABEL) != spec.get("version") or labels.get(ATTEMPT_LABEL) != attempt:
            continue
        job_status = job.get("status") or {}
        state = _job_state(job)
        started = parse_time(job_status.get("startTime")) or parse_time(job["metadata"].get("creationTimestamp"))
        ended = parse_time(job_status.get("completionTime"))
        if ended is None and state == "Failed":
            failed = [c for c in job_status.get("conditions") or [] if c.get("type") == "Failed"]
            ended = parse_time(failed[0].get("lastTransitionTime")) if failed else None
        stages.append(
            {
                "stage": labels.get(api.STAGE_LABEL, ""),
                "round": int(labels.get(ROUND_LABEL) or 0),
                "job": job["metadata"]["name"],
                "state": state,
                "startedAt": started.isoformat() if started else None,
                "completedAt": ended.isoformat() if ended else None,
                "elapsedSeconds": seconds_between(started, ended or (now if state == "Running" else None)),
            }
        )
    stages.sort(key=lambda s: (s["startedAt"] or "", s["round"]))
    return stages


def _checks(spec: dict[str, Any], status: dict[str, Any]) -> list[dict[str, Any]]:
    """spec.replay.checks with the result the operator last recorded for each (None: not run
    in this rollout yet), then results of checks no longer in the spec."""
    results = {r.get("name"): r for r in status.get("checks") or [] if isinstance(r, dict)}
    current = (spec.get("version"), status.get("attempt"))
    checks = []
    for check in (spec.get("replay") or {}).get("checks") or []:
        result = results.pop(check.get("name"), None)
        if result is not None and (result.get("version"), result.get("attempt")) != current:
            result = None  # from an earlier rollout or attempt
        checks.append({"name": check.get("name"), "timeoutSeconds": check.get("timeoutSeconds"), "result": result})
    checks.extend({"name": name, "timeoutSeconds": None, "result": result} for name, result in results.items())
    return checks


def estimate(samples: Sequence[LagSample], lag: int | None, bound: int) -> dict[str, Any]:
    """Catch-up progress from the highest lag seen down to the bound, and the time left at the
    rate of the recent samples ("estimating" until there are two)."""
    if lag is None:
        return {"progress": None, "etaSeconds": None, "eta": "unknown"}
    highest = max([lag, *(s.lag for s in samples)])
    span = highest - bound
    progress = 1.0 if lag <= bound else (0.0 if span <= 0 else max(0.0, min(1.0, (highest - lag) / span)))
    if lag <= bound:
        return {"progress": progress, "etaSeconds": 0.0, "eta": "caught up"}
    recent = [s for s in samples if samples[-1].at - s.at <= ESTIMATE_WINDOW_SECONDS] if samples else []
    if len(recent) < 2 or recent[-1].at <= recent[0].at:
        return {"progress": progress, "etaSeconds": None, "eta": "estimating"}
    rate = (recent[0].lag - recent[-1].lag) / (recent[-1].at - recent[0].at)
    if rate <= 0:
        return {"progress": progress, "etaSeconds": None, "eta": "unknown: the lag is not falling"}
    seconds = (lag - bound) / rate
    return {"progress": progress, "etaSeconds": round(seconds, 1), "eta": duration(seconds)}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def _events(snapshot: Snapshot) -> list[dict[str, Any]]:
    events: list[tuple[datetime, int, dict[str, Any]]] = []
    for event in snapshot.events:
        moment = (
            event.get("lastTimestamp")
            or event.get("eventTime")
            or event.get("firstTimestamp")
            or event["metadata"].get("creationTimestamp")
        )
        # Events of one second are ordered by when the API server stored them.
        stored = str(event["metadata"].get("resourceVersion") or "")
        events.append(
            (
                parse_time(moment) or datetime.min.replace(tzinfo=UTC),
                int(stored) if stored.isdigit() else 0,
                {
                    "time": moment,
                    "type": event.get("type", ""),
                    "reason": event.get("reason", ""),
                    "message": event.get("message", ""),
                    "count": event.get("count") or 1,
                },
            )
        )
    events.sort(key=lambda entry: entry[:2])
    return [entry[2] for entry in events[-EVENTS_SHOWN:]]


def build(snapshot: Snapshot, now: datetime, samples: Sequence[LagSample] = ()) -> dict[str, Any]:
    """The document of one ProjectorSet."""
    body = snapshot.projectorset
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    metadata = body["metadata"]
    serving = served_version(snapshot)
    progress = progressing(status)
    replay_status = status.get("replay")
    stages = _stages(snapshot, now)
    running = [s for s in stages if s["state"] == "Running"]
    bound = int(((spec.get("replay") or {}).get("catchup") or {}).get("maxLag", 1000))
    replay: dict[str, Any] | None = None
    if replay_status:
        replay = {
            "id": replay_status.get("replayId"),
            "state": replay_status.get("state"),
            "stage": replay_status.get("stage"),
            "catchupRound": replay_status.get("catchupRound", 0),
            "lag": replay_status.get("lag"),
            "maxLag": bound,
            "job": replay_status.get("job"),
        }
        catching_up = catching_up_now(status)
        replay["catchingUp"] = catching_up
        if catching_up:
            replay.update(estimate(samples, replay["lag"], bound))
    started = parse_time(status.get("rolloutStartedAt"))
    in_flight = status.get("phase") not in (None, api.Phase.ACTIVE, api.Phase.FAILED, api.Phase.ABORTED)
    return {
        "name": metadata["name"],
        "namespace": metadata.get("namespace"),
        "generation": metadata.get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "phase": status.get("phase", "Pending"),
        "reason": progress.get("reason"),
        "message": status.get("message", ""),
        "version": spec.get("version"),
        "servingVersion": serving,
        "targetVersion": status.get("targetVersion"),
        "previousVersion": status.get("previousVersion"),
        "history": status.get("history") or [],
        "attempt": status.get("attempt", 0),
        "promotion": (spec.get("strategy") or {}).get("promotion", "Automatic"),
        "promote": spec.get("promote"),
        "paused": bool(spec.get("paused")),
        "abort": bool(spec.get("abort")),
        "service": {"name": (spec.get("service") or {}).get("name"), "selects": serving},
        "rolloutStartedAt": status.get("rolloutStartedAt"),
        "rolloutElapsedSeconds": seconds_between(started, now) if in_flight else None,
        "activatedAt": status.get("activatedAt"),
        "switchedAt": status.get("switchedAt"),
        "versions": _versions(snapshot, serving),
        "currentJob": running[-1]["job"] if running else None,
        "stages": stages,
        "replay": replay,
        "projectors": list(status.get("projectors") or []),
        "checks": _checks(spec, status),
        "conditions": list(status.get("conditions") or []),
        "events": _events(snapshot),
    }


def summary(body: Object) -> dict[str, Any]:
    """One row of ``get`` without a name: what ``kubectl get`` would list for the set."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    metadata = body["metadata"]
    return {
        "name": metadata["name"],
        "namespace": metadata.get("namespace"),
        "version": spec.get("version"),
        "servingVersion": status.get("activeVersion"),
        "phase": status.get("phase", "Pending"),
        "reason": progressing(status).get("reason"),
        "createdAt": metadata.get("creationTimestamp"),
    }
