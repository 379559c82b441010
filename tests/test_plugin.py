"""The kubectl plugin without a cluster: the document and tree of ``get``, the patches of
promote/abort/retry/pause/resume/undo and their refusals, ``history``, ``plan``, and the
command line. The same commands run against the real local cluster in tests/cluster/test_plugin.py."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from projectorset import api
from projectorset.domain.resources import RELEASE_ANNOTATION
from projectorset.plugin import actions, cli, render, view
from projectorset.plugin.cluster import Cluster, Snapshot
from projectorset.plugin.errors import PluginError
from testbed.manifests import sample_projectorset

NOW = datetime(2026, 11, 29, 17, 2, 0, tzinfo=UTC)
TEMPLATE_V1 = {"metadata": {"labels": {"app": "blog"}}, "spec": {"containers": [{"name": "web", "image": "blog:1"}]}}
TEMPLATE_V2 = {
    "metadata": {"labels": {"app": "blog"}, "annotations": {"team": "a"}},
    "spec": {"containers": [{"name": "web", "image": "blog:2"}], "serviceAccountName": "blog"},
}


def release(version: str, projectors: dict[str, int], template: dict[str, Any], replicas: int = 2) -> str:
    return json.dumps({"version": version, "projectors": projectors, "replicas": replicas, "template": template})


def deployment(version: str, replicas: int, ready: int, annotation: str | None, created: str) -> dict[str, Any]:
    annotations = {RELEASE_ANNOTATION: annotation} if annotation else {}
    return {
        "metadata": {
            "name": f"blog-{version}",
            "labels": {api.NAME_LABEL: "blog", api.VERSION_LABEL: version},
            "annotations": annotations,
            "creationTimestamp": created,
        },
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready},
    }


V1_DEPLOYMENT = deployment("v1", 2, 2, release("v1", {"Accounts": 1, "Audit": 1}, TEMPLATE_V1), "2026-11-29T10:00:00Z")
V2_DEPLOYMENT = deployment("v2", 2, 1, release("v2", {"Accounts": 2, "Audit": 1}, TEMPLATE_V2), "2026-11-29T17:00:05Z")


def job(
    stage: str, state: str, start: str, end: str | None = None, round_: int = 0, attempt: int = 1
) -> dict[str, Any]:
    conditions = {"Succeeded": [{"type": "Complete", "status": "True"}], "Failed": []}.get(state, [])
    if state == "Failed":
        conditions = [{"type": "Failed", "status": "True", "lastTransitionTime": end}]
        end = None
    name = f"blog-v2-a{attempt}-{stage}" + (f"-{round_}" if round_ else "")
    return {
        "metadata": {
            "name": name,
            "labels": {
                api.NAME_LABEL: "blog",
                api.VERSION_LABEL: "v2",
                api.STAGE_LABEL: stage,
                "projectorset.io/attempt": str(attempt),
                "projectorset.io/round": str(round_),
            },
        },
        "status": {"startTime": start, "completionTime": end, "conditions": conditions},
    }


def projectorset(
    phase: str = "Replaying", reason: str = "CatchingUp", spec: dict[str, Any] | None = None, **status: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "blog", "namespace": "shop", "generation": 3, "resourceVersion": "41"},
        "spec": {
            "version": "v2",
            "replicas": 2,
            "service": {"name": "blog"},
            "database": {"secretRef": {"name": "blog-db", "key": "uri"}},
            "projectors": [{"name": "Accounts", "version": 2}, {"name": "Audit", "version": 1}],
            "template": copy.deepcopy(TEMPLATE_V2),
            "replay": {"catchup": {"maxLag": 1000}},
            "strategy": {"promotion": "Automatic"},
            "paused": False,
            "abort": False,
            "retry": 0,
        },
        "status": {
            "phase": phase,
            "message": "catchup is running in Job blog-v2-a1-catchup-2",
            "observedGeneration": 3,
            "activeVersion": "v1",
            "targetVersion": "v2",
            "previousVersion": None,
            "history": [],
            "attempt": 1,
            "rolloutStartedAt": "2026-11-29T17:00:00Z",
            "conditions": [{"type": "Progressing", "status": "True", "reason": reason, "message": "m"}],
            "replay": {
                "stage": "catchup",
                "state": "catching_up",
                "replayId": 7,
                "catchupRound": 2,
                "lag": 4210,
                "job": "blog-v2-a1-catchup-2",
            },
            "projectors": [
                {"name": "Accounts", "specVersion": 2, "activeVersion": 1, "replayingVersion": 2, "plan": "Changed"},
                {"name": "Audit", "specVersion": 1, "activeVersion": 1, "plan": "Unchanged"},
            ],
        },
    }
    body["spec"].update(spec or {})
    body["status"].update(status)
    return body


def snapshot(body: dict[str, Any] | None = None, serving: str = "v1") -> Snapshot:
    return Snapshot(
        projectorset=body or projectorset(),
        deployments=[V1_DEPLOYMENT, V2_DEPLOYMENT],
        jobs=[
            job("prepare", "Succeeded", "2026-11-29T17:00:10Z", "2026-11-29T17:00:12Z"),
            job("replay", "Succeeded", "2026-11-29T17:00:13Z", "2026-11-29T17:01:40Z"),
            job("optimize", "Succeeded", "2026-11-29T17:01:41Z", "2026-11-29T17:01:43Z"),
            job("catchup", "Succeeded", "2026-11-29T17:01:44Z", "2026-11-29T17:01:50Z", round_=1),
            job("catchup", "Running", "2026-11-29T17:01:51Z", round_=2),
            # An earlier attempt's Job is not this rollout's.
            job("prepare", "Failed", "2026-11-29T16:00:00Z", "2026-11-29T16:00:09Z", attempt=0),
        ],
        pods=[
            {
                "metadata": {"name": "blog-v2-5d8-x1", "labels": {api.NAME_LABEL: "blog", api.VERSION_LABEL: "v2"}},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            },
            {
                "metadata": {
                    "name": "blog-v2-a1-catchup-2-q9",
                    "labels": {api.NAME_LABEL: "blog", api.VERSION_LABEL: "v2", api.STAGE_LABEL: "catchup"},
                },
                "status": {"phase": "Running"},
            },
        ],
        service={"spec": {"selector": {api.NAME_LABEL: "blog", api.VERSION_LABEL: serving}}},
        events=[
            {
                "metadata": {"name": "blog.0", "resourceVersion": "120"},
                "type": "Normal",
                "reason": "Deploying",
                "message": "waiting for version v2 to be available (0 ready)",
                "lastTimestamp": "2026-11-29T17:00:00Z",
            },
            {
                "metadata": {"name": "blog.1", "resourceVersion": "119"},
                "type": "Normal",
                "reason": "RolloutStarted",
                "message": "rolling out version v2 (serving: v1)",
                "lastTimestamp": "2026-11-29T17:00:00Z",
            },
            {
                "metadata": {"name": "blog.2"},
                "type": "Normal",
                "reason": "CatchingUp",
                "message": "catch-up round 1: lag 9000 events",
                "lastTimestamp": "2026-11-29T17:01:44Z",
                "count": 2,
            },
        ],
    )


# ---- get ----------------------------------------------------------------------------------------


def test_document_has_versions_stages_replay_projectors_and_events() -> None:
    document = view.build(snapshot(), NOW, [view.LagSample(0, 9000), view.LagSample(10, 4210)])
    assert (document["phase"], document["reason"]) == ("Replaying", "CatchingUp")
    assert document["servingVersion"] == "v1" and document["version"] == "v2"
    assert [(v["version"], v["roles"], v["readyReplicas"]) for v in document["versions"]] == [
        ("v1", ["serving"], 2),
        ("v2", ["target"], 1),
    ]
    # Only the Deployment's pods belong to the version; the stage Job's pod does not.
    assert [p["name"] for p in document["versions"][1]["pods"]] == ["blog-v2-5d8-x1"]
    assert [(s["stage"], s["round"], s["state"], s["elapsedSeconds"]) for s in document["stages"]] == [
        ("prepare", 0, "Succeeded", 2.0),
        ("replay", 0, "Succeeded", 87.0),
        ("optimize", 0, "Succeeded", 2.0),
        ("catchup", 1, "Succeeded", 6.0),
        ("catchup", 2, "Running", 9.0),
    ]
    assert document["currentJob"] == "blog-v2-a1-catchup-2"
    replay = document["replay"]
    assert replay["catchingUp"] and replay["lag"] == 4210 and replay["maxLag"] == 1000
    # 4790 events in 10 s: 3210 events above the bound left, at 479 events/s.
    assert replay["etaSeconds"] == pytest.approx(6.7, abs=0.1)
    assert replay["progress"] == pytest.approx((9000 - 4210) / 8000)
    assert document["rolloutElapsedSeconds"] == 120
    # In the order they happened, also within one second (by the API server's resourceVersion).
    assert [e["reason"] for e in document["events"]] == ["RolloutStarted", "Deploying", "CatchingUp"]
    assert [p["plan"] for p in document["projectors"]] == ["Changed", "Unchanged"]
    json.dumps(document)  # -o json prints it as it is


def test_tree_reads_at_a_glance() -> None:
    document = view.build(snapshot(), NOW, [view.LagSample(0, 4210)])
    text = render.tree(document, NOW)
    lines = text.splitlines()
    assert lines[0] == "ProjectorSet shop/blog   ◌ Replaying · CatchingUp"
    serving = next(line for line in lines if "Deployment blog-v1" in line)
    assert "[serving]" in serving and "2/2 ready" in serving and "◀ Service" in serving
    target = next(line for line in lines if "Deployment blog-v2" in line)
    assert "[target]" in target and "1/2 ready" in target and "◀" not in target
    assert any("pod blog-v2-5d8-x1  Running  ready" in line for line in lines)
    assert "Service blog → v1" in text
    assert "Replay id 7 · state catching_up · stage catchup (catch-up round 2)" in text
    lag = next(line for line in lines if "lag 4,210 events" in line)
    assert "[" in lag and "ETA estimating" in lag  # one sample: no rate yet
    assert "current Job blog-v2-a1-catchup-2" in text
    stage = next(line for line in lines if "replay " in line and "Succeeded" in line)
    assert "1m27s" in stage and stage.lstrip("│ ├└─").startswith("✔ replay")
    assert any(line.strip("│ ├└─").startswith("● catchup #2") for line in lines)
    accounts = next(line for line in lines if "Accounts" in line)
    assert "Changed" in accounts and "active 1" in accounts and "replaying 2" in accounts
    assert "catch-up round 1: lag 9000 events (×2)" in text
    assert "2m00s ago" in text
    # The tree is drawn with box-drawing connectors, the last child of each level closed with └─.
    assert lines[-1].startswith("   └─ ") and any(line.startswith("└─ Events") for line in lines)


def test_tree_after_the_rollout_shows_serving_since() -> None:
    body = projectorset(
        "Active",
        "RolloutComplete",
        activeVersion="v2",
        previousVersion="v1",
        switchedAt="2026-11-29T17:01:00Z",
        replay={"stage": "golive", "state": "live", "replayId": 7, "catchupRound": 2, "lag": None},
    )
    document = view.build(snapshot(body, serving="v2"), NOW)
    assert document["replay"]["catchingUp"] is False and "eta" not in document["replay"]
    assert document["rolloutElapsedSeconds"] is None
    text = render.tree(document, NOW)
    assert text.splitlines()[0].endswith("✔ Active · RolloutComplete")
    assert "serving since 2026-11-29T17:01:00Z (1m00s ago)" in text
    assert "v1  [previous]" in text and "v2  [serving]" in text


@pytest.mark.parametrize(
    ("samples", "lag", "eta", "seconds"),
    [
        ([], 5000, "estimating", None),
        ([view.LagSample(0, 5000)], 5000, "estimating", None),
        ([view.LagSample(0, 5000), view.LagSample(10, 6000)], 6000, "unknown: the lag is not falling", None),
        ([view.LagSample(0, 5000), view.LagSample(10, 3000)], 3000, "10s", 10.0),
        ([view.LagSample(0, 5000), view.LagSample(10, 800)], 800, "caught up", 0.0),
        # Samples older than the window do not count: the recent rate decides.
        ([view.LagSample(0, 90000), view.LagSample(400, 5000), view.LagSample(410, 4000)], 4000, "30s", 30.0),
    ],
)
def test_estimate(samples: list[view.LagSample], lag: int, eta: str, seconds: float | None) -> None:
    result = view.estimate(samples, lag, 1000)
    assert result["eta"] == eta
    assert result["etaSeconds"] == seconds


def status_with(phase: str, stage: str, state: str, lag: int | None) -> dict[str, Any]:
    return {"phase": phase, "replay": {"stage": stage, "state": state, "lag": lag}}


def test_watch_samples_only_new_lag_readings_of_the_catch_up() -> None:
    samples: list[view.LagSample] = []
    view.record(samples, status_with("Replaying", "replay", "replaying", 9000), 0)
    assert samples == []  # the replay stage's lag is absorbed by the replay itself
    for at, lag in ((1, 5000), (2, 5000), (3, 4000), (4, 4000), (5, None), (6, 3000)):
        view.record(samples, status_with("Replaying", "catchup", "catching_up", lag), at)
    assert samples == [view.LagSample(1, 5000), view.LagSample(3, 4000), view.LagSample(6, 3000)]
    assert view.estimate(samples, 3000, 1000)["eta"] == "5s"
    # A new rollout's catch-up starts from scratch.
    view.record(samples, status_with("Activating", "golive", "optimized", 200), 7)
    assert samples == []


def test_duration_and_bar() -> None:
    assert [view.duration(s) for s in (0, 59.4, 61, 3600, 3725, 90000)] == [
        "0s",
        "59s",
        "1m01s",
        "1h00m",
        "1h02m",
        "1d1h",
    ]
    assert render.bar(0.5) == "[" + "█" * 12 + "░" * 12 + "]  50%"


# ---- promote, abort, retry, pause, resume ----------------------------------------------------------


def manual(phase: str = "Paused", reason: str = "AwaitingPromotion", **spec: Any) -> dict[str, Any]:
    return projectorset(phase, reason, spec={"strategy": {"promotion": "Manual"}, **spec})


def test_promote_sets_spec_promote_when_a_version_awaits_promotion() -> None:
    change = actions.promote(manual())
    assert change.patch == {"spec": {"promote": "v2"}}
    assert change.message == "projectorset blog: promoted version v2"
    # Ahead of time, during the replay: allowed, and said so.
    assert "once its replay has caught up" in actions.promote(manual("Replaying", "Replaying")).message
    assert "resume it" in actions.promote(manual(paused=True)).message


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (projectorset("Paused", "AwaitingPromotion"), "promotes automatically"),
        (manual("Active", "RolloutComplete", version="v1"), "already serves; nothing awaits promotion"),
        (manual(promote="v2"), "already promoted"),
        (manual("Failed", "StageFailed"), "retry it first"),
    ],
)
def test_promote_refuses_what_makes_no_sense(body: dict[str, Any], complaint: str) -> None:
    with pytest.raises(PluginError, match=complaint):
        actions.promote(body)


def test_abort_only_a_rollout_in_flight() -> None:
    change = actions.abort(projectorset())
    assert change.patch == {"spec": {"abort": True}}
    assert change.message == "projectorset blog: aborting the rollout of version v2; version v1 keeps serving"
    with pytest.raises(PluginError, match="version v2 serves; no rollout to abort"):
        actions.abort(projectorset("Active", "RolloutComplete", activeVersion="v2"))
    with pytest.raises(PluginError, match="already aborted"):
        actions.abort(projectorset("Aborted", "Aborted", spec={"abort": True}))


def finished(phase: str, reason: str, **spec: Any) -> dict[str, Any]:
    conditions = [
        {"type": "Progressing", "status": "False", "reason": reason},
        {"type": "ReplayAborted", "status": "True", "reason": "Aborted"},
    ]
    return projectorset(phase, reason, spec=spec, conditions=conditions)


def test_retry_clears_abort_and_bumps_the_generation_of_a_failed_or_aborted_set() -> None:
    change = actions.retry(finished("Failed", "StageFailed", retry=2))
    assert change.patch == {"metadata": {"resourceVersion": "41"}, "spec": {"abort": False, "retry": 3}}
    assert change.message == "projectorset blog: retrying the rollout of version v2"
    # A retry with abort already false still changes the spec (abort false alone would not).
    aborted = actions.retry(finished("Aborted", "Aborted", abort=True))
    assert aborted.patch["spec"] == {"abort": False, "retry": 1}
    # The operator's model accepts the field the patch sets.
    patched = {**projectorset()["spec"], **change.patch["spec"]}
    assert api.ProjectorSetSpec.model_validate(patched).retry == 3
    with pytest.raises(PluginError, match="projectorset blog is Replaying, not Failed or Aborted: nothing to retry"):
        actions.retry(projectorset())
    # Still cleaning up: the operator would take the new generation as seen.
    with pytest.raises(PluginError, match="still being cleaned up"):
        actions.retry(projectorset("Failed", "StageFailed"))


def test_pause_and_resume() -> None:
    assert actions.pause(projectorset()).patch == {"spec": {"paused": True}}
    assert actions.resume(projectorset(spec={"paused": True})).patch == {"spec": {"paused": False}}
    with pytest.raises(PluginError, match="already paused"):
        actions.pause(projectorset(spec={"paused": True}))
    with pytest.raises(PluginError, match="is not paused"):
        actions.resume(projectorset())


# ---- history and undo ---------------------------------------------------------------------------


def after_v2() -> dict[str, Any]:
    return projectorset(
        "Active",
        "RolloutComplete",
        activeVersion="v2",
        previousVersion="v1",
        history=["v1"],
        switchedAt="2026-11-29T17:01:00Z",
    )


V1_SCALED_DOWN = {**V1_DEPLOYMENT, "spec": {"replicas": 0}}
SWITCH_EVENTS = [
    {
        "reason": "ServiceSwitched",
        "message": "Service blog now selects version v1",
        "lastTimestamp": "2026-11-29T10:01:00Z",
    },
    {
        "reason": "ServiceSwitched",
        "message": "Service blog now selects version v2",
        "lastTimestamp": "2026-11-29T17:01:00Z",
    },
]


def test_history_lists_the_kept_releases_and_when_they_served() -> None:
    document = actions.history(after_v2(), [V1_SCALED_DOWN, V2_DEPLOYMENT], SWITCH_EVENTS)
    assert [(r["version"], r["projectors"], r["replicas"], r["served"], r["now"]) for r in document["releases"]] == [
        ("v2", {"Accounts": 2, "Audit": 1}, 2, "since 2026-11-29T17:01:00Z", "serving"),
        ("v1", {"Accounts": 1, "Audit": 1}, 2, "2026-11-29T10:01:00Z to 2026-11-29T17:01:00Z", ""),
    ]
    assert document["undoDefault"] == "v1"
    text = render.history(document, NOW)
    assert text.splitlines()[0].split() == ["VERSION", "PROJECTORS", "REPLICAS", "SERVED", "NOW"]
    assert "Accounts 2, Audit 1" in text and "`undo blog` goes back to v1" in text


def test_undo_reapplies_the_previous_release_as_one_merge_patch() -> None:
    change = actions.undo(after_v2(), [V1_SCALED_DOWN, V2_DEPLOYMENT], None)
    spec = change.patch["spec"]
    assert change.patch["metadata"] == {"resourceVersion": "41"}
    assert spec["version"] == "v1" and spec["replicas"] == 2 and spec["abort"] is False
    assert spec["projectors"] == [{"name": "Accounts", "version": 1}, {"name": "Audit", "version": 1}]
    # Keys v2 added to the template are removed (null), the rest set back: the merge gives v1's template.
    assert spec["template"]["spec"]["serviceAccountName"] is None
    assert spec["template"]["metadata"]["annotations"] is None
    merged = merge(after_v2()["spec"]["template"], spec["template"])
    assert merged == TEMPLATE_V1
    assert change.message == "projectorset blog: rolling back from version v2 to v1 (serving now: v2)"


def test_undo_sets_the_required_projectors_the_release_recorded_back_too() -> None:
    """A set on a shared event store: v1 required Ledger 1, v2 requires Ledger 2; undo gives v1's back,
    and a release that recorded none clears the list."""
    v1 = json.loads(release("v1", {"Accounts": 1, "Audit": 1}, TEMPLATE_V1)) | {"requiredProjectors": {"Ledger": 1}}
    v1_deployment = {**deployment("v1", 0, 0, json.dumps(v1), "2026-11-29T10:00:00Z")}
    body = after_v2()
    body["spec"]["requiredProjectors"] = [{"name": "Ledger", "version": 2}]
    change = actions.undo(body, [v1_deployment, V2_DEPLOYMENT], None)
    assert change.patch["spec"]["requiredProjectors"] == [{"name": "Ledger", "version": 1}]
    change = actions.undo(body, [V1_SCALED_DOWN, V2_DEPLOYMENT], None)
    assert change.patch["spec"]["requiredProjectors"] == []
    assert "requiredProjectors" not in actions.undo(after_v2(), [V1_SCALED_DOWN, V2_DEPLOYMENT], None).patch["spec"]


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def test_undo_refuses_an_unknown_or_current_version() -> None:
    deployments = [V1_SCALED_DOWN, V2_DEPLOYMENT]
    with pytest.raises(PluginError, match="no kept release v0 .*kept: v1"):
        actions.undo(after_v2(), deployments, "v0")
    with pytest.raises(PluginError, match="v2 is already spec.version"):
        actions.undo(after_v2(), deployments, "v2")
    unannotated = deployment("v1", 0, 0, None, "2026-11-29T10:00:00Z")
    with pytest.raises(PluginError, match="no earlier release kept"):
        actions.undo(after_v2(), [unannotated, V2_DEPLOYMENT], None)


# ---- plan ---------------------------------------------------------------------------------------


def manifest_text(version: str, name: str = "accounts") -> str:
    return yaml.safe_dump(sample_projectorset(version, name=name))


def test_plan_uses_the_operators_planning_over_the_reported_database_state() -> None:
    body = projectorset(
        "Active",
        "RolloutComplete",
        activeVersion="v1",
        projectors=[
            {"name": "AccountProjector", "activeVersion": 1, "plan": "Unchanged"},
            {"name": "AuditProjector", "activeVersion": 1, "plan": "Unchanged"},
            {"name": "LegacyProjector", "activeVersion": 3, "plan": "Removed"},
        ],
    )
    body["metadata"]["name"] = "accounts"
    document = actions.plan(body, actions.read_manifest(manifest_text("v2"), "accounts"))
    rows = {p["name"]: (p["change"], p["release"], p["active"], p["action"]) for p in document["projectors"]}
    assert rows == {
        "AccountProjector": ("Changed", 2, 1, "replayed, then activated at golive"),
        "AuditProjector": ("Unchanged", 1, 1, "nothing (already active at this version)"),
        "LegacyProjector": ("Removed", None, 3, "deactivated before golive"),
    }
    assert document["replayed"] == ["AccountProjector"] and document["deactivated"] == ["LegacyProjector"]
    assert "status.projectors" in document["basedOn"]
    text = render.plan(document)
    assert "Based on: the projector versions the operator last reported in status.projectors" in text
    assert "replay of AccountProjector" in text


def test_a_required_projector_another_set_owns_is_shown_and_never_planned_as_removed() -> None:
    # The operator reports requiredProjectors in status.projectors (plan Required): get lists them
    # with what the database shows; plan leaves them out even when the new manifest no longer needs
    # them, since this set never deactivates another set's projector.
    body = projectorset(
        "Activating",
        "WaitingForProjectors",
        activeVersion="v1",
        projectors=[
            {"name": "AccountProjector", "activeVersion": 1, "specVersion": 1, "plan": "Unchanged"},
            {"name": "AuditProjector", "activeVersion": 1, "specVersion": 1, "plan": "Unchanged"},
            {
                "name": "LedgerProjector",
                "specVersion": 3,
                "activeVersion": 2,
                "replayingVersion": 3,
                "plan": "Required",
            },
        ],
    )
    body["metadata"]["name"] = "accounts"
    text = render.tree(view.build(snapshot(body), NOW, []), NOW)
    ledger = next(line for line in text.splitlines() if "LedgerProjector" in line)
    assert "Required" in ledger and "release 3" in ledger and "active 2" in ledger and "replaying 3" in ledger
    document = actions.plan(body, actions.read_manifest(manifest_text("v1"), "accounts"))
    assert "LedgerProjector" not in {p["name"] for p in document["projectors"]}
    assert document["deactivated"] == []


def test_plan_without_a_replay_and_a_blocked_plan() -> None:
    body = projectorset(
        projectors=[{"name": "AccountProjector", "activeVersion": 2}, {"name": "AuditProjector", "activeVersion": 1}]
    )
    body["metadata"]["name"] = "accounts"
    document = actions.plan(body, actions.read_manifest(manifest_text("v3"), "accounts"))
    assert "nothing to replay" in document["summary"] and not document["issues"]
    body["status"]["projectors"][0]["replayingVersion"] = 5
    blocked = actions.plan(body, actions.read_manifest(manifest_text("v3"), "accounts"))
    assert blocked["issues"][0]["reason"] == "ReplayInProgressForOtherTarget"
    assert "blocked (ReplayInProgressForOtherTarget)" in render.plan(blocked)


def test_plan_refuses_a_bad_manifest() -> None:
    with pytest.raises(PluginError, match="not valid YAML"):
        actions.read_manifest("a: [", "accounts")
    with pytest.raises(PluginError, match="holds no ProjectorSet"):
        actions.read_manifest("kind: Service\n", "accounts")
    with pytest.raises(PluginError, match="is 'shop', not 'accounts'"):
        actions.read_manifest(manifest_text("v2", name="shop"), "accounts")
    broken = sample_projectorset("v2")
    broken["spec"]["projectors"].append(dict(broken["spec"]["projectors"][0]))
    with pytest.raises(PluginError, match="spec is invalid: spec.projectors: .*listed twice"):
        actions.read_manifest(yaml.safe_dump(broken), "accounts")


# ---- the command line ---------------------------------------------------------------------------


def test_connection_flags_go_before_or_after_the_command() -> None:
    before = cli.parser().parse_args(["-n", "shop", "--context", "prod", "get", "blog", "-o", "json"])
    after = cli.parser().parse_args(["get", "blog", "-n", "shop", "--context", "prod", "-o", "json"])
    for arguments in (before, after):
        assert (arguments.namespace, arguments.context, arguments.name, arguments.output) == (
            "shop",
            "prod",
            "blog",
            "json",
        )
    assert cli.parser().parse_args(["undo", "blog", "--to-version", "v1"]).to_version == "v1"
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["plan", "blog"])  # -f is required


def kubeconfig(path: Path) -> Path:
    context = {"cluster": "local", "user": "admin"}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "admin", "user": {"token": "t"}}],
        "contexts": [
            {"name": "dev", "context": {**context, "namespace": "team-a"}},
            {"name": "prod", "context": context},
        ],
        "current-context": "dev",
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_namespace_comes_from_the_flag_else_the_context_else_default(tmp_path: Path) -> None:
    config = str(kubeconfig(tmp_path / "config"))
    assert Cluster.connect(config, None, None).namespace == "team-a"
    assert Cluster.connect(config, None, "shop").namespace == "shop"
    assert Cluster.connect(config, "prod", None).namespace == "default"
    with pytest.raises(PluginError, match="context 'staging' is not in the kubeconfig"):
        Cluster.connect(config, "staging", None)
    with pytest.raises(PluginError, match="cannot load the kubeconfig"):
        Cluster.connect(str(tmp_path / "missing"), None, None)


def test_main_prints_errors_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--kubeconfig", str(tmp_path / "missing"), "get", "blog"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: cannot load the kubeconfig")


# ---- checks before golive -----------------------------------------------------------------------


def test_tree_shows_the_checks_before_golive_with_their_results() -> None:
    checks = [
        {"name": "posts-complete", "query": "SELECT true", "timeoutSeconds": 30},
        {"name": "slugs-set", "query": "SELECT false", "timeoutSeconds": 30},
        {"name": "added-later", "query": "SELECT true", "timeoutSeconds": 30},
    ]

    def result(name: str, passed: bool, text: str, attempt: int = 1) -> dict[str, Any]:
        return {
            "name": name,
            "passed": passed,
            "result": text,
            "checkedAt": "2026-11-29T17:01:55Z",
            "version": "v2",
            "attempt": attempt,
            "digest": "0",
        }

    body = projectorset(
        "Failed",
        "CheckFailed",
        spec={"replay": {"catchup": {"maxLag": 1000}, "checks": checks}},
        checks=[
            result("posts-complete", True, "true"),
            result("slugs-set", False, "false"),
            result("added-later", True, "true", attempt=0),  # an earlier attempt's: not shown as this one's
        ],
    )
    document = view.build(snapshot(body), NOW)
    assert [(c["name"], c["result"] and c["result"]["passed"]) for c in document["checks"]] == [
        ("posts-complete", True),
        ("slugs-set", False),
        ("added-later", None),
    ]
    lines = render.tree(document, NOW).splitlines()
    assert any(line.startswith("├─ Checks before golive") for line in lines)
    passed = next(line for line in lines if "posts-complete" in line)
    assert "✔ posts-complete" in passed and "true" in passed
    failed = next(line for line in lines if "slugs-set" in line)
    assert "✖ slugs-set" in failed and "false" in failed and "2026-11-29T17:01:55Z (v2, attempt 1)" in failed
    assert "◌ added-later" in next(line for line in lines if "added-later" in line)
    json.dumps(document)
