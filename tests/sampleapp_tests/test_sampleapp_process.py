"""``python -m sampleapp.web`` as the process kubelet runs it: a process with env vars, on a pod IP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from sampleapp_tests.helpers import TESTS_DIR, AppClient, run_migrate

from testbed.postgres import free_port

POD_IP = "127.0.0.7"  # any loopback address works on Linux, as each pod gets its own


def test_web_process_serves_on_its_pod_ip_and_stops_on_sigterm(database_url: str) -> None:
    run_migrate(database_url, "v1", activate=True)
    port = free_port(POD_IP)
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS_DIR),
        "DATABASE_URL": database_url,
        "SAMPLEAPP_RELEASE": "v1",
        "LISTEN_HOST": POD_IP,
        "LISTEN_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sampleapp.web"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        client = AppClient(f"http://{POD_IP}:{port}", "v1")
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.request("GET", "/healthz").status == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the web process never became ready"
            time.sleep(0.05)
        assert client.deposit("ivan", 9).status == 201
        assert client.account("ivan").body == {"account_id": "ivan", "balance": 9}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_web_process_without_database_url_exits_with_a_clear_message() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(TESTS_DIR)
    completed = subprocess.run(
        [sys.executable, "-m", "sampleapp.web"], env=env, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 2
    assert "DATABASE_URL is not set" in completed.stderr


def test_load_cli_writes_and_verifies_zero_loss(database_url: str, app, tmp_path) -> None:
    run_migrate(database_url, "v1", activate=True)
    acks = tmp_path / "acks.jsonl"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "DATABASE_URL": database_url}
    with app("v1") as v1:
        run = subprocess.run(
            [sys.executable, "-m", "sampleapp.load", "run", "--url", v1.base_url, "--seconds", "1", "--out", str(acks)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["acknowledged"] > 0 and summary["errors"] == 0
    assert len(acks.read_text().splitlines()) == summary["acknowledged"]
    check = subprocess.run(
        [sys.executable, "-m", "sampleapp.load", "verify", "--acks", str(acks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["lost"] == 0
