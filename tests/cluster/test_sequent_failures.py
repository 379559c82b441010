"""End to end on the local cluster: a replay stage fails the way Sequent's do, under writes.

The sample application's replay stage meets an event its new projector cannot read: like
Sequent's replayer it marks the replay ``failed`` in replay_states (which keeps it in progress
for Sequent's unique index) and exits 1. The operator must fail the rollout saying so, wait for
the stage's pod, run abort until replay_states says ``aborted``, leave v1 serving with nothing
lost, and, once the event is fixed and the spec edited, roll v2 out.
"""

from __future__ import annotations

import json
import time
import uuid

import psycopg
from kubernetes import client

from sampleapp.releases import DEPOSITED
from sampleapp.store import PARTITION_KEY
from support.conditions import condition, failed_and_aborted, is_true
from support.traffic import install_v1_with_traffic, next_writes
from testbed.manifests import sample_projectorset
from testbed.scenario import Scenario
from testbed.sequent_schema import projector_rows, replay_rows
from testbed.workloads import wait_until


def insert_unreadable_event(database_url: str) -> uuid.UUID:
    """A Deposited event whose amount is not a number: v1 never projected it (it was written past
    the application), v2's replay of AccountProjector raises on it."""
    aggregate = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO sequent_schema.aggregates (aggregate_id, aggregate_type, events_partition_key) "
            "VALUES (%s, 'Account', %s)",
            (aggregate, PARTITION_KEY),
        )
        conn.execute(
            "INSERT INTO sequent_schema.events (partition_key, aggregate_id, sequence_number, event_type, event_json) "
            "VALUES (%s, %s, 1, %s, %s)",
            (PARTITION_KEY, aggregate, DEPOSITED, json.dumps({"account_id": "broken", "amount": "one hundred"})),
        )
    return aggregate


def remove_event(database_url: str, aggregate: uuid.UUID) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute("DELETE FROM sequent_schema.events WHERE aggregate_id = %s", (aggregate,))
        conn.execute("DELETE FROM sequent_schema.aggregates WHERE aggregate_id = %s", (aggregate,))


def test_replay_failing_the_sequent_way_aborts_keeps_v1_serving_and_a_retry_goes_live(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    load = scenario.load
    assert load is not None
    broken = insert_unreadable_event(scenario.database_url)

    began = time.monotonic()
    scenario.apply("v2")
    failed = scenario.wait_for(
        "the rollout to fail",
        lambda s: s.get("phase") == "Failed" and condition(s, "Progressing").get("reason") == "ReplayFailed",
    )
    failed_s = time.monotonic() - began
    assert "is 'failed' in replay_states: a stage raised" in failed["message"], failed["message"]
    assert "replay Job" in failed["message"], failed["message"]
    aborted = scenario.wait_for("the replay to be aborted", lambda s: is_true(s, "ReplayAborted"))
    aborted_s = time.monotonic() - began

    # The database says so: the failed replay is aborted, nothing replays, v1's projectors are active.
    replays = replay_rows(scenario.database_url)
    assert [(state, projectors) for _, state, projectors in replays] == [("aborted", ["AccountProjector"])]
    assert f"replay {replays[0][0]} is aborted in replay_states" in condition(aborted, "ReplayAborted")["message"]
    assert projector_rows(scenario.database_url) == {
        "AccountProjector": (1, None, None),
        "AuditProjector": (1, None, None),
    }
    # The replay Job exited 1 and the abort ran only after its pod was gone. The abort command's
    # database work is what the operator reports; its Job completes once its process has exited and
    # the Job controller has counted it, which on a loaded machine comes a little later.
    batch = client.BatchV1Api(scenario.api_client)

    def stage_jobs() -> dict:
        listed = batch.list_namespaced_job(scenario.namespace, label_selector="projectorset.io/version=v2").items
        return {job.metadata.labels["projectorset.io/stage"]: job for job in listed}

    def abort_finished() -> dict:
        jobs = stage_jobs()
        assert jobs["abort"].status.succeeded or jobs["abort"].status.failed, f"the abort Job: {jobs['abort'].status}"
        return jobs

    jobs = wait_until("the abort Job to finish", abort_finished, 120, 1.0)
    assert jobs["replay"].status.failed == 1 and not jobs["replay"].status.active
    assert jobs["abort"].status.succeeded == 1
    pods = (
        client.CoreV1Api(scenario.api_client)
        .list_namespaced_pod(scenario.namespace, label_selector="projectorset.io/stage=replay")
        .items
    )
    ended = [s.state.terminated for p in pods for s in p.status.container_statuses or [] if s.state.terminated]
    assert [t.exit_code for t in ended] == [1]
    assert jobs["abort"].status.start_time >= ended[0].finished_at.replace(microsecond=0)
    events = scenario.events()
    assert any(e["reason"] == "ReplayFailed" and e["type"] == "Warning" for e in events), events

    # v1 kept serving all along: every write since the rollout began was accepted, none lost.
    next_writes(load)
    during = [w for w in load.snapshot() if w.started >= began]
    assert during and all(w.status == 201 for w in during), [w for w in during if w.status != 201][:5]
    assert scenario.status()["activeVersion"] == "v1"
    assert scenario.deployment_replicas("v2") == 0
    assert scenario.lost_writes(load.snapshot()) == []

    # The event is fixed; an edit of the spec retries the rollout, and v2 goes live under writes.
    remove_event(scenario.database_url, broken)
    result = scenario.upgrade("v1", "v2", retry=1)
    print(f"sequent failure: Failed after {failed_s:.1f} s, aborted after {aborted_s:.1f} s; retry: {result.summary()}")
    assert result.lost == 0, scenario.lost_writes(load.snapshot())
    assert result.refused_outside_window == 0
    status = scenario.status()
    assert status["attempt"] == 2
    assert projector_rows(scenario.database_url) == {
        "AccountProjector": (2, None, None),
        "AuditProjector": (1, None, None),
    }
    assert [state for _, state, _ in replay_rows(scenario.database_url)] == ["aborted", "live"]


def test_prepare_without_pg_dump_says_so_and_aborts_from_created(scenario: Scenario) -> None:
    """Bad input gets a clear condition: an image without pg_dump fails prepare before Sequent
    marks anything (the replay stays 'created', in progress); the operator quotes the stage's own
    last words and aborts from 'created'."""
    scenario.apply("v1")
    scenario.wait_active("v1")
    template = sample_projectorset("v2")["spec"]["template"]
    for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
        container["env"] = [e for e in container["env"] if e["name"] != "PATH"] + [
            {"name": "PATH", "value": "/nonexistent"}
        ]
    scenario.apply("v2", template=template)
    status = scenario.wait_for("the rollout to fail and abort", failed_and_aborted)
    assert condition(status, "Progressing")["reason"] == "StageFailed"
    assert "prepare Job" in status["message"]
    assert "cannot determine full path of the `pg_dump` executable" in status["message"], status["message"]
    assert [state for _, state, _ in replay_rows(scenario.database_url)] == ["aborted"]
    assert projector_rows(scenario.database_url) == {
        "AccountProjector": (1, None, None),
        "AuditProjector": (1, None, None),
    }
    assert scenario.status()["activeVersion"] == "v1"
