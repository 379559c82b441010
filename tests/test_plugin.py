"""The kubectl plugin without a cluster: the document and tree of ``get``, the patches of
promote/abort/retry/pause/resume/undo and their refusals, ``history``, ``plan``, the command line
and kubectl's flags, and what a terminal, a pipe and ``NO_COLOR`` get. A fake cluster (or a small
HTTP server standing in for the API server) answers; the same commands run against the real local
cluster in tests/cluster/test_plugin_cluster.py."""

from __future__ import annotations

import copy
import fcntl
import http.server
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyte
import pytest
import yaml

from projectorset import api
from projectorset.domain.resources import RELEASE_ANNOTATION
from projectorset.plugin import actions, cli, render, view
from projectorset.plugin.cluster import Cluster, Connection, Snapshot
from projectorset.plugin.errors import PluginError
from testbed.manifests import sample_projectorset

NOW = datetime(2026, 11, 29, 17, 2, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read the time at NOW (ages and elapsed times in the output)."""
    monkeypatch.setattr(cli, "_now", lambda: NOW)


def text(renderable: Any) -> str:
    """What the renderable prints to a pipe."""
    return render.plain(render.console(io.StringIO()), renderable)


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
    tree = text(render.tree(document, NOW))
    lines = tree.splitlines()
    assert lines[0] == "ProjectorSet shop/blog   ◌ Replaying · CatchingUp"
    serving = next(line for line in lines if "Deployment blog-v1" in line)
    assert "[serving]" in serving and "2/2 ready" in serving and "◀ Service" in serving
    target = next(line for line in lines if "Deployment blog-v2" in line)
    assert "[target]" in target and "1/2 ready" in target and "◀" not in target
    assert any("pod blog-v2-5d8-x1  Running  ready" in line for line in lines)
    assert "Service blog → v1" in tree
    assert "Replay id 7 · state catching_up · stage catchup (catch-up round 2)" in tree
    lag = next(line for line in lines if "lag 4,210 events" in line)
    assert "[" + " " * 24 + "]   0%  lag" in lag and "ETA estimating" in lag  # one sample: no progress, no rate
    assert "current Job blog-v2-a1-catchup-2" in tree
    stage = next(line for line in lines if "replay " in line and "Succeeded" in line)
    assert "1m27s" in stage and stage.lstrip("│ ├└─").startswith("✔ replay")
    assert any(line.strip("│ ├└─").startswith("● catchup #2") for line in lines)
    accounts = next(line for line in lines if "Accounts" in line)
    assert "Changed" in accounts and "active 1" in accounts and "replaying 2" in accounts
    assert "catch-up round 1: lag 9000 events (×2)" in tree
    assert "2m00s ago" in tree
    # Box-drawing connectors, the last child of each level closed with └──; a section's rows
    # hang below its title in columns.
    assert any(line.startswith("└── Events (last 3)") for line in lines)
    assert lines[-1].startswith("    16s ago    Normal  CatchingUp")
    assert "│   └── current Job blog-v2-a1-catchup-2" in lines
    assert "│       └── pod blog-v2-5d8-x1  Running  ready" in lines


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
    tree = text(render.tree(document, NOW))
    assert tree.splitlines()[0].endswith("✔ Active · RolloutComplete")
    assert "serving since 2026-11-29T17:01:00Z (1m00s ago)" in tree
    assert "v1  [previous]" in tree and "v2  [serving]" in tree


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
    # Off a terminal the bar's rest is blank: the percentage says it.
    assert text(render.bar(0.5)) == "[" + "━" * 12 + " " * 12 + "]  50%\n"
    assert text(render.bar(1.0)) == "[" + "━" * 24 + "] 100%\n"


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
    table = text(render.history(document, NOW))
    assert table.splitlines()[0].split() == ["VERSION", "PROJECTORS", "REPLICAS", "SERVED", "NOW"]
    assert "Accounts 2, Audit 1" in table and "`undo blog` goes back to v1" in table


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
    table = text(render.plan(document))
    assert "Based on: the projector versions the operator last reported in status.projectors" in table
    assert "replay of AccountProjector" in table
    assert table.splitlines()[3].split() == ["PROJECTOR", "PLAN", "RELEASE", "ACTIVE", "WHAT", "HAPPENS"]


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
    tree = text(render.tree(view.build(snapshot(body), NOW, []), NOW))
    ledger = next(line for line in tree.splitlines() if "LedgerProjector" in line)
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
    assert "blocked (ReplayInProgressForOtherTarget)" in text(render.plan(blocked))


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
    assert Cluster.connect(Connection(kubeconfig=config)).namespace == "team-a"
    assert Cluster.connect(Connection(kubeconfig=config, namespace="shop")).namespace == "shop"
    assert Cluster.connect(Connection(kubeconfig=config, context="prod")).namespace == "default"
    with pytest.raises(PluginError, match="--context: context 'staging' is not in the kubeconfig"):
        Cluster.connect(Connection(kubeconfig=config, context="staging"))
    with pytest.raises(PluginError, match="cannot load the kubeconfig"):
        Cluster.connect(Connection(kubeconfig=str(tmp_path / "missing")))


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
    lines = text(render.tree(document, NOW)).splitlines()
    assert any(line.startswith("├── Checks before golive") for line in lines)
    passed = next(line for line in lines if "posts-complete" in line)
    assert "✔ posts-complete" in passed and "true" in passed
    failed = next(line for line in lines if "slugs-set" in line)
    assert "✖ slugs-set" in failed and "false" in failed and "2026-11-29T17:01:55Z (v2, attempt 1)" in failed
    assert "◌ added-later" in next(line for line in lines if "added-later" in line)
    json.dumps(document)


# ---- what a pipe, a terminal and NO_COLOR get ------------------------------------------------------


class FakeCluster:
    """Answers as ``Cluster`` does, from objects built here. ``get --watch`` draws one frame per
    snapshot; when they run out, the user presses Ctrl-C."""

    def __init__(self, snapshots: list[Snapshot], sets: list[dict[str, Any]] | None = None) -> None:
        self.snapshots = snapshots
        self.sets = sets or []
        self.connections: list[Connection] = []
        self.patches: list[dict[str, Any]] = []

    def connect(self, connection: Connection) -> FakeCluster:
        self.connections.append(connection)
        return self

    def snapshot(self, name: str) -> Snapshot:
        if not self.snapshots:
            raise KeyboardInterrupt
        return self.snapshots.pop(0)

    def read(self, name: str) -> dict[str, Any]:
        return self.snapshots[0].projectorset

    def patch_spec(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(patch)
        return self.read(name)

    def projectorsets(self, all_namespaces: bool) -> list[dict[str, Any]]:
        return [s for s in self.sets if all_namespaces or s["metadata"]["namespace"] == "shop"]


def catching_up(lag: int) -> Snapshot:
    body = projectorset()
    body["status"]["replay"]["lag"] = lag
    return snapshot(body)


def run_main(argv: list[str], cluster: FakeCluster, out: Any = None) -> tuple[int, str]:
    out = out if out is not None else io.StringIO()
    code = cli.main(argv, out=out, connect=cluster.connect)  # type: ignore[arg-type]
    return code, out.getvalue() if isinstance(out, io.StringIO) else ""


# Any SGR sequence that sets a colour (foreground, background, 256 or true colour).
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|4[0-7]|9[0-7]|10[0-7]|38|48)[;m]")


TERMINAL_SIZE = (140, 60)


class Terminal:
    """A pseudo-terminal of a given size, read as it is written (a full terminal blocks its
    writer), and pyte showing what a user would see on it."""

    def __init__(self, columns: int = TERMINAL_SIZE[0], rows: int = TERMINAL_SIZE[1]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.file = os.fdopen(slave, "w", encoding="utf-8")
        self.screen = pyte.Screen(columns, rows)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the writer's side is closed and all was read
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def read(self) -> str:
        """Everything written, once the writer is done."""
        self.file.close()
        self.reader.join(10)
        os.close(self.master)
        raw = b"".join(self.chunks).decode("utf-8")
        pyte.Stream(self.screen).feed(raw)
        return raw

    def shown(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display if line.strip()]


@pytest.fixture
def colour_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    # rich asks the process's own stdin/stdout/stderr for the terminal's size, which are not the
    # test's terminal: the size is told as a shell tells it.
    monkeypatch.setenv("COLUMNS", str(TERMINAL_SIZE[0]))
    monkeypatch.setenv("LINES", str(TERMINAL_SIZE[1]))


def test_get_piped_is_plain_text_with_whole_lines() -> None:
    code, out = run_main(["get", "blog"], FakeCluster([catching_up(4210)]))
    assert code == 0
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == "ProjectorSet shop/blog   ◌ Replaying · CatchingUp"
    # Wider than the 80 columns rich assumes off a terminal, and not wrapped.
    title = "├── Projectors (plan, and versions in the database as the operator last read them)"
    assert title in lines and len(title) > 80
    assert all(line == line.rstrip() for line in lines)
    # The documents are printed as they are.
    document = json.loads(run_main(["get", "blog", "-o", "json"], FakeCluster([catching_up(4210)]))[1])
    assert (document["phase"], document["replay"]["lag"]) == ("Replaying", 4210)
    watched = run_main(["get", "blog", "-o", "yaml", "-w", "--interval", "0"], FakeCluster([snapshot(), snapshot()]))[1]
    assert [d["name"] for d in yaml.safe_load_all(watched) if d] == ["blog", "blog"]


def test_a_terminal_gets_colour_and_no_color_takes_it_away(
    colour_terminal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    assert run_main(["get", "blog"], FakeCluster([catching_up(4210)]), terminal.file)[0] == 0
    raw = terminal.read()
    assert COLOUR.search(raw), raw[:400]
    assert terminal.shown()[0] == "ProjectorSet shop/blog   ◌ Replaying · CatchingUp"

    monkeypatch.setenv("NO_COLOR", "1")
    terminal = Terminal()
    assert run_main(["get", "blog"], FakeCluster([catching_up(4210)]), terminal.file)[0] == 0
    raw = terminal.read()
    assert not COLOUR.search(raw), raw[:400]
    assert terminal.shown()[0] == "ProjectorSet shop/blog   ◌ Replaying · CatchingUp"


def test_watch_in_a_terminal_redraws_in_place(colour_terminal: None) -> None:
    cluster = FakeCluster([catching_up(9000), catching_up(6000), catching_up(4210)])
    terminal = Terminal()
    assert run_main(["get", "blog", "--watch", "--interval", "0"], cluster, terminal.file)[0] == 0
    raw = terminal.read()
    # Each frame was drawn...
    assert all(f"lag {lag} events" in raw for lag in ("9,000", "6,000", "4,210"))
    # ...over the last one, without clearing the terminal: the screen shows one tree, the last.
    assert "\x1b[2J" not in raw
    shown = terminal.shown()
    assert [line for line in shown if line.startswith("ProjectorSet ")] == [
        "ProjectorSet shop/blog   ◌ Replaying · CatchingUp"
    ]
    lag = next(line for line in shown if "events (golive" in line)
    assert "lag 4,210 events" in lag and "ETA" in lag
    assert shown[-1].startswith("    16s ago")  # the frame's last line, the newest Event


def test_watch_piped_prints_each_new_frame_after_the_last() -> None:
    cluster = FakeCluster([catching_up(9000), catching_up(9000), catching_up(6000)])
    code, out = run_main(["get", "blog", "-w", "--interval", "0"], cluster)
    assert code == 0 and "\x1b" not in out
    frames = out.split("\n\nProjectorSet ")
    # The second frame showed nothing new: not printed again.
    assert len(frames) == 2
    assert "lag 9,000 events" in frames[0] and "lag 6,000 events" in frames[1]
    assert all("└── Events (last 3)" in frame for frame in frames)


def test_get_without_a_name_lists_the_namespace_or_every_namespace() -> None:
    other = projectorset("Active", "RolloutComplete", activeVersion="v2")
    other["metadata"].update(name="web", namespace="team-b", creationTimestamp="2026-11-29T16:02:00Z")
    mine = projectorset()
    mine["metadata"]["creationTimestamp"] = "2026-11-27T17:02:00Z"
    cluster = FakeCluster([], sets=[mine, other])
    code, out = run_main(["get", "-n", "shop"], cluster)
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "VERSION", "SERVING", "PHASE", "REASON", "AGE"],
        ["blog", "v2", "v1", "Replaying", "CatchingUp", "2d0h"],
    ]
    code, out = run_main(["get", "-A"], cluster)
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["NAMESPACE", "NAME"],
        ["shop", "blog"],
        ["team-b", "web"],
    ]
    assert "1h00m" in out.splitlines()[2]
    listed = json.loads(run_main(["get", "-A", "-o", "json"], cluster)[1])
    assert [(s["name"], s["phase"], s["servingVersion"]) for s in listed["projectorsets"]] == [
        ("blog", "Replaying", "v1"),
        ("web", "Active", "v2"),
    ]
    assert run_main(["get", "-n", "empty"], FakeCluster([]))[1] == "No ProjectorSets found.\n"


def test_a_command_that_patches_prints_what_it_did() -> None:
    cluster = FakeCluster([snapshot()])
    code, out = run_main(["pause", "blog"], cluster)
    assert (code, out) == (0, "projectorset blog: paused (the rollout holds before its next step)\n")
    assert cluster.patches == [{"spec": {"paused": True}}]


# ---- kubectl's flags --------------------------------------------------------------------------------


def test_kubectls_flags_reach_the_connection_before_or_after_the_command() -> None:
    cluster = FakeCluster([snapshot(), snapshot(), snapshot()])
    flags = ["--context", "prod", "--kubeconfig", "/k", "--request-timeout", "1m30s", "--as", "alice"]
    groups = ["--as-group", "viewers", "--as-group", "ops"]
    run_main([*flags, *groups, "-n", "shop", "get", "blog"], cluster)
    run_main(["get", "blog", *flags, *groups, "--namespace", "shop"], cluster)
    expected = Connection("/k", "prod", "shop", 90.0, "alice", ("viewers", "ops"))
    assert cluster.connections == [expected, expected]
    # Groups on both sides of the command are all kept, as kubectl keeps every --as-group.
    run_main(["--as", "alice", "--as-group", "viewers", "get", "blog", "--as-group", "ops"], cluster)
    assert cluster.connections[-1].groups == ("viewers", "ops")


@pytest.mark.parametrize(
    ("value", "seconds"), [("30", 30.0), ("30s", 30.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5)]
)
def test_request_timeout_takes_kubectls_durations(value: str, seconds: float) -> None:
    assert cli.parser().parse_args(["get", "blog", "--request-timeout", value]).request_timeout == seconds


def test_request_timeout_of_zero_waits_as_long_as_the_server_takes() -> None:
    cluster = FakeCluster([snapshot()])
    run_main(["get", "blog", "--request-timeout", "0"], cluster)
    assert cluster.connections[0].request_timeout is None


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["get", "blog", "--request-timeout", "5x"], "argument --request-timeout: '5x' is not a duration"),
        (["get", "blog", "--request-timeout=-1s"], "argument --request-timeout: '-1s' is not a duration"),
        (["get", "blog", "--as-group", "ops"], "--as-group needs --as"),
        (["get", "blog", "-A"], "-A/--all-namespaces lists the sets of every namespace: give no NAME"),
        (["pause", "blog", "-A"], "unrecognized arguments: -A"),
    ],
)
def test_a_bad_flag_is_refused_naming_it(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster([snapshot()])
    with pytest.raises(SystemExit) as exit_:
        run_main(argv, cluster)
    assert exit_.value.code == 2
    assert complaint in capsys.readouterr().err
    assert cluster.connections == []


def test_kubeconfig_env_lists_files_merged_as_kubectl_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(tmp_path / "first")
    second = tmp_path / "second"
    second.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "staging", "cluster": {"server": "https://127.0.0.1:2"}}],
                "users": [{"name": "ops", "user": {"token": "u"}}],
                "contexts": [{"name": "staging", "context": {"cluster": "staging", "user": "ops", "namespace": "qa"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}")
    assert Cluster.connect(Connection()).namespace == "team-a"  # the first file's current context
    staging = Cluster.connect(Connection(context="staging"))
    assert (staging.namespace, staging.server) == ("qa", "https://127.0.0.1:2")
    # --kubeconfig wins over KUBECONFIG.
    with pytest.raises(PluginError, match="--context: context 'staging' is not in the kubeconfig"):
        Cluster.connect(Connection(kubeconfig=str(first), context="staging"))


class StandInApiServer(http.server.ThreadingHTTPServer):
    """Answers GET of any path with a ProjectorSet, after ``delay`` seconds, and keeps each request's headers."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[Any] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.headers)
                time.sleep(server.delay)  # a slow API server is the case under test
                body = json.dumps(projectorset()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def kubeconfig(self, path: Path) -> str:
        server = f"http://127.0.0.1:{self.server_address[1]}"
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": server}}],
            "users": [{"name": "admin", "user": {"token": "t"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "admin"}}],
            "current-context": "stand-in",
        }
        path.write_text(yaml.safe_dump(document))
        return str(path)


def test_as_and_as_group_send_kubernetes_impersonation_headers(tmp_path: Path) -> None:
    server = StandInApiServer()
    try:
        connection = Connection(kubeconfig=server.kubeconfig(tmp_path / "config"), user="alice", groups=("a,b", "ops"))
        assert Cluster.connect(connection).read("blog")["metadata"]["name"] == "blog"
        headers = server.requests[-1]
        assert headers.get_all("Impersonate-User") == ["alice"]
        # One line per group: the API server would read "a,b" on one line as one group.
        assert headers.get_all("Impersonate-Group") == ["a,b", "ops"]
        Cluster.connect(Connection(kubeconfig=connection.kubeconfig)).read("blog")
        assert "Impersonate-User" not in server.requests[-1] and "Impersonate-Group" not in server.requests[-1]
    finally:
        server.shutdown()


def test_request_timeout_gives_up_on_a_silent_server_with_a_clear_error(tmp_path: Path) -> None:
    server = StandInApiServer(delay=1.5)
    try:
        config = server.kubeconfig(tmp_path / "config")
        cluster = Cluster.connect(Connection(kubeconfig=config, request_timeout=0.5))
        with pytest.raises(PluginError, match=r"did not answer within 0.5s \(--request-timeout\)"):
            cluster.read("blog")
        assert len(server.requests) == 1  # not sent again
        # Without a timeout the slow answer is waited for.
        assert Cluster.connect(Connection(kubeconfig=config)).read("blog")["metadata"]["name"] == "blog"
    finally:
        server.shutdown()


def test_an_unreachable_server_is_named(tmp_path: Path) -> None:
    cluster = Cluster.connect(Connection(kubeconfig=str(kubeconfig(tmp_path / "config"))))
    with pytest.raises(PluginError, match="cannot reach the API server at https://127.0.0.1:1: .*refused"):
        cluster.read("blog")


def test_without_the_plugin_extra_the_command_says_what_to_install() -> None:
    # rich missing, as in the operator's image: an import of it fails.
    script = (
        "import sys; sys.modules['rich'] = None; sys.argv = ['kubectl-projectorset', 'get', 'blog']\n"
        "from projectorset.plugin.launcher import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (
        "error: the kubectl plugin needs the Python package 'rich', which is not installed: "
        "pip install 'projectorset-operator[plugin]'\n"
    )
