"""The kubectl plugin on the local cluster, run the way a user runs it: ``kubectl projectorset ...``
(and ``kubectl pjs``) found by kubectl's plugin mechanism on PATH, during real rollouts of the
sample application by the operator (the scenario of test_upgrade.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from test_upgrade import install_v1_with_traffic

from projectorset.plugin.cli import CLEAR
from testbed import toolchain
from testbed.cluster import LocalCluster
from testbed.manifests import sample_projectorset
from testbed.scenario import Scenario
from testbed.sequent_schema import projector_rows

Plugin = Callable[..., "subprocess.CompletedProcess[str]"]
VENV_BIN = Path(sys.executable).parent


def plugin_env(kubeconfig: Path) -> dict[str, str]:
    # The venv's bin holds kubectl-projectorset and kubectl-pjs (console scripts of the package).
    return dict(os.environ, KUBECONFIG=str(kubeconfig), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="session")
def plugin(local_cluster: LocalCluster) -> Plugin:
    """``plugin("get", "accounts", "-n", ns)`` runs ``kubectl projectorset get accounts -n ns``."""
    kubectl = str(toolchain.binary("kubectl"))

    def run(
        *args: str, command: str = "projectorset", kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = plugin_env(kubeconfig or local_cluster.kubeconfig)
        return subprocess.run([kubectl, command, *args], env=env, capture_output=True, text=True, timeout=60)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}{result.stdout}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout}"
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def watch_frames(
    local_cluster: LocalCluster, running: Scenario, enough: Callable[[list[str]], bool], timeout: float = 240
) -> list[str]:
    """``kubectl projectorset get --watch`` until its frames are ``enough``, then Ctrl-C."""
    command = [str(toolchain.binary("kubectl")), "projectorset", "get", running.name, "-n", running.namespace]
    process = subprocess.Popen(
        [*command, "--watch", "--interval", "0.5"],
        env=plugin_env(local_cluster.kubeconfig),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout = process.stdout
    assert stdout is not None and process.stderr is not None
    out: list[str] = []

    def read() -> None:
        while chunk := stdout.read(1):
            out.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout

    def frames() -> list[str]:
        # The last frame may still be being written: only those followed by the next one count.
        return [frame for frame in "".join(out).split(CLEAR)[:-1] if frame.strip()]

    while not enough(frames()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=20)
    reader.join(5)
    assert process.returncode == 0, process.stderr.read()
    return frames()


def slow_commands(running: Scenario, **scripts: str) -> dict[str, object]:
    """spec.replay with stages wrapped in shell scripts (in which "$0" "$@" is the real command)."""
    spec = running.projectorset()["spec"]
    commands = dict(spec["replay"]["commands"])
    for stage, script in scripts.items():
        commands[stage] = ["sh", "-c", script, *commands[stage]]
    return {**spec["replay"], "commands": commands}


def test_get_during_a_replay_and_after_then_history_and_undo_back_to_v1(
    scenario: Scenario,  # noqa: F811
    plugin: Plugin,
    local_cluster: LocalCluster,
    tmp_path: Path,
) -> None:
    install_v1_with_traffic(scenario)
    name, namespace = scenario.name, scenario.namespace
    # Slow stages, so that `get` sees each at work: the replay; optimize, before it works, so that
    # the events written meanwhile leave a lag above maxLag and catch-up runs; and the first
    # catch-up round ("$0" "$@" is the real command).
    marker = tmp_path / "catchup-slowed"
    replay = slow_commands(
        scenario,
        replay='sleep 40; exec "$0" "$@"',
        optimize='sleep 20; exec "$0" "$@"',
        catchup=f'[ -e {marker} ] || {{ touch {marker}; sleep 10; }}; exec "$0" "$@"',
    )
    scenario.apply("v2", replay={**replay, "catchup": {"maxLag": 1500, "maxRounds": 10}})

    scenario.wait_for("the replay stage", lambda s: (s.get("replay") or {}).get("stage") == "replay")
    tree = ok(plugin("get", name, "-n", namespace))
    print(f"\n--- kubectl projectorset get {name} (during the replay) ---\n{tree}")
    lines = tree.splitlines()
    assert lines[0].startswith(f"ProjectorSet {namespace}/{name}") and "Replaying" in lines[0]
    serving = next(line for line in lines if f"Deployment {name}-v1" in line)
    assert "[serving]" in serving and "◀ Service" in serving
    assert "[target]" in next(line for line in lines if f"Deployment {name}-v2" in line)
    assert f"Service {name} → v1" in tree
    assert f"current Job {name}-v2-a1-replay" in tree
    assert any("● replay" in line and "Running" in line for line in lines)
    assert any("✔ prepare" in line and "Succeeded" in line for line in lines)
    accounts = next(line for line in lines if "AccountProjector" in line and "release" in line)
    assert "Changed" in accounts and "active 1" in accounts and "replaying 2" in accounts
    assert "RolloutStarted" in tree

    # The same through the short alias, as a document for scripts.
    document = json.loads(ok(plugin("get", name, "-n", namespace, "-o", "json", command="pjs")))
    assert (document["phase"], document["servingVersion"], document["version"]) == ("Replaying", "v1", "v2")
    assert document["currentJob"] == f"{name}-v2-a1-replay"
    assert {p["name"]: p["plan"] for p in document["projectors"]} == {
        "AccountProjector": "Changed",
        "AuditProjector": "Unchanged",
    }
    assert yaml.safe_load(ok(plugin("get", name, "-n", namespace, "-o", "yaml")))["name"] == name

    # Watching from the optimize stage on (the plugin takes a few seconds to start on a loaded
    # machine), until three frames have shown the catch-up.
    frames = watch_frames(local_cluster, scenario, lambda drawn: sum("ETA" in f for f in drawn) >= 3)
    assert len(frames) >= 3, frames
    catching_up = [f for f in frames if "ETA" in f]
    assert len(catching_up) >= 3, frames[-1]
    print(f"\n--- kubectl projectorset get {name} --watch (first frame of catch-up) ---\n{catching_up[0]}")
    print(f"\n--- kubectl projectorset get {name} --watch (last frame of catch-up) ---\n{catching_up[-1]}")
    lag_line = next(line for line in catching_up[-1].splitlines() if "ETA" in line)
    assert "█" in lag_line or "░" in lag_line
    assert "golive at ≤ 1,500" in lag_line

    scenario.wait_active("v2")
    after = ok(plugin("get", name, "-n", namespace))
    print(f"\n--- kubectl projectorset get {name} (after) ---\n{after}")
    assert after.splitlines()[0].endswith("✔ Active · RolloutComplete")
    assert "[serving]" in next(line for line in after.splitlines() if f"Deployment {name}-v2" in line)
    assert "serving since" in after
    assert any("✔ golive" in line for line in after.splitlines())

    history = ok(plugin("history", name, "-n", namespace))
    print(f"\n--- kubectl projectorset history {name} ---\n{history}")
    rows = {line.split()[0]: line for line in history.splitlines()[1:] if line.startswith("v")}
    assert "AccountProjector 2, AuditProjector 1" in rows["v2"] and rows["v2"].rstrip().endswith("serving")
    assert "AccountProjector 1, AuditProjector 1" in rows["v1"]
    assert f"`undo {name}` goes back to v1" in history

    assert scenario.load is not None
    before_undo = time.monotonic()
    undo = ok(plugin("undo", name, "-n", namespace))
    assert undo.strip() == f"projectorset {name}: rolling back from version v2 to v1 (serving now: v2)"
    scenario.wait_active("v1")
    # For real: the database has the v1 projectors active again, the spec is v1's release.
    assert projector_rows(scenario.database_url) == {
        "AccountProjector": (1, None, None),
        "AuditProjector": (1, None, None),
    }
    spec = scenario.projectorset()["spec"]
    v1 = sample_projectorset("v1", name=name, namespace=namespace, secret=f"{name}-db", service=name)["spec"]
    assert spec["template"] == v1["template"]
    assert spec["projectors"] == v1["projectors"]
    assert not scenario.lost_writes(scenario.load.snapshot())
    assert any(w.status == 201 for w in scenario.load.snapshot() if w.started > before_undo)


def test_manual_promotion_pause_resume_and_refusals(scenario: Scenario, plugin: Plugin) -> None:  # noqa: F811
    name, namespace = scenario.name, scenario.namespace
    scenario.apply("v1")
    scenario.wait_active("v1")
    refused(plugin("promote", name, "-n", namespace), "promotes automatically")
    refused(plugin("abort", name, "-n", namespace), "version v1 serves; no rollout to abort")

    scenario.apply("v2", strategy={"promotion": "Manual", "scaleDownDelaySeconds": 5})
    scenario.wait_for("awaiting promotion", lambda s: s.get("phase") == "Paused" and "spec.promote" in s["message"])
    refused(plugin("retry", name, "-n", namespace), f"projectorset {name} is Paused, not Failed or Aborted")
    assert "Paused · AwaitingPromotion" in ok(plugin("get", name, "-n", namespace)).splitlines()[0]

    assert ok(plugin("pause", name, "-n", namespace)).strip().startswith(f"projectorset {name}: paused")
    scenario.wait_for("paused by user", lambda s: "paused by spec.paused" in s.get("message", ""))
    refused(plugin("pause", name, "-n", namespace), "already paused")
    assert ok(plugin("resume", name, "-n", namespace)).strip() == f"projectorset {name}: resumed"
    scenario.wait_for("awaiting promotion again", lambda s: "spec.promote" in s.get("message", ""))
    refused(plugin("resume", name, "-n", namespace), "is not paused")
    assert scenario.status()["activeVersion"] == "v1"

    assert ok(plugin("promote", name, "-n", namespace)).strip() == f"projectorset {name}: promoted version v2"
    scenario.wait_active("v2")
    refused(plugin("promote", name, "-n", namespace), "version v2 already serves; nothing awaits promotion")


def test_retry_of_a_failed_rollout_abort_and_retry_of_the_aborted_one(
    scenario: Scenario,  # noqa: F811
    plugin: Plugin,
    tmp_path: Path,
) -> None:
    name, namespace = scenario.name, scenario.namespace
    scenario.apply("v1")
    scenario.wait_active("v1")
    # The replay stage fails the first time, is slow the second, and works the third.
    counter = tmp_path / "replay-runs"
    script = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        'case $n in 1) echo "replay broke"; exit 3;; 2) sleep 30;; esac; exec "$0" "$@"'
    )
    scenario.apply("v2", replay=slow_commands(scenario, replay=script))
    scenario.wait_for(
        "the failed rollout, cleaned up",
        lambda s: (
            s.get("phase") == "Failed"
            and any(c["type"] == "ReplayAborted" and c["status"] == "True" for c in s.get("conditions", []))
        ),
    )
    assert scenario.projectorset()["spec"]["abort"] is False  # so `abort: false` alone would change nothing
    tree = ok(plugin("get", name, "-n", namespace))
    assert tree.splitlines()[0].endswith("✖ Failed · StageFailed")
    assert any("✖ replay" in line and "Failed" in line for line in tree.splitlines())

    generation = scenario.projectorset()["metadata"]["generation"]
    assert (
        ok(plugin("retry", name, "-n", namespace)).strip() == f"projectorset {name}: retrying the rollout of version v2"
    )
    assert scenario.projectorset()["metadata"]["generation"] == generation + 1
    status = scenario.wait_for(
        "the second attempt's replay",
        lambda s: s.get("attempt") == 2 and (s.get("replay") or {}).get("stage") == "replay",
    )
    assert status["activeVersion"] == "v1"
    assert any(e["reason"] == "RolloutRetried" for e in scenario.events())

    message = ok(plugin("abort", name, "-n", namespace)).strip()
    assert message == f"projectorset {name}: aborting the rollout of version v2; version v1 keeps serving"
    refused(plugin("abort", name, "-n", namespace), "already aborted")
    scenario.wait_for(
        "the aborted rollout, cleaned up",
        lambda s: (
            s.get("phase") == "Aborted"
            and any(c["type"] == "ReplayAborted" and c["status"] == "True" for c in s.get("conditions", []))
        ),
    )
    assert projector_rows(scenario.database_url)["AccountProjector"] == (1, None, None)
    assert "✖ Aborted" in ok(plugin("get", name, "-n", namespace)).splitlines()[0]

    ok(plugin("retry", name, "-n", namespace))
    scenario.wait_active("v2")
    assert scenario.status()["attempt"] == 3
    assert projector_rows(scenario.database_url)["AccountProjector"] == (2, None, None)
    refused(plugin("retry", name, "-n", namespace), f"projectorset {name} is Active, not Failed or Aborted")


def test_plan_and_errors_for_unknown_sets_bad_manifests_and_a_cluster_without_the_crd(
    scenario: Scenario,  # noqa: F811
    plugin: Plugin,
    local_cluster: LocalCluster,
    tmp_path: Path,
) -> None:
    name, namespace = scenario.name, scenario.namespace
    listed = subprocess.run(
        [str(toolchain.binary("kubectl")), "plugin", "list"],
        env=plugin_env(local_cluster.kubeconfig),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert str(VENV_BIN / "kubectl-projectorset") in listed.stdout
    assert str(VENV_BIN / "kubectl-pjs") in listed.stdout

    scenario.apply("v1")
    scenario.wait_active("v1")
    v2 = tmp_path / "v2.yaml"
    v2.write_text(yaml.safe_dump(sample_projectorset("v2", name=name, namespace=namespace)))
    plan = ok(plugin("plan", name, "-n", namespace, "-f", str(v2)))
    print(f"\n--- kubectl projectorset plan {name} -f v2.yaml ---\n{plan}")
    assert "Based on: the projector versions the operator last reported in status.projectors" in plan
    rows = {
        line.split()[0]: line for line in plan.splitlines() if line.startswith(("AccountProjector", "AuditProjector"))
    }
    assert "Changed" in rows["AccountProjector"] and "replayed" in rows["AccountProjector"]
    assert "Unchanged" in rows["AuditProjector"]
    document = json.loads(ok(plugin("plan", name, "-n", namespace, "-f", str(v2), "-o", "json")))
    assert document["replayed"] == ["AccountProjector"] and document["servingVersion"] == "v1"
    v3 = tmp_path / "v3.yaml"
    v3.write_text(yaml.safe_dump(sample_projectorset("v1", name=name, namespace=namespace)))
    assert "nothing to replay" in ok(plugin("plan", name, "-n", namespace, "-f", str(v3)))

    broken = sample_projectorset("v2", name=name)
    broken["spec"]["version"] = "not a version!"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken))
    refused(plugin("plan", name, "-n", namespace, "-f", str(bad)), "the manifest's spec is invalid: spec.version")
    refused(plugin("plan", name, "-n", namespace, "-f", str(tmp_path / "nope.yaml")), "cannot read")
    refused(plugin("get", "nope", "-n", namespace), f'projectorset "nope" not found in namespace "{namespace}"')
    refused(plugin("promote", "nope", "-n", namespace), 'projectorset "nope" not found')
    refused(plugin("get", name, "-n", "no-such-namespace"), 'not found in namespace "no-such-namespace"')

    # A second control plane, without the CRD.
    bare = LocalCluster.start(tmp_path / "bare", with_kubelet=False)
    try:
        refused(plugin("get", name, kubeconfig=bare.kubeconfig), "the cluster has no ProjectorSet CRD")
        refused(plugin("abort", name, kubeconfig=bare.kubeconfig), "the cluster has no ProjectorSet CRD")
    finally:
        bare.stop()
