"""``make bench-scale``: one operator serving many ProjectorSets, measured at rest and during a rollout.

On the local cluster and one PostgreSQL started with ``max_connections=100`` (PostgreSQL's default),
all in one namespace:

- 2 x ``--probes`` sample applications (real pods, real replay Jobs, writers through the Service) time
  a rollout: ``solo-*`` are upgraded v1 -> v2 before any other set exists (the single-set figure),
  ``busy-*`` are created with the crowd and upgraded v1 -> v2 while all the others rest;
- the crowd: the other ProjectorSets, cheap ones. Each has its own event store (a schema of one
  shared database, so all of them share one connection target), one projector and one pod, on
  a virtual node that reports pods Ready without running anything (``testbed.virtual_node``):
  the process kubelet gives each pod an address of one /24 and a thread, so it runs a few hundred
  at most, and what is measured here is the operator (and the real controllers), not processes.

The figures: the time from the first creation until every set is Active; then, after the sets
settle, over one minute at rest, the operator's CPU and its API requests (from the API server's
audit log; a watch that ends and is renewed counts as one request); at the end of that minute its
resident memory and threads, and the idle connections it holds (pg_stat_activity). The last line:

    scale: projectorsets=<n> all_active_s=<n> rss_mib=<n> threads=<n> db_connections_idle=<n>
           idle_cpu_pct=<n> api_requests_per_min=<n>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client

from projectorset.adapters.kubejson import KubeJson
from testbed import stopping, toolchain
from testbed.cluster import OPERATOR_USER, LocalCluster
from testbed.crowd import create_crowd, create_event_stores, wait_all_active
from testbed.postgres import PostgresServer
from testbed.scenario import OperatorProcess, Scenario, UpgradeResult
from testbed.virtual_node import VirtualNode, pod_placement
from testbed.workloads import api_client

NAMESPACE = "scale"
APPLICATION_NAME = "projectorset-operator"  # what the operator's connections call themselves
SETTLE_SECONDS = 60.0  # after all are Active: trailing passes end and idle pools close
REST_SECONDS = 60.0


# ---- measuring the operator ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/PID/stat (after the command name in parentheses): utime, stime.
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def operator_connections(url: str) -> dict[str, int]:
    """The operator's connections on the whole server, by state (pg_stat_activity)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(state, ''), count(*) FROM pg_stat_activity WHERE application_name = %s GROUP BY 1",
            (APPLICATION_NAME,),
        ).fetchall()
    return {state: int(count) for state, count in rows}


def audit_events(cluster: LocalCluster, since: float, until: float) -> Iterator[dict[str, Any]]:
    """The API server's completed requests received between two moments (epoch seconds)."""
    with cluster.audit_log.open() as log:
        for line in log:
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete":
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if since <= received < until:
                yield event


def audited_requests(cluster: LocalCluster, since: float, until: float) -> dict[str, int]:
    """The operator identity's requests between two moments (epoch seconds), by verb."""
    verbs: dict[str, int] = {}
    for event in audit_events(cluster, since, until):
        if event.get("user", {}).get("username") == OPERATOR_USER:
            verbs[event.get("verb", "?")] = verbs.get(event.get("verb", "?"), 0) + 1
    return verbs


@dataclass
class AtRest:
    rss_mib: float
    peak_rss_mib: float
    threads: int
    connections: dict[str, int]
    cpu_pct: float
    requests: dict[str, int]
    seconds: float

    @property
    def requests_per_min(self) -> float:
        return sum(self.requests.values()) * 60.0 / self.seconds


def measure_at_rest(operator: OperatorProcess, cluster: LocalCluster, postgres_url: str, seconds: float) -> AtRest:
    assert operator.process is not None
    pid = operator.process.pid
    cpu_before, since, began = cpu_seconds(pid), time.time(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    cpu = (cpu_seconds(pid) - cpu_before) / elapsed * 100
    until = time.time()
    status = proc_status(pid)
    time.sleep(2)  # the audit log is written in batches
    return AtRest(
        rss_mib=int(status["VmRSS"].split()[0]) / 1024,
        peak_rss_mib=int(status["VmHWM"].split()[0]) / 1024,
        threads=int(status["Threads"]),
        connections=operator_connections(postgres_url),
        cpu_pct=cpu,
        requests=audited_requests(cluster, since, until),
        seconds=elapsed,
    )


# ---- the environment ----------------------------------------------------------------------------------


@dataclass
class ScaleEnvironment:
    workdir: Path
    cluster: LocalCluster
    postgres: PostgresServer
    api: client.ApiClient


@contextmanager
def scale_environment(prefix: str, controller_qps: int, max_connections: int = 100) -> Iterator[ScaleEnvironment]:
    """The local cluster (audit log on, controllers at ``controller_qps``, 0: Kubernetes' default),
    the virtual node for cheap pods, and one PostgreSQL; all stopped and removed afterwards."""
    toolchain.ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    # Each part is stopped even if the signal comes while the next one starts.
    with ExitStack() as started:
        started.callback(shutil.rmtree, workdir, ignore_errors=True)
        cluster = started.enter_context(
            LocalCluster.start(workdir / "cluster", audit_log=True, controller_qps=controller_qps or None)
        )
        postgres = started.enter_context(PostgresServer.start(max_connections=max_connections))
        api = api_client(str(cluster.kubeconfig))
        virtual_node = VirtualNode(KubeJson(api)).start()
        started.callback(virtual_node.stop)
        yield ScaleEnvironment(workdir, cluster, postgres, api)


# ---- rollouts ------------------------------------------------------------------------------------------


def probe(cluster: LocalCluster, api: client.ApiClient, postgres: PostgresServer, name: str, workdir: Path) -> Scenario:
    scenario = Scenario(cluster, api, postgres, NAMESPACE, workdir / name, name=name, replay_event_overhead_ms=None)
    (workdir / name).mkdir(parents=True, exist_ok=True)
    scenario.prepare()
    return scenario


def timed_rollout(scenario: Scenario) -> UpgradeResult:
    """v1 -> v2 under writes through the Service; the writers stop afterwards."""
    scenario.start_traffic(writers=2)
    time.sleep(2)
    try:
        return scenario.upgrade("v1", "v2", timeout=900)
    finally:
        scenario.close()  # this scenario's writers and proxy (it owns no operator)
        scenario.load = scenario.proxy = None


def switch_ms(results: list[UpgradeResult]) -> str:
    values = [r.active_to_switch_ms for r in results if r.active_to_switch_ms is not None]
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.0f} ms ({', '.join(f'{v:.0f}' for v in values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.bench_scale", description=__doc__)
    parser.add_argument("--sets", type=int, default=1000, help="ProjectorSets in all (crowd and probes)")
    parser.add_argument("--probes", type=int, default=2, help="timed rollouts alone and among the others")
    parser.add_argument("--max-connections", type=int, default=100, help="PostgreSQL's max_connections")
    parser.add_argument(
        "--controller-qps",
        type=int,
        default=100,
        help="requests/s each controller and the scheduler may make (0: Kubernetes' defaults, 20 and 50)",
    )
    arguments = parser.parse_args(argv)
    crowd = arguments.sets - 2 * arguments.probes
    if crowd < 0:
        parser.error("--sets must be at least twice --probes")

    rate = arguments.controller_qps or "Kubernetes' default"
    print(f"[bench-scale] controllers' and scheduler's API rate limit: {rate} qps", flush=True)
    with scale_environment("projectorset-bench-scale-", arguments.controller_qps, arguments.max_connections) as env:
        return _measure(arguments, crowd, env)


def _measure(arguments: argparse.Namespace, crowd: int, env: ScaleEnvironment) -> int:
    cluster, postgres, api, workdir = env.cluster, env.postgres, env.api, env.workdir
    operator: OperatorProcess | None = None
    scenarios: list[Scenario] = []
    try:
        # The single-set figure: each solo probe alone with the operator.
        solo_results: list[UpgradeResult] = []
        for number in range(arguments.probes):
            scenario = probe(cluster, api, postgres, f"solo-{number}", workdir)
            scenarios.append(scenario)
            if operator is None:
                operator = scenario.start_operator(kubeconfig=cluster.user_kubeconfig(OPERATOR_USER))
                scenario.operator = None  # stopped at the end, not with this scenario
            scenario.apply("v1")
            scenario.wait_active("v1", timeout=600)
            result = timed_rollout(scenario)
            print(f"[bench-scale] alone: {result.summary()}", flush=True)
            solo_results.append(result)
        assert operator is not None

        # The crowd and the busy probes, all created at once.
        print(f"[bench-scale] creating {crowd} event stores", flush=True)
        crowd_url = create_event_stores(postgres, crowd, "crowd")
        busy = [probe(cluster, api, postgres, f"busy-{number}", workdir) for number in range(arguments.probes)]
        scenarios.extend(busy)
        print(f"[bench-scale] creating {crowd + len(busy)} ProjectorSets", flush=True)
        began = time.monotonic()
        for scenario in busy:
            scenario.apply("v1")
        create_crowd(api, NAMESPACE, crowd_url, crowd, pod_placement())
        wait_all_active(api, NAMESPACE, arguments.sets, timeout=3600)
        all_active_s = time.monotonic() - began
        print(f"[bench-scale] all {arguments.sets} Active after {all_active_s:.0f} s", flush=True)

        time.sleep(SETTLE_SECONDS)
        rest = measure_at_rest(operator, cluster, postgres.url, REST_SECONDS)
        print(
            f"[bench-scale] at rest over {rest.seconds:.0f} s: cpu {rest.cpu_pct:.2f} % of a core, "
            f"API requests by verb {rest.requests}, operator connections by state {rest.connections}, "
            f"RSS {rest.rss_mib:.0f} MiB (peak {rest.peak_rss_mib:.0f} MiB), {rest.threads} threads",
            flush=True,
        )

        busy_results: list[UpgradeResult] = []
        for scenario in busy:
            result = timed_rollout(scenario)
            print(f"[bench-scale] among {arguments.sets}: {result.summary()}", flush=True)
            busy_results.append(result)

        total = arguments.sets
        print(f"\nrollout of one set, active_to_switch: alone {switch_ms(solo_results)}")
        print(f"rollout of one set among {total - 1} at rest, active_to_switch: {switch_ms(busy_results)}")
        lost = sum(r.lost for r in solo_results + busy_results)
        print(f"acknowledged writes lost in the rollouts: {lost}")
        print(
            f"scale: projectorsets={total} all_active_s={all_active_s:.0f} rss_mib={rest.rss_mib:.0f} "
            f"threads={rest.threads} db_connections_idle={rest.connections.get('idle', 0)} "
            f"idle_cpu_pct={rest.cpu_pct:.1f} api_requests_per_min={rest.requests_per_min:.0f}"
        )
        return 0 if lost == 0 else 1
    finally:
        for scenario in scenarios:
            scenario.close()
        if operator is not None:
            operator.stop()


if __name__ == "__main__":
    sys.exit(stopping.run(main))
