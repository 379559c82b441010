"""What each command changes: one JSON merge patch of the spec, or a refusal that says why.

Pure: from the ProjectorSet (and its Deployments) as read, to ``Change(patch, message)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError

from projectorset import api
from projectorset.api import parse_time
from projectorset.api.conditions import ConditionType, Reason
from projectorset.domain.planning import Change as ProjectorChange
from projectorset.domain.planning import plan_upgrade
from projectorset.domain.sequent import DatabaseState, ProjectorState
from projectorset.plugin.cluster import Object
from projectorset.plugin.errors import PluginError
from projectorset.plugin.view import progressing, release_of

FINISHED = (api.Phase.FAILED, api.Phase.ABORTED)


@dataclass(frozen=True)
class Change:
    patch: dict[str, Any]
    message: str


def _parts(body: Object) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return body["metadata"]["name"], body.get("spec") or {}, body.get("status") or {}


def _rollout_in_flight(spec: dict[str, Any], status: dict[str, Any]) -> bool:
    """spec.version is not what serves yet, and the rollout has not ended."""
    return status.get("activeVersion") != spec.get("version") and status.get("phase") not in FINISHED


def promote(body: Object) -> Change:
    name, spec, status = _parts(body)
    version = spec.get("version")
    promotion = (spec.get("strategy") or {}).get("promotion", "Automatic")
    if promotion != "Manual":
        raise PluginError(
            f"projectorset {name} promotes automatically (strategy.promotion {promotion}): "
            f"version {version} goes live by itself once its replay has caught up"
        )
    if status.get("activeVersion") == version:
        raise PluginError(f"projectorset {name}: version {version} already serves; nothing awaits promotion")
    if status.get("phase") in FINISHED:
        raise PluginError(
            f"projectorset {name}: the rollout of {version} is {status.get('phase')}; "
            f"retry it first (kubectl projectorset retry {name})"
        )
    if spec.get("promote") == version:
        raise PluginError(f"projectorset {name}: version {version} is already promoted")
    awaiting = progressing(status).get("reason") == Reason.AWAITING_PROMOTION
    note = "" if awaiting else " (it goes live once its replay has caught up)"
    if spec.get("paused"):
        note += f"; the rollout is paused: resume it (kubectl projectorset resume {name})"
    return Change({"spec": {"promote": version}}, f"projectorset {name}: promoted version {version}{note}")


def abort(body: Object) -> Change:
    name, spec, status = _parts(body)
    version = spec.get("version")
    if spec.get("abort"):
        raise PluginError(f"projectorset {name}: the rollout of {version} is already aborted")
    if not _rollout_in_flight(spec, status):
        if status.get("phase") == api.Phase.FAILED:
            raise PluginError(f"projectorset {name}: the rollout of {version} already failed and was aborted")
        raise PluginError(f"projectorset {name}: version {version} serves; no rollout to abort")
    serving = status.get("activeVersion")
    keeps = f"; version {serving} keeps serving" if serving else ""
    return Change({"spec": {"abort": True}}, f"projectorset {name}: aborting the rollout of version {version}{keeps}")


def retry(body: Object) -> Change:
    """A Failed or Aborted rollout starts again on a spec change with abort false: clear abort and
    bump spec.retry, so that even a set with abort already false gets a new generation."""
    name, spec, status = _parts(body)
    version = spec.get("version")
    phase = status.get("phase")
    if phase not in FINISHED:
        raise PluginError(
            f"projectorset {name} is {phase or 'not reconciled yet'}, not Failed or Aborted: nothing to retry"
        )
    cleaned = any(
        c.get("type") == ConditionType.REPLAY_ABORTED and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not cleaned:
        # The operator records the spec it cleans up under: a retry sent meanwhile would be taken as seen.
        raise PluginError(
            f"projectorset {name}: the {phase} rollout of {version} is still being cleaned up "
            "(its replay aborted, its pods scaled down); retry once ReplayAborted is True"
        )
    patch = {
        "metadata": {"resourceVersion": body["metadata"].get("resourceVersion")},
        "spec": {"abort": False, "retry": int(spec.get("retry") or 0) + 1},
    }
    return Change(patch, f"projectorset {name}: retrying the rollout of version {version}")


def pause(body: Object) -> Change:
    name, spec, _ = _parts(body)
    if spec.get("paused"):
        raise PluginError(f"projectorset {name} is already paused")
    return Change({"spec": {"paused": True}}, f"projectorset {name}: paused (the rollout holds before its next step)")


def resume(body: Object) -> Change:
    name, spec, _ = _parts(body)
    if not spec.get("paused"):
        raise PluginError(f"projectorset {name} is not paused")
    return Change({"spec": {"paused": False}}, f"projectorset {name}: resumed")


# ---- history and undo ---------------------------------------------------------------------------


def _switches(events: list[Object]) -> list[tuple[datetime, str]]:
    """(time, version) of each ServiceSwitched Event still kept by the API server."""
    found = []
    for event in events:
        if event.get("reason") != Reason.SERVICE_SWITCHED:
            continue
        moment = parse_time(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp"))
        version = str(event.get("message", "")).rsplit("selects version ", 1)
        if moment is not None and len(version) == 2:
            found.append((moment, version[1].strip()))
    return sorted(found)


def history(body: Object, deployments: list[Object], events: list[Object]) -> dict[str, Any]:
    """The releases kept in the cluster (each version's Deployment and its release annotation)."""
    name, spec, status = _parts(body)
    serving = status.get("activeVersion")
    switches = _switches(events)
    releases = []
    for deployment in deployments:
        version = (deployment["metadata"].get("labels") or {}).get(api.VERSION_LABEL, "")
        release = release_of(deployment) or {}
        # From the ServiceSwitched Events while the API server keeps them (an hour by default);
        # the serving version's start is also in status.switchedAt.
        served = None
        for index, (moment, switched_to) in enumerate(switches):
            if switched_to == version:
                until = next((m for m, v in switches[index + 1 :] if v != version), None)
                if until is not None:
                    served = f"{moment:%Y-%m-%dT%H:%M:%SZ} to {until:%Y-%m-%dT%H:%M:%SZ}"
                elif version == serving:
                    served = f"since {moment:%Y-%m-%dT%H:%M:%SZ}"
        if served is None and version == serving and status.get("switchedAt"):
            served = f"since {status['switchedAt']}"
        now = []
        if version == serving:
            now.append("serving")
        if version == spec.get("version") and version != serving:
            now.append(f"target ({status.get('phase', 'Pending')})")
        releases.append(
            {
                "version": version,
                "projectors": release.get("projectors"),
                "replicas": release.get("replicas", (deployment.get("spec") or {}).get("replicas")),
                "deployedAt": deployment["metadata"].get("creationTimestamp"),
                "served": served,
                "now": ", ".join(now),
                "undoable": bool(release) and version != spec.get("version"),
            }
        )
    releases.sort(key=lambda r: str(r["deployedAt"] or ""), reverse=True)
    return {
        "name": name,
        "namespace": body["metadata"].get("namespace"),
        "servingVersion": serving,
        "version": spec.get("version"),
        "releases": releases,
        "undoDefault": _undo_default(spec, status, releases),
    }


def _undo_default(spec: dict[str, Any], status: dict[str, Any], releases: list[dict[str, Any]]) -> str | None:
    kept = {r["version"] for r in releases if r["undoable"]}
    for version in [status.get("previousVersion"), *(status.get("history") or [])]:
        if version and version in kept:
            return str(version)
    return None


def _merge_patch(current: Any, wanted: Any) -> Any:
    """The RFC 7386 merge patch turning ``current`` into ``wanted`` (keys to drop become null)."""
    if not isinstance(current, dict) or not isinstance(wanted, dict):
        return wanted
    patch: dict[str, Any] = {}
    for key in current.keys() - wanted.keys():
        patch[key] = None
    for key, value in wanted.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            patch[key] = _merge_patch(current[key], value)
    return patch


def undo(body: Object, deployments: list[Object], to_version: str | None) -> Change:
    """Re-apply a kept release (version, projectors, requiredProjectors, replicas, template) from its Deployment."""
    name, spec, status = _parts(body)
    by_version = {(d["metadata"].get("labels") or {}).get(api.VERSION_LABEL, ""): d for d in deployments}
    releases = history(body, deployments, [])
    kept = sorted(r["version"] for r in releases["releases"] if r["undoable"])
    target = to_version or releases["undoDefault"]
    if target is None:
        raise PluginError(f"projectorset {name} has no earlier release kept to go back to")
    if target == spec.get("version"):
        raise PluginError(f"projectorset {name}: version {target} is already spec.version")
    deployment = by_version.get(target)
    release = release_of(deployment) if deployment is not None else None
    if release is None:
        known = ", ".join(kept) or "none"
        raise PluginError(
            f"projectorset {name}: no kept release {target} (a Deployment with its release annotation); kept: {known}"
        )
    projectors = [{"name": n, "version": int(v)} for n, v in sorted(release["projectors"].items())]
    patch_spec: dict[str, Any] = {
        "version": target,
        "projectors": projectors,
        "replicas": release["replicas"],
        "template": _merge_patch(spec.get("template") or {}, release["template"]),
        "abort": False,
    }
    required = release.get("requiredProjectors") or {}
    if required or spec.get("requiredProjectors"):
        # Recorded only when the release had some: none recorded means the release required none.
        patch_spec["requiredProjectors"] = [{"name": n, "version": int(v)} for n, v in sorted(required.items())]
    patch = {"metadata": {"resourceVersion": body["metadata"].get("resourceVersion")}, "spec": patch_spec}
    return Change(
        patch,
        f"projectorset {name}: rolling back from version {spec.get('version')} to {target} "
        f"(serving now: {status.get('activeVersion') or 'nothing'})",
    )


# ---- plan ---------------------------------------------------------------------------------------


def read_manifest(text: str, name: str) -> api.ProjectorSetSpec:
    """The spec of ProjectorSet ``name`` in a manifest (one or several YAML documents)."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise PluginError(f"the manifest is not valid YAML: {error}") from None
    candidates = [d for d in documents if isinstance(d, dict) and d.get("kind") == api.KIND]
    if not candidates:
        raise PluginError(f"the manifest holds no {api.KIND}")
    named = [d for d in candidates if (d.get("metadata") or {}).get("name") == name]
    if not named and len(candidates) == 1:
        other = (candidates[0].get("metadata") or {}).get("name")
        raise PluginError(f"the manifest's {api.KIND} is {other!r}, not {name!r}")
    if len(named) != 1:
        raise PluginError(f"the manifest holds {len(named)} {api.KIND}s named {name!r}")
    try:
        return api.ProjectorSetSpec.model_validate(named[0].get("spec") or {})
    except ValidationError as error:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in error.errors()
        )
        raise PluginError(f"the manifest's spec is invalid: {problems}") from None


ACTIONS = {
    ProjectorChange.UNCHANGED: "nothing (already active at this version)",
    ProjectorChange.NEW: "replayed, then activated at golive",
    ProjectorChange.CHANGED: "replayed, then activated at golive",
    ProjectorChange.REMOVED: "deactivated before golive",
}


def plan(body: Object, release: api.ProjectorSetSpec) -> dict[str, Any]:
    """The operator's own planning over the database state it last reported (status.projectors)."""
    name, spec, status = _parts(body)
    # The required projectors' rows are another set's: this set never removes them.
    reported = [p for p in status.get("projectors") or [] if p.get("plan") != api.REQUIRED_PLAN]
    database = DatabaseState(
        projectors={
            p["name"]: ProjectorState(
                p["name"],
                active_version=p.get("activeVersion"),
                activating_version=p.get("activatingVersion"),
                replaying_version=p.get("replayingVersion"),
            )
            for p in reported
        }
    )
    result = plan_upgrade(release.projector_versions, database, required=release.required_versions)
    projectors = []
    for projector in result.projectors:
        action = ACTIONS[projector.change]
        if result.first_install:
            action = "activated (first install: nothing active yet)"
        elif not result.needs_replay and projector.change is not ProjectorChange.REMOVED:
            action = "activated directly" if projector.change is not ProjectorChange.UNCHANGED else action
        projectors.append(
            {
                "name": projector.name,
                "change": projector.change.value,
                "release": projector.spec_version,
                "active": projector.state.active_version,
                "action": action,
            }
        )
    replayed = sorted(result.to_replay)
    if result.first_install:
        summary = f"first install: the operator activates version {release.version} without a replay"
    elif result.needs_replay:
        summary = f"replay of {', '.join(replayed)}; the rest of the release is activated with them at golive"
    else:
        summary = f"nothing to replay: the operator activates version {release.version} directly"
    if release.version == spec.get("version"):
        summary += f" (note: {release.version} is already spec.version: applying it starts no new rollout)"
    observed = status.get("observedGeneration")
    return {
        "name": name,
        "namespace": body["metadata"].get("namespace"),
        "currentVersion": spec.get("version"),
        "servingVersion": status.get("activeVersion"),
        "version": release.version,
        "basedOn": (
            "the projector versions the operator last reported in status.projectors "
            f"(observed generation {observed if observed is not None else 'none'}); "
            "the database may have moved since"
        ),
        "projectors": projectors,
        "replayed": replayed,
        "deactivated": result.to_deactivate,
        "firstInstall": result.first_install,
        "summary": summary,
        "notices": list(result.notices),
        "issues": [{"reason": i.reason, "message": i.message} for i in result.issues],
    }
