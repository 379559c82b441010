"""``make demo``: the operator's main job on an embedded default.

Starts a local control plane (built from Go modules on first use) and a PostgreSQL, installs
the CRD, runs the operator, deploys the sample application v1 with traffic through its
Service, upgrades it to v2 under writes while showing live progress, prints one summary line,
and ends with the upgraded set as ``kubectl projectorset get`` draws it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client

from testbed import stopping, toolchain
from testbed.cluster import LocalCluster
from testbed.postgres import PostgresServer
from testbed.scenario import Scenario
from testbed.workloads import api_client


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


class ProgressPrinter:
    """Prints a line whenever the ProjectorSet's phase, stage or lag changes (or every 5 s)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.last = ""
        self.printed_at = 0.0

    def __call__(self) -> None:
        status = self.scenario.status()
        replay = status.get("replay") or {}
        writes = self.scenario.load.snapshot() if self.scenario.load else []
        accepted = sum(1 for w in writes if w.status == 201)
        refused = len(writes) - accepted
        lag = replay.get("lag")
        line = (
            f"phase={status.get('phase', '-'):<11} stage={replay.get('stage') or '-':<9} "
            f"replay_state={replay.get('state') or '-':<11} lag={'-' if lag is None else lag}"
            f"  | {status.get('message', '')[:70]}"
        )
        if line != self.last or time.monotonic() - self.printed_at > 5:
            say(f"{line}  [writes ok={accepted} refused={refused}]")
            self.last, self.printed_at = line, time.monotonic()


def plugin_tree(scenario: Scenario) -> str:
    """The set as ``kubectl projectorset get`` shows it: kubectl finds the plugin (a console script
    of the package) on PATH, as it does for a user who installed the package."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        [str(toolchain.binary("kubectl")), "projectorset", "get", scenario.name, "-n", scenario.namespace],
        env=dict(os.environ, KUBECONFIG=str(scenario.cluster.kubeconfig), PATH=path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.rstrip() if result.returncode == 0 else result.stderr.rstrip()


def run(source: str, target: str, writers: int, keep: bool) -> int:
    started = time.monotonic()
    say("building or finding the Kubernetes binaries (first run builds them from Go modules)")
    toolchain.ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="projectorset-demo-"))
    cluster = postgres = scenario = None
    try:
        say("starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler, process kubelet)")
        cluster = LocalCluster.start(workdir / "cluster")
        say(f"control plane ready in {cluster.started_in:.1f} s (KUBECONFIG={cluster.kubeconfig})")
        say("starting PostgreSQL")
        postgres = PostgresServer.start()
        api = api_client(str(cluster.kubeconfig))
        scenario = Scenario(cluster, api, postgres, "demo", workdir, replay_event_overhead_ms=None)
        say("installing the CRD, the database, the Secret and the Service")
        scenario.prepare()
        say("starting the operator")
        scenario.start_operator()
        say(f"deploying the sample application {source}")
        scenario.apply(source)
        scenario.wait_active(source, on_poll=ProgressPrinter(scenario))
        say(f"{source} serves; starting {writers} writers through the Service")
        load = scenario.start_traffic(writers)
        while sum(1 for w in load.snapshot() if w.status == 201) < 50:
            time.sleep(0.1)
        say(f"kubectl apply: {source} -> {target}")
        result = scenario.upgrade(source, target, on_poll=ProgressPrinter(scenario))
        load.stop()
        problems = scenario.lost_writes(load.snapshot())
        for problem in problems:
            say(f"LOST: {problem}")
        say(f"phases seen: {' -> '.join(result.phases)}")
        for event in scenario.events():
            say(f"event {event['type']:<7} {event['reason']:<22} {event['message'][:90]}")
        say(f"demo took {time.monotonic() - started:.0f} s in all")
        if keep:
            say(f"keeping the cluster: KUBECONFIG={cluster.kubeconfig}; press Ctrl-C to stop")
            while True:
                time.sleep(3600)
        print(result.summary(), flush=True)
        say(f"kubectl projectorset get {scenario.name} -n {scenario.namespace}")
        print(plugin_tree(scenario), flush=True)
        return 0 if result.lost == 0 and not problems else 1
    finally:
        if scenario is not None:
            scenario.close()
        if cluster is not None:
            cluster.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        client.Configuration.set_default(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.demo", description=__doc__)
    parser.add_argument("--from", dest="source", default="v1", choices=["v1", "v2", "v3"])
    parser.add_argument("--to", dest="target", default="v2", choices=["v1", "v2", "v3"])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep everything running at the end")
    arguments = parser.parse_args(argv)
    return run(arguments.source, arguments.target, arguments.writers, arguments.keep)


if __name__ == "__main__":
    sys.exit(stopping.run(main))
