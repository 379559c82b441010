"""The operator process as a platform team runs it (``--log-format json``, metrics on): its JSON
lines name their ProjectorSet in fields, a deleted set's series leave ``/metrics``, and SIGTERM
(what ``kubectl delete pod`` sends) closes its database connections and ends it cleanly."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client

from projectorset.adapters.pools import APPLICATION_NAME
from testbed.cluster import LocalCluster
from testbed.ports import free_port
from testbed.postgres import PostgresServer
from testbed.scenario import OperatorProcess, running_scenario


def operator_connections(database_url: str) -> int:
    """What a DBA sees: the operator's sessions on this database in pg_stat_activity."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (APPLICATION_NAME,),
        ).fetchone()
    return int(row[0]) if row else 0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def json_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_json_logs_series_of_deleted_sets_and_a_clean_exit_on_sigterm(
    local_cluster: LocalCluster, kube_api: client.ApiClient, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    namespace = f"operator-exit-{int(time.time()) % 100000}"
    with running_scenario(local_cluster, kube_api, postgres_server, namespace, tmp_path) as scenario:
        scenario.prepare()
        metrics_port = free_port()
        log = tmp_path / "operator.log"
        options = ("--log-format", "json", "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1")
        operator = OperatorProcess(local_cluster.kubeconfig, namespace, log, options).start()
        scenario.operator = operator  # stopped with the scenario if the test fails; its log in failures

        # A set that comes and goes: once deleted, none of its series stays behind.
        scenario.add_application("short-lived")
        deadline = time.monotonic() + 240
        while scenario.status_of("short-lived").get("phase") != "Active":
            assert time.monotonic() < deadline, scenario.tail_logs()
            time.sleep(0.5)
        assert 'name="short-lived"' in scrape(metrics_port)
        scenario.kubectl("delete", "-n", namespace, "projectorset", "short-lived", "--timeout=60s")
        deadline = time.monotonic() + 30
        while 'name="short-lived"' in scrape(metrics_port):
            assert time.monotonic() < deadline, [
                line for line in scrape(metrics_port).splitlines() if "short-lived" in line
            ]
            time.sleep(0.5)

        scenario.apply("v1")
        scenario.wait_active("v1")
        # The passes just used the database: its pool is open (idle pools close after 30 s).
        assert operator_connections(scenario.database_url) >= 1
        exposition = scrape(metrics_port)
        assert f'projectorset_phase{{name="accounts",namespace="{namespace}",phase="Active"}} 1.0' in exposition
        assert 'projectorset_reconcile_duration_seconds_count{result="success"}' in exposition
        assert "projectorset_build_info{" in exposition

        assert operator.process is not None
        os.killpg(operator.process.pid, signal.SIGTERM)
        started = time.monotonic()
        exit_code = operator.process.wait(30)
        print(f"exit {exit_code} after SIGTERM in {time.monotonic() - started:.1f} s")
        assert exit_code == 0, scenario.tail_logs()
        assert operator_connections(scenario.database_url) == 0

    lines = json_lines(log)  # every line of the operator's output is JSON
    about_accounts = [
        line for line in lines if line.get("object", {}).get("name") == "accounts" and "accounts:" in line["message"]
    ]
    # The operator's own lines (the Events it writes, logged in the pass's thread) carry the set as
    # fields, as Kopf's own lines about the object do.
    assert any("Activated" in line["message"] for line in about_accounts), about_accounts
    assert all(
        line["object"]["namespace"] == namespace and line["object"]["kind"] == "ProjectorSet" for line in about_accounts
    )
    assert any(line["message"] == "closed 1 open database connection pool(s)" for line in lines), lines[-10:]
