"""End to end on the local cluster: a retry that fixes the pod template goes live with the fixed one.

Issue 20, item 1, as a real Sequent application showed it: a release's replay failed because its
pod template lacked an environment variable; the template was fixed with the same ``version``
and the rollout retried; the stage Jobs ran the fixed template and the replay succeeded, but the
version's Deployment kept the old one, went live with it, and answered 500 to writes. Here the
sample application's release v2-currency reads ``ACCOUNT_CURRENCY`` whenever its AccountProjector
projects: without it the replay fails (Sequent marks it failed) and every write answers 500.
Under writes, from the first apply to the end of the retry, no write may get a 500; the only
refusals allowed are the 503s of Sequent's publisher between golive's commit and the switch.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from typing import Any

from kubernetes import client

from projectorset.domain.resources import RELEASE_ANNOTATION, TEMPLATE_HASH_ANNOTATION, template_hash
from sampleapp.config import ACCOUNT_CURRENCY
from support.conditions import condition, is_true
from support.traffic import install_v1_with_traffic
from testbed.manifests import sample_projectorset
from testbed.scenario import Scenario
from testbed.sequent_schema import projector_rows, replay_rows

RELEASE = "v2-currency"
MISSING = f'key not found: "{ACCOUNT_CURRENCY}"'


def without_variable(template: dict[str, Any]) -> dict[str, Any]:
    """The template as the user first wrote it: the release's variable forgotten everywhere."""
    broken = copy.deepcopy(template)
    for container in broken["spec"]["containers"] + broken["spec"].get("initContainers", []):
        container["env"] = [e for e in container["env"] if e["name"] != ACCOUNT_CURRENCY]
    return broken


def deployment(scenario: Scenario, version: str) -> client.V1Deployment:
    selector = f"projectorset.io/name={scenario.name},projectorset.io/version={version}"
    apps = client.AppsV1Api(scenario.api_client)
    found = apps.list_namespaced_deployment(scenario.namespace, label_selector=selector)
    assert len(found.items) == 1, [d.metadata.name for d in found.items]
    return found.items[0]


def container_env(found: client.V1Deployment) -> dict[str, str | None]:
    container = next(c for c in found.spec.template.spec.containers if c.name == "app")
    return {e.name: e.value for e in container.env or []}


def test_a_retry_that_fixes_the_template_goes_live_with_it_and_no_write_gets_a_500(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    load = scenario.load
    assert load is not None
    configured = sample_projectorset(RELEASE, secret=f"{scenario.name}-db")["spec"]["template"]
    assert any(e["name"] == ACCOUNT_CURRENCY for e in configured["spec"]["containers"][0]["env"])

    # The first try: the template forgot the variable. The replay fails, v1 keeps serving.
    began = time.monotonic()
    scenario.apply(RELEASE, template=without_variable(configured))
    scenario.wait_for(
        "the rollout to fail",
        lambda s: s.get("phase") == "Failed" and condition(s, "Progressing").get("reason") == "ReplayFailed",
    )
    failed_s = time.monotonic() - began
    aborted = scenario.wait_for("the replay to be aborted", lambda s: is_true(s, "ReplayAborted"))
    aborted_s = time.monotonic() - began
    # The condition names the error (the line rake printed after "rake aborted!"), not a backtrace.
    message = condition(aborted, "Progressing")["message"]
    print(f"failed rollout's condition: {message}")
    assert MISSING in message, message
    assert [state for _, state, _ in replay_rows(scenario.database_url)] == ["aborted"]
    stale = deployment(scenario, RELEASE)
    assert ACCOUNT_CURRENCY not in container_env(stale) and stale.spec.replicas == 0
    during_failure = [w for w in load.snapshot() if w.started >= began]
    assert during_failure and all(w.status == 201 for w in during_failure), Counter(w.status for w in during_failure)

    # The retry: the same version, the template fixed. The Deployment must take the fixed template
    # before golive; `polls` keeps, per status poll, whether it had and whether golive had committed.
    polls: list[tuple[float, bool, bool]] = []
    fixed_hash = template_hash(configured)

    def record() -> None:
        current = deployment(scenario, RELEASE)
        updated = (current.metadata.annotations or {}).get(TEMPLATE_HASH_ANNOTATION) == fixed_hash
        live = projector_rows(scenario.database_url)["AccountProjector"][0] == 2
        polls.append((time.monotonic(), updated, live))

    retry_began = time.monotonic()
    result = scenario.upgrade("v1", RELEASE, template=configured, on_poll=record)
    writes = load.snapshot()
    statuses = Counter(w.status for w in writes)
    refused = Counter(f"{w.status} {w.error}".strip() for w in writes if w.status != 201)
    updated_at = next((f"{at - retry_began:.1f} s" for at, updated, _ in polls if updated), "never")
    live_at = next((f"{at - retry_began:.1f} s" for at, _, live in polls if live), "never")
    print(f"first try: Failed after {failed_s:.1f} s, aborted after {aborted_s:.1f} s")
    print(f"retry: Deployment on the fixed template seen at {updated_at}, golive seen at {live_at}")
    print(result.summary())
    print(f"all {len(writes)} writes: {dict(sorted(statuses.items()))}; refused: {dict(refused)}")
    switch = "n/a" if result.active_to_switch_ms is None else f"{result.active_to_switch_ms:.0f} ms"
    print(f"refused window {result.refused_window_ms:.0f} ms, golive commit to Service switch {switch}")

    # What a client saw: no 500, no reset; Sequent's refusals (503) only in golive's window.
    assert statuses[500] == 0, refused
    assert set(statuses) <= {201, 503}, refused
    assert result.refused_outside_window == 0
    assert result.lost == 0 and scenario.lost_writes(writes) == []
    # The Deployment took the fixed template before golive committed, and records it for undo.
    before_golive = [updated for _, updated, live in polls if not live]
    assert any(before_golive), polls
    current = deployment(scenario, RELEASE)
    stored = scenario.projectorset()["spec"]["template"]
    assert container_env(current)[ACCOUNT_CURRENCY] == "EUR"
    assert current.metadata.annotations[TEMPLATE_HASH_ANNOTATION] == template_hash(stored) == fixed_hash
    release = json.loads(current.metadata.annotations[RELEASE_ANNOTATION])
    assert release["version"] == RELEASE and release["template"] == stored
    # The Service went to v2-currency's pods, and the database to its projectors.
    service = scenario.core.read_namespaced_service(scenario.name, scenario.namespace)
    assert service.spec.selector["projectorset.io/version"] == RELEASE
    assert scenario.status()["attempt"] == 2
    assert projector_rows(scenario.database_url) == {
        "AccountProjector": (2, None, None),
        "AuditProjector": (1, None, None),
    }
    assert [state for _, state, _ in replay_rows(scenario.database_url)] == ["aborted", "live"]
