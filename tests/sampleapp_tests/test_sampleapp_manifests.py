"""The stage commands and pod template offered for a ProjectorSet work as the operator would use them."""

from __future__ import annotations

import subprocess

import psycopg
from sampleapp_tests.helpers import projector_state_rows, run_migrate

from sampleapp import manifests


def substitute(command: list[str], projectors: list[str], group_size: int = 3, processes: int = 1) -> list[str]:
    """What the operator does to ``spec.replay.commands`` before running a stage Job."""
    values = {"{projectors}": ",".join(projectors), "{groupSize}": str(group_size), "{processes}": str(processes)}
    result = []
    for part in command:
        for placeholder, value in values.items():
            part = part.replace(placeholder, value)
        result.append(part)
    return result


def pod_env(container: dict, database_url: str) -> dict[str, str]:
    """The container's env as the kubelet resolves it (the Secret holds the test database URI)."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = database_url
        else:
            env[item["name"]] = "127.0.0.1"
    return env


def run(command: list[str], env: dict[str, str]) -> str:
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_commands_and_template_run_a_whole_upgrade(database_url: str, app) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as v1:
        for n in range(12):
            assert v1.deposit(f"m{n % 5}", n + 1).status == 201
    template = manifests.pod_template("v2", secret_name="app-db")
    env = pod_env(template["spec"]["containers"][0], database_url)
    assert env["SAMPLEAPP_RELEASE"] == "v2"
    run(template["spec"]["initContainers"][0]["command"], env)  # creates what is missing, activates nothing
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)

    changed = [p["name"] for p in manifests.projectors("v2") if p not in manifests.projectors("v1")]
    assert changed == ["AccountProjector"]
    commands = manifests.replay_commands()
    for stage in ("prepare", "replay", "catchup", "optimize", "golive"):
        run(substitute(commands[stage], changed), env)
    assert projector_state_rows(database_url) == {
        "AccountProjector": (2, None, None),
        "AuditProjector": (1, None, None),
    }
    with app("v2") as v2:
        assert v2.account("m0").body["deposit_count"] == 3

    # Sequent's abort fails when nothing is in progress, and aborts a prepared replay.
    nothing = subprocess.run(substitute(commands["abort"], changed), env=env, capture_output=True, text=True)
    assert nothing.returncode == 1 and "no replay is in progress" in nothing.stderr
    env_v3 = {**env, "SAMPLEAPP_RELEASE": "v3"}
    run(substitute(commands["prepare"], changed), env_v3)
    run(substitute(commands["abort"], changed), env_v3)
    with psycopg.connect(database_url) as conn:
        states = [row[0] for row in conn.execute("SELECT state FROM sequent_schema.replay_states ORDER BY id")]
    assert states == ["live", "aborted"]
    assert projector_state_rows(database_url)["AccountProjector"] == (2, None, None)


def test_migrate_of_a_new_release_is_idempotent_and_keeps_the_old_release_working(database_url: str, app) -> None:
    run_migrate(database_url, "v1", activate=True)
    run_migrate(database_url, "v2", activate=False)  # what v2's init container does
    run_migrate(database_url, "v2", activate=False)  # a second pod, or a retried Job: nothing to do
    with psycopg.connect(database_url) as conn:
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'view_schema' "
                "AND table_name = 'account_balances' ORDER BY ordinal_position"
            )
        ]
        indexes = [row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'view_schema'")]
        migrations = [row[0] for row in conn.execute("SELECT version FROM sequent_schema.schema_migrations ORDER BY 1")]
    assert columns == ["account_id", "balance", "deposit_count", "last_sequence_number", "last_deposit_at"]
    assert "account_balances_balance_idx" in indexes
    assert migrations == [1, 2, 3]
    with app("v1") as v1:  # the old code keeps writing to the migrated table
        assert v1.deposit("olga", 4).status == 201
        assert v1.account("olga").body["balance"] == 4
    assert projector_state_rows(database_url)["AccountProjector"] == (1, None, None)


def test_seed_bulk_loads_events_as_the_service_would(database_url: str, app, stage) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as v1:
        assert v1.deposit("seed-3", 1000).status == 201  # an account that exists before the seed
        result = stage("v1", "--events", "5000", "--accounts", "40", module="sampleapp.seed")
        assert result.returncode == 0, result.stderr
        assert "seeded 5000 events" in result.stdout
        after = v1.deposit("seed-3", 1)
        assert after.body["sequence_number"] == 1 + 5000 // 40 + 1
        balance = v1.account("seed-3").body["balance"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), sum((event_json ->> 'amount')::bigint) FROM sequent_schema.events "
            "WHERE event_json ->> 'account_id' = 'seed-3'"
        ).fetchone()
        total = conn.execute("SELECT count(*) FROM view_schema.account_audit_log").fetchone()
    assert row == (5000 // 40 + 2, balance)
    assert total == (5002,)
    refused = stage("v2", "--events", "10", module="sampleapp.seed")  # v2 code while v1 is active
    assert refused.returncode == 1 and "DifferentProjectorVersionIsActiveError" in refused.stderr
