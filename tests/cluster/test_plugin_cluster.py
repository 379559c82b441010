"""The kubectl plugin on the local cluster, run the way a user runs it: ``kubectl projectorset ...``
(and ``kubectl pjs``) found by kubectl's plugin mechanism on PATH, during real rollouts of the
sample application by the operator (the scenario of test_upgrade.py); and kubectl's flags
(``--kubeconfig``, ``--context``, ``--as``, ``--as-group``, ``--request-timeout``) against the real
API server, its RBAC and a slow network; and what a terminal shows under ``--watch``."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest
import yaml

from support.conditions import failed_and_aborted, is_true
from support.traffic import install_v1_with_traffic
from testbed import toolchain
from testbed.cluster import LocalCluster
from testbed.manifests import sample_projectorset
from testbed.proxy import pipe
from testbed.scenario import Scenario
from testbed.sequent_schema import projector_rows

Plugin = Callable[..., "subprocess.CompletedProcess[str]"]
Kubectl = Plugin  # the conftest's kubectl fixture: run with arguments, get what it printed
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
    # Output to a pipe is plain text, as kubectl's.
    assert "\x1b" not in result.stdout, result.stdout
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout}"
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def watch_frames(
    local_cluster: LocalCluster, running: Scenario, enough: Callable[[list[str]], bool], timeout: float = 240
) -> list[str]:
    """``kubectl projectorset get --watch`` into a pipe until its frames are ``enough``, then Ctrl-C."""
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
        # Each frame after the last, a blank line between them. The last may still be being
        # written: only those followed by the next one count.
        return "".join(out).split("\n\nProjectorSet ")[:-1]

    while not enough(frames()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=20)
    reader.join(5)
    assert process.returncode == 0, process.stderr.read()
    assert "\x1b" not in "".join(out)
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
    assert re.search(r"\[[━╸╺ ]{24}\] +\d+%  lag [\d,]+ events \(golive at ≤ 1,500\)  ETA ", lag_line), lag_line

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
    scenario.wait_for("the failed rollout, cleaned up", failed_and_aborted)
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
        lambda s: s.get("phase") == "Aborted" and is_true(s, "ReplayAborted"),
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


# ---- kubectl's flags and a terminal -------------------------------------------------------------


def kubeconfig_for(local_cluster: LocalCluster, path: Path, contexts: dict[str, tuple[str, str | None]]) -> Path:
    """The local cluster's kubeconfig (its admin's certificates) with ``contexts``: name ->
    (server, namespace). The first context is the current one."""
    config = json.loads(local_cluster.kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["name"]
    config["clusters"] = [
        {"name": name, "cluster": {**cluster, "server": server}} for name, (server, _) in contexts.items()
    ]
    config["contexts"] = [
        {"name": name, "context": {"cluster": name, "user": user, **({"namespace": ns} if ns else {})}}
        for name, (_, ns) in contexts.items()
    ]
    config["current-context"] = next(iter(contexts))
    path.write_text(json.dumps(config))
    return path


class SlowNetwork:
    """A TCP relay to the API server that holds each new connection ``delay`` seconds first."""

    def __init__(self, server: str, delay: float) -> None:
        host, port = server.removeprefix("https://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.server = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(downstream,), daemon=True).start()

    def _relay(self, downstream: socket.socket) -> None:
        time.sleep(self.delay)  # a slow way to the API server is the case under test
        with downstream, socket.create_connection(self.upstream) as upstream:
            back = threading.Thread(target=pipe, args=(upstream, downstream), daemon=True)
            back.start()
            pipe(downstream, upstream)
            back.join()

    def close(self) -> None:
        self.listener.close()


def viewer_rbac(namespace: str, group: str) -> str:
    """What the README says a user of `get` needs, granted to ``group``."""
    rules = [
        {"apiGroups": ["projectorset.io"], "resources": ["projectorsets"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
    ]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role"}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "subjects": [{"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}],
        "roleRef": {"kind": "Role", "name": "projectorset-viewer", "apiGroup": "rbac.authorization.k8s.io"},
    }
    metadata = {"name": "projectorset-viewer", "namespace": namespace}
    return yaml.safe_dump_all([{**role, "metadata": metadata, "rules": rules}, {**binding, "metadata": metadata}])


def until_ok(attempt: Callable[[], subprocess.CompletedProcess[str]], timeout: float = 30) -> str:
    """RBAC changes reach the API server's authorizer within moments, not at once."""
    deadline = time.monotonic() + timeout
    result = attempt()
    while result.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        result = attempt()
    return ok(result)


def in_terminal(local_cluster: LocalCluster, args: list[str], frames: int, **env: str) -> tuple[str, list[str]]:
    """``kubectl projectorset ARGS`` in a pseudo-terminal of 160x60 until ``frames`` trees were drawn,
    then Ctrl-C: what it wrote, and the screen a user sees (read by the terminal emulator pyte)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
    environment = {k: v for k, v in plugin_env(local_cluster.kubeconfig).items() if k != "NO_COLOR"}
    process = subprocess.Popen(
        [str(toolchain.binary("kubectl")), "projectorset", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**environment, "TERM": "xterm-256color", **env},
        start_new_session=True,
    )
    os.close(slave)
    written = b""
    deadline = time.monotonic() + 60
    while written.count(b"ProjectorSet ") < frames and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            written += os.read(master, 65536)
    process.send_signal(signal.SIGINT)
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the plugin has exited and all is read
            break
        if not chunk:
            break
        written += chunk
    os.close(master)
    assert process.wait(timeout=20) == 0, written.decode(errors="replace")
    raw = written.decode()
    screen = pyte.Screen(160, 60)
    pyte.Stream(screen).feed(raw)
    return raw, [line.rstrip() for line in screen.display if line.strip()]


# Any SGR sequence that sets a colour.
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|4[0-7]|9[0-7]|10[0-7]|38|48)[;m]")


def test_kubectls_flags_pick_the_context_impersonate_and_time_out(
    plugin: Plugin,
    kubectl: Kubectl,
    local_cluster: LocalCluster,
    projectorset_crd: None,
    tmp_path: Path,
) -> None:
    namespace = f"plugin-flags-{int(time.time()) % 100000}"
    kubectl("create", "namespace", namespace, check=True)
    manifest = sample_projectorset("v1", name="blog", namespace=namespace, service="blog")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=True)

    # --kubeconfig and --context: the file's current context points at a server that is down.
    config = kubeconfig_for(
        local_cluster,
        tmp_path / "two-contexts",
        {"gone": ("https://127.0.0.1:1", None), "local": (local_cluster.server, namespace)},
    )
    refused(plugin("--kubeconfig", str(config), "get", "blog"), "cannot reach the API server at https://127.0.0.1:1")
    tree = ok(plugin("get", "blog", "--kubeconfig", str(config), "--context", "local"))
    print(f"\n--- kubectl projectorset get blog --context local (a set no operator reconciled) ---\n{tree}")
    lines = tree.splitlines()
    assert lines[0] == f"ProjectorSet {namespace}/blog   ◌ Pending"  # the context's namespace
    assert lines[1] == "version v1 · serving nothing · promotion Automatic"
    assert "├── Service blog → no version of this set" in lines
    assert "│   none reported yet" in lines and lines[-2:] == ["└── Events (last 0)", "    none"]
    # KUBECONFIG names the file, as for kubectl; --context must be one of it.
    assert ok(plugin("--context", "local", "get", "blog", kubeconfig=config)) == tree
    refused(
        plugin("get", "blog", "--context", "staging", kubeconfig=config),
        "--context: context 'staging' is not in the kubeconfig",
    )
    listed = ok(plugin("get", "--context", "local", kubeconfig=config)).splitlines()
    assert [line.split()[:5] for line in listed] == [
        ["NAME", "VERSION", "SERVING", "PHASE", "REASON"],
        ["blog", "v1", "-", "Pending", "-"],
    ]
    assert ["plugin-flags-" in line for line in ok(plugin("get", "-A")).splitlines()[1:]].count(True) == 1

    # --as: the API server's RBAC refuses alice, then lets her group read; one line per group.
    refused(
        plugin("get", "blog", "-n", namespace, "--as", "alice"),
        f'forbidden: projectorsets.projectorset.io "blog" is forbidden: User "alice" cannot get resource '
        f'"projectorsets" in API group "projectorset.io" in the namespace "{namespace}"',
    )
    kubectl("apply", "-f", "-", input=viewer_rbac(namespace, "projectorset-viewers"), check=True)
    as_viewer = ["-n", namespace, "--as", "alice", "--as-group", "others", "--as-group", "projectorset-viewers"]
    assert until_ok(lambda: plugin("get", "blog", *as_viewer)).splitlines()[0] == lines[0]
    refused(
        plugin("pause", "blog", *as_viewer),
        'User "alice" cannot patch resource "projectorsets" in API group "projectorset.io"',
    )
    refused(plugin("get", "blog", "-n", namespace, "--as", "alice", "--as-group", "others"), "forbidden")

    # --request-timeout: the API server behind a network that holds each connection 5 s.
    slow = SlowNetwork(local_cluster.server, delay=5)
    try:
        behind = kubeconfig_for(local_cluster, tmp_path / "slow", {"slow": (slow.server, namespace)})
        refused(
            plugin("get", "blog", "--request-timeout", "1s", kubeconfig=behind),
            f"the API server at {slow.server} did not answer within 1s (--request-timeout)",
        )
        assert ok(plugin("get", "blog", "--request-timeout", "30s", kubeconfig=behind)) == tree
    finally:
        slow.close()
    bad = plugin("get", "blog", "--request-timeout", "soon")
    assert bad.returncode == 2 and "argument --request-timeout: 'soon' is not a duration" in bad.stderr

    # --watch in a terminal: redrawn in place, in colour; NO_COLOR takes the colour away.
    raw, screen = in_terminal(local_cluster, ["get", "blog", "-n", namespace, "-w", "--interval", "0.3"], frames=3)
    print("\n--- the terminal under kubectl projectorset get blog --watch ---\n" + "\n".join(screen))
    assert raw.count(f"ProjectorSet {namespace}/blog") >= 3 and "\x1b[2J" not in raw
    assert [line for line in screen if line.startswith("ProjectorSet ")] == [lines[0]]
    assert screen[-2:] == lines[-2:]
    assert COLOUR.search(raw)
    raw, screen = in_terminal(
        local_cluster, ["get", "blog", "-n", namespace, "-w", "--interval", "0.3"], frames=2, NO_COLOR="1"
    )
    assert not COLOUR.search(raw) and [line for line in screen if line.startswith("ProjectorSet ")] == [lines[0]]
