"""A release whose code reads a configuration variable: v2-currency's AccountProjector reads
ACCOUNT_CURRENCY each time it projects, as a Rails projector calling ENV.fetch would. A pod
template without it starts, is ready and migrates; its replay fails the way Sequent's does and
every write the projector handles answers 500. With the variable it behaves as v2."""

from __future__ import annotations

import psycopg
import pytest
from sampleapp_tests.helpers import StageResult, projector_state_rows, replay_state, run_migrate, run_stage, stage_env

from sampleapp import manifests
from sampleapp.config import ACCOUNT_CURRENCY

RELEASE = "v2-currency"
REPLAY = "sequent:projectors:replay:"
MISSING = f'KeyError: key not found: "{ACCOUNT_CURRENCY}" (AccountProjector v2 reads it from the environment)'


def rake(database_url: str, task: str, *, configured: bool) -> StageResult:
    env = stage_env(database_url, RELEASE, **({ACCOUNT_CURRENCY: "EUR"} if configured else {}))
    if not configured:
        env.pop(ACCOUNT_CURRENCY, None)
    return run_stage(database_url, RELEASE, task, module="sampleapp.rake", env=env)


def event_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM sequent_schema.events").fetchone()
    assert row is not None
    return int(row[0])


def test_the_pod_template_gives_the_variables_a_release_reads() -> None:
    def env_names(release: str) -> set[str]:
        template = manifests.pod_template(release, secret_name="app-db")
        return {item["name"] for item in template["spec"]["containers"][0]["env"]}

    assert ACCOUNT_CURRENCY in env_names(RELEASE)
    assert all(ACCOUNT_CURRENCY not in env_names(release) for release in ("v1", "v2", "v3", "v4"))


def test_without_the_variable_the_replay_fails_marked_failed_and_a_configured_retry_goes_live(
    database_url: str, app
) -> None:
    run_migrate(database_url, "v1", activate=True)
    with app("v1") as v1:
        for n in range(6):
            assert v1.deposit(f"acct-{n % 3}", n + 1).status == 201

    # The release's code starts without it: the migration and prepare never project.
    for task in ("db:migrate", REPLAY + "prepare[AccountProjector]"):
        result = rake(database_url, task, configured=False)
        assert result.returncode == 0, result.stderr
    failed = rake(database_url, REPLAY + "replay[2,2]", configured=False)
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == ["rake aborted!", f"{REPLAY}replay[2,2] failed: {MISSING}"]
    row = replay_state(database_url)
    assert row is not None and row["state"] == "failed"
    assert rake(database_url, REPLAY + "abort", configured=False).returncode == 0

    for stage in ("prepare[AccountProjector]", "replay[2,2]", "optimize", "golive"):
        result = rake(database_url, REPLAY + stage, configured=True)
        assert result.returncode == 0, result.stderr
    assert projector_state_rows(database_url)["AccountProjector"] == (2, None, None)


def test_without_the_variable_writes_answer_500_and_store_nothing(
    database_url: str, app, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_migrate(database_url, "v2", activate=True)
    monkeypatch.delenv(ACCOUNT_CURRENCY, raising=False)
    with app(RELEASE) as unconfigured:
        assert unconfigured.request("GET", "/healthz").status == 200  # ready: it started
        refused = unconfigured.deposit("erin", 5)
        assert refused.status == 500
        assert refused.body == {"error": "MissingConfiguration", "message": MISSING}
    assert event_count(database_url) == 0

    monkeypatch.setenv(ACCOUNT_CURRENCY, "EUR")
    with app(RELEASE) as configured:
        assert configured.deposit("erin", 5).status == 201
        assert configured.account("erin").body["deposit_count"] == 1
