"""Reconcile passes end to end over an in-process fake API, with a real PostgreSQL and the
sample application's real replay stages running as processes."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from fake_cluster import FakeCluster
from prometheus_client import CollectorRegistry, generate_latest

from projectorset.controller.reconciler import Reconciler
from projectorset.domain.cluster import ClusterError
from projectorset.runtime.metrics import OperatorMetrics
from sampleapp.store import Schemas, read_account
from support.conditions import condition, failed_and_aborted
from support.harness import DEPOSITS, Harness, serving
from testbed.isolation import healthy_database, measure, pass_runner, silent_databases
from testbed.manifests import sample_projectorset
from testbed.postgres import PostgresServer


def test_install_then_upgrade_with_real_replay_stages(harness: Harness) -> None:
    harness.run_until(harness.phase_is("Active"))
    assert serving(harness) == "v1"
    assert harness.status["activeVersion"] == "v1"

    harness.set_spec("v2")
    harness.run_until(lambda: serving(harness) == "v2" and harness.status.get("phase") == "Active")

    assert harness.projector_rows() == {"AccountProjector": (2, None, None), "AuditProjector": (1, None, None)}
    stages = [name.split("-a1-")[-1] for name in harness.cluster.created_jobs]
    assert stages == ["migrate", "prepare", "replay", "optimize", "golive"]
    with psycopg.connect(harness.database_url) as conn:
        account = read_account(conn, Schemas("sequent_schema", "view_schema"), "acct-0")
    assert account is not None and account["deposit_count"] == len(range(0, DEPOSITS, 7))
    reasons = [event.reason for event in harness.cluster.events]
    for expected in (
        "RolloutStarted",
        "Preparing",
        "Replaying",
        "Optimizing",
        "GoingLive",
        "Activated",
        "ServiceSwitched",
    ):
        assert expected in reasons
    assert harness.status["previousVersion"] == "v1"
    assert {p["name"]: p["activeVersion"] for p in harness.status["projectors"]} == {
        "AccountProjector": 2,
        "AuditProjector": 1,
    }


def test_operator_restarted_during_replay_finishes_without_repeating_stages(harness: Harness) -> None:
    harness.run_until(harness.phase_is("Active"))
    harness.set_spec("v2")
    harness.run_until(lambda: any("-replay" in name for name in harness.cluster.created_jobs))
    harness.reconciler = Reconciler(harness.cluster)  # a new process: no memory but the status
    harness.run_until(lambda: serving(harness) == "v2")
    assert (
        len(harness.cluster.created_jobs) == len(set(harness.cluster.created_jobs)) == 5
    )  # migrate, prepare, replay, optimize, golive
    assert sum(name.endswith("-golive") for name in harness.cluster.created_jobs) == 1


def test_failing_stage_aborts_and_old_version_keeps_serving(harness: Harness) -> None:
    harness.run_until(harness.phase_is("Active"))
    failing = sample_projectorset("v2")["spec"]["replay"]["commands"]
    failing["optimize"] = ["python3", "-c", "import sys; print('index build failed'); sys.exit(3)"]
    harness.set_spec("v2", replay={"commands": failing, "stageRetries": 0})
    harness.run_until(lambda: failed_and_aborted(harness.status))
    assert serving(harness) == "v1"
    assert harness.projector_rows() == {"AccountProjector": (1, None, None), "AuditProjector": (1, None, None)}
    assert "optimize Job" in harness.status["message"] and "exit code 3" in harness.status["message"]
    assert "version v1 keeps serving" in harness.status["message"]
    with psycopg.connect(harness.database_url) as conn:
        state = conn.execute("SELECT state FROM sequent_schema.replay_states ORDER BY id DESC LIMIT 1").fetchone()
    assert state == ("aborted",)
    assert any(e.type == "Warning" and e.reason == "StageFailed" for e in harness.cluster.events)


def test_wrong_credentials_are_reported_without_the_secret_and_recovered_from(harness: Harness) -> None:
    good = harness.database_url
    wrong = good.replace(":test-password@", ":Wr0ng-Secret-Pw@")
    harness.cluster.secrets["accounts-db"] = {"uri": wrong}
    harness.reconcile()
    harness.reconcile()
    conditions = {c["type"]: c for c in harness.status["conditions"]}
    assert conditions["DatabaseReady"]["status"] == "False"
    assert conditions["DatabaseReady"]["reason"] == "DatabaseAuthenticationFailed"
    visible = json.dumps(harness.status) + json.dumps([e.__dict__ for e in harness.cluster.events])
    assert "Wr0ng-Secret-Pw" not in visible and "test-password" not in visible
    # The operator's cluster adapter keeps a URI for a minute; a refused one must be read again.
    assert harness.cluster.uris_forgotten == 2
    harness.cluster.secrets["accounts-db"] = {"uri": good}
    harness.run_until(harness.phase_is("Active"))
    assert serving(harness) == "v1"


def test_missing_secret_and_service_give_conditions(harness: Harness) -> None:
    harness.cluster.secrets.clear()
    harness.reconcile()
    assert condition(harness.status, "Progressing")["reason"] == "SecretNotFound"
    harness.cluster.secrets["accounts-db"] = {"other": "x"}
    harness.reconcile()
    assert "has no key uri" in harness.status["message"]
    harness.cluster.secrets["accounts-db"] = {"uri": harness.database_url}
    del harness.cluster.services["accounts"]
    harness.reconcile()
    assert harness.status["message"].startswith("Service accounts not found")
    assert not harness.cluster.deployments


def deployment_replicas(harness: Harness, version: str) -> int:
    return int(harness.cluster.deployments[f"accounts-{version}"]["spec"]["replicas"])


def test_replicas_scale_the_serving_version_and_the_status_reports_its_pods(harness: Harness) -> None:
    """What the scale subresource (kubectl scale, an autoscaler) reads and writes."""
    harness.run_until(harness.phase_is("Active"))
    assert (harness.status["replicas"], harness.status["selector"]) == (
        1,
        "projectorset.io/name=accounts,projectorset.io/version=v1",
    )
    harness.edit_spec(replicas=3)
    harness.run_until(lambda: harness.status["replicas"] == 3)
    assert deployment_replicas(harness, "v1") == 3
    # During a rollout (held here by paused) the serving version follows spec.replicas too.
    harness.set_spec("v2", replicas=3, paused=True)
    harness.run_until(harness.phase_is("Paused"))
    harness.edit_spec(replicas=4)
    harness.run_until(lambda: harness.status["replicas"] == 4)
    assert serving(harness) == "v1"
    assert harness.status["selector"] == "projectorset.io/name=accounts,projectorset.io/version=v1"
    assert deployment_replicas(harness, "v1") == 4


def test_a_status_written_without_transition_times_is_completed_and_written_back(harness: Harness) -> None:
    """Operator versions before metav1-shaped conditions left lastTransitionTime optional."""
    harness.run_until(harness.phase_is("Active"))
    harness.reconcile()
    harness.cluster.status = None
    harness.reconcile()
    assert harness.cluster.status is None, "a pass at rest wrote the status"
    for written in harness.body["status"]["conditions"]:
        del written["lastTransitionTime"]
    harness.reconcile()
    assert harness.cluster.status is not None, "the incomplete status was not written back"
    assert all(c["lastTransitionTime"].endswith("Z") for c in harness.cluster.status["conditions"])
    assert harness.status["phase"] == "Active"


def test_api_outage_leaves_state_and_the_next_pass_carries_on(harness: Harness) -> None:
    harness.run_until(harness.phase_is("Active"))
    harness.set_spec("v2")
    harness.run_until(lambda: bool(harness.cluster.created_jobs))
    before = harness.projector_rows()
    harness.cluster.api_down = True
    with pytest.raises(ClusterError):
        harness.reconcile()
    assert harness.projector_rows() == before
    harness.cluster.api_down = False
    harness.run_until(lambda: serving(harness) == "v2")


def test_invalid_spec_is_reported_not_crashed_on(harness: Harness) -> None:
    harness.body["spec"]["projectors"].append({"name": "AccountProjector", "version": 5})
    harness.reconcile()
    assert "AccountProjector is listed twice" in harness.status["message"]
    assert harness.cluster.events[-1].reason == "InvalidSpec"


# ---- secrets: whatever shape the password has, nothing of it is ever shown ------------------------

# Each password carries markers no message of the operator's own could contain.
PERCENT_PASSWORD = "pc%zz-Wx8q%-secret"
SPACED_PASSWORD = "kv Wx8q secret words"
PEM_PASSWORD = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
MARKERS = ("Wx8q", "zz-", "secret words", "MIIEvQIBADANBgkq", "9w0BAQEFAASC")


def _keyword_value(url: str, password: str, quoted: bool = True) -> str:
    parts = urlsplit(url)
    value = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'" if quoted else password
    return f"host={parts.hostname} port={parts.port} dbname={parts.path.lstrip('/')} user=wx_role password={value}"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("percent-in-uri", "InvalidDatabaseURI"),
        ("keyword-value-unquoted", "InvalidDatabaseURI"),
        ("pem-wrong-password", "DatabaseAuthenticationFailed"),
        ("keyword-value-quoted", None),
    ],
)
def test_no_part_of_the_password_reaches_logs_status_events_or_metrics(
    case: str,
    expected: str | None,
    app_database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with psycopg.connect(app_database, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS wx_role")
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE wx_role LOGIN SUPERUSER PASSWORD {}").format(
                psycopg.sql.Literal(SPACED_PASSWORD if case == "keyword-value-quoted" else PERCENT_PASSWORD)
            )
        )
    parts = urlsplit(app_database)
    secret = {
        "percent-in-uri": f"postgresql://wx_role:{PERCENT_PASSWORD}@{parts.hostname}:{parts.port}{parts.path}",
        "keyword-value-unquoted": _keyword_value(app_database, SPACED_PASSWORD, quoted=False),
        "pem-wrong-password": _keyword_value(app_database, PEM_PASSWORD),
        "keyword-value-quoted": _keyword_value(app_database, SPACED_PASSWORD),
    }[case]
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry=registry)
    cluster = FakeCluster(tmp_path)
    harness = Harness(cluster, app_database)
    harness.reconciler = Reconciler(metrics.timed(cluster), observer=metrics.observe)
    cluster.secrets["accounts-db"] = {"uri": secret}
    caplog.set_level(logging.DEBUG)
    try:
        if expected is None:
            harness.run_until(harness.phase_is("Active"))
        else:
            for _ in range(3):
                harness.reconcile()
            database_ready = condition(harness.status, "DatabaseReady")
            assert (database_ready["status"], database_ready["reason"]) == ("False", expected)
    finally:
        cluster.stop()
    visible = "\n".join(
        [
            json.dumps(harness.status),
            json.dumps([e.__dict__ for e in cluster.events]),
            caplog.text,
            generate_latest(registry).decode(),
        ]
    )
    for marker in MARKERS:
        assert marker not in visible, f"{marker!r} of the password is visible"


# ---- isolation: a silent database delays only its own ProjectorSet --------------------------------


def test_six_silent_databases_do_not_delay_the_other_projectorsets(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """10 ProjectorSets, 6 whose database accepts connections and never answers: the 4 others
    switch their Service while every silent pass is still waiting (none has ended), because
    passes run on the operator's PassRunner, not on asyncio's six default threads."""
    healthy = [healthy_database(postgres_server) for _ in range(4)]
    with silent_databases(6) as silent:
        run, shutdown = pass_runner()
        try:
            measured = asyncio.run(measure(healthy, silent, run, tmp_path, timeout=120))
        finally:
            shutdown()
    assert all(result.switched_s is not None for result in measured.healthy), measured
    assert measured.silent_passes_ended == 0, measured


def test_a_role_without_grants_gets_a_condition_and_an_event(harness: Harness) -> None:
    """A role that may log in but not read Sequent's tables froze the status, with no condition
    and no Event (the error escaped the pass)."""
    with psycopg.connect(harness.database_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS no_grants")
        conn.execute("CREATE ROLE no_grants LOGIN PASSWORD 'no-grants-pw'")
    parts = urlsplit(harness.database_url)
    harness.cluster.secrets["accounts-db"] = {
        "uri": f"postgresql://no_grants:no-grants-pw@{parts.hostname}:{parts.port}{parts.path}"
    }
    harness.reconcile()
    harness.reconcile()
    database_ready = condition(harness.status, "DatabaseReady")
    assert (database_ready["status"], database_ready["reason"]) == ("False", "DatabasePermissionDenied")
    assert "grant" in database_ready["message"]
    assert any(e.type == "Warning" and e.reason == "DatabasePermissionDenied" for e in harness.cluster.events)
    harness.cluster.secrets["accounts-db"] = {"uri": harness.database_url}
    harness.run_until(harness.phase_is("Active"))
