"""``make bench``: upgrades measured, not claimed.

For each event count (``--events 10000,100000``), ``--runs`` fresh upgrades v1 -> v2 of the
sample application on the local cluster, each with that many events already in the store
and writers going through the Service. Per run: the total upgrade time, the time spent in
the replay Jobs (their own start-to-completion times), the operator's overhead (the rest),
the time from "active in the database" to "Service switched", the refused-write window, the
operator's peak memory and its API requests (from the API server's audit log), and what the
stage Jobs printed: each catch-up's events and seconds, golive's tail replayed under its locks
and how long it held writers back.
Per event count: the median and p95 of the refused-write windows and of golive's locked time.
Then one run with many ProjectorSets for the operator's memory and API requests at rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from kubernetes import client

from sampleapp.config import Settings
from sampleapp.releases import get_release
from sampleapp.seed import seed
from testbed import stopping, toolchain
from testbed.cluster import OPERATOR_USER, LocalCluster
from testbed.postgres import PostgresServer
from testbed.scenario import Scenario, UpgradeResult
from testbed.workloads import api_client


def seed_events(database_url: str, count: int, accounts: int = 1000) -> None:
    """``count`` deposits spread over ``accounts``, gated and projected by v1 as the application
    would have written them (``sampleapp.seed``)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed(conn, Settings(database_url=database_url, release="v1"), get_release("v1"), count, accounts)
        conn.execute("ANALYZE sequent_schema.events")


def job_seconds(api: client.ApiClient, namespace: str, version: str) -> float:
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=f"projectorset.io/version={version}")
    total = 0.0
    for job in jobs.items:
        if job.status.start_time and job.status.completion_time:
            total += (job.status.completion_time - job.status.start_time).total_seconds()
    return total


def api_requests(cluster: LocalCluster, since: float) -> int:
    """Requests the operator's identity made since ``since`` (epoch seconds), from the audit log."""
    count = 0
    with cluster.audit_log.open() as log:
        for line in log:
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete" or event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if received.timestamp() >= since:
                count += 1
    return count


# What the sample app's catch-up and golive print (tests/sampleapp/replay.py, _replay and golive).
CATCHUP_LINE = re.compile(r"(\d+) events one by one in ([\d.]+) s with (\d+) at a time")
GOLIVE_LINE = re.compile(r"replayed the tail of (\d+) events one by one .*; writers held back (\d+) ms")


@dataclass
class Replayed:
    """What one catch-up or golive replayed one by one, and in how long."""

    events: int
    seconds: float
    workers: int = 1

    def __str__(self) -> str:
        return f"{self.events}/{self.seconds:.2f}s"


def stage_outputs(api: client.ApiClient, namespace: str, version: str, stage: str) -> list[str]:
    """The logs of the version's Jobs of one stage, oldest Job first."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    selector = f"projectorset.io/version={version},projectorset.io/stage={stage}"
    jobs = sorted(
        batch.list_namespaced_job(namespace, label_selector=selector).items, key=lambda j: j.metadata.creation_timestamp
    )
    outputs = []
    for job in jobs:
        pods = ",".join(f"{key}={value}" for key, value in (job.spec.selector.match_labels or {}).items())
        for pod in core.list_namespaced_pod(namespace, label_selector=pods).items:
            try:
                outputs.append(core.read_namespaced_pod_log(pod.metadata.name, namespace) or "")
            except client.ApiException:
                continue
    return outputs


def replayed(api: client.ApiClient, namespace: str, version: str) -> tuple[list[Replayed], Replayed | None]:
    """Each catch-up's events and seconds, and golive's tail and the time it held writers back."""
    catchups = [
        Replayed(int(m.group(1)), float(m.group(2)), int(m.group(3)))
        for text in stage_outputs(api, namespace, version, "catchup")
        if (m := CATCHUP_LINE.search(text))
    ]
    golive = None
    for text in stage_outputs(api, namespace, version, "golive"):
        if m := GOLIVE_LINE.search(text):
            golive = Replayed(int(m.group(1)), float(m.group(2)) / 1000)
    return catchups, golive


@dataclass
class Run:
    events: int
    result: UpgradeResult
    jobs_s: float
    peak_memory_mib: float
    api_requests: int
    catchups: list[Replayed]
    golive: Replayed | None

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.result.total_s - self.jobs_s)


def one_upgrade(
    cluster: LocalCluster, api: client.ApiClient, postgres: PostgresServer, events: int, number: int, workdir: Path
) -> Run:
    namespace = f"bench-{events}-{number}"
    scenario = Scenario(cluster, api, postgres, namespace, workdir / namespace, replay_event_overhead_ms=None)
    (workdir / namespace).mkdir(parents=True)
    try:
        scenario.prepare()
        seed_events(scenario.database_url, events)
        operator_kubeconfig = cluster.user_kubeconfig(OPERATOR_USER, groups=["system:masters"])
        operator = scenario.start_operator(kubeconfig=operator_kubeconfig)
        scenario.apply("v1")
        scenario.wait_active("v1", timeout=600)
        scenario.start_traffic(writers=2)
        time.sleep(2)
        since = time.time()
        result = scenario.upgrade("v1", "v2", timeout=3600)
        catchups, golive = replayed(api, namespace, "v2")
        return Run(
            events=events,
            result=result,
            jobs_s=job_seconds(api, namespace, "v2"),
            peak_memory_mib=operator.peak_memory_kib() / 1024,
            api_requests=api_requests(cluster, since),
            catchups=catchups,
            golive=golive,
        )
    finally:
        scenario.close()
        client.CoreV1Api(api).delete_namespace(namespace)


def many_projectorsets(
    cluster: LocalCluster, api: client.ApiClient, postgres: PostgresServer, count: int, workdir: Path
) -> tuple[float, int, float]:
    """``count`` ProjectorSets in one namespace, all Active: the operator's memory and API requests
    over a quiet minute."""
    namespace = "bench-many"
    scenario = Scenario(cluster, api, postgres, namespace, workdir / namespace, replay_event_overhead_ms=None)
    (workdir / namespace).mkdir(parents=True)
    try:
        scenario.prepare()
        operator = scenario.start_operator(kubeconfig=cluster.user_kubeconfig(OPERATOR_USER, groups=["system:masters"]))
        names = [f"app-{n}" for n in range(count)]
        for name in names:
            scenario.add_application(name)
        deadline = time.monotonic() + 900
        while True:
            phases = [scenario.status_of(name).get("phase") for name in names]
            if all(phase == "Active" for phase in phases):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"not all Active: {phases}")
            time.sleep(2)
        since = time.time()
        time.sleep(60)
        return operator.peak_memory_kib() / 1024, api_requests(cluster, since), 60.0
    finally:
        scenario.close()
        client.CoreV1Api(api).delete_namespace(namespace)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def report(runs: list[Run]) -> None:
    header = "events   run  total_s  jobs_s  overhead_s  active_to_switch_ms  refused_window_ms  lost"
    print(f"\n{header}  peak_MiB  api_requests  golive_tail  golive_locked_ms  catchups(events/s)")
    for index, run in enumerate(runs):
        r = run.result
        switch = float("nan") if r.active_to_switch_ms is None else r.active_to_switch_ms
        tail, locked = (run.golive.events, run.golive.seconds * 1000) if run.golive else ("n/a", float("nan"))
        print(
            f"{run.events:>7} {index:>4} {r.total_s:>8.1f} {run.jobs_s:>7.1f} {run.overhead_s:>11.1f} "
            f"{switch:>20.0f} {r.refused_window_ms:>18.0f} {r.lost:>5} "
            f"{run.peak_memory_mib:>9.1f} {run.api_requests:>13} {tail:>12} {locked:>17.0f}  "
            f"{' '.join(map(str, run.catchups)) or '-'}"
        )
    for events in sorted({run.events for run in runs}):
        group = [run for run in runs if run.events == events]
        switches = [run.result.active_to_switch_ms for run in group if run.result.active_to_switch_ms is not None]
        windows = [run.result.refused_window_ms for run in group]
        locked_ms = [run.golive.seconds * 1000 for run in group if run.golive is not None]
        print(
            f"events={events}: total_s median {statistics.median(r.result.total_s for r in group):.1f}, "
            f"jobs_s median {statistics.median(r.jobs_s for r in group):.1f}, "
            f"overhead_s median {statistics.median(r.overhead_s for r in group):.1f}, "
            f"active_to_switch_ms p50 {percentile(switches, 0.5):.0f} p95 {percentile(switches, 0.95):.0f}, "
            f"refused_window_ms median {statistics.median(windows):.0f} p95 {percentile(windows, 0.95):.0f}, "
            f"golive_locked_ms median {percentile(locked_ms, 0.5):.0f} p95 {percentile(locked_ms, 0.95):.0f}, "
            f"lost total {sum(r.result.lost for r in group)}, "
            f"peak_MiB max {max(r.peak_memory_mib for r in group):.1f}, "
            f"api_requests median {statistics.median(r.api_requests for r in group):.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.bench", description=__doc__)
    parser.add_argument("--events", default="10000,100000", help="comma-separated event counts")
    parser.add_argument("--runs", type=int, default=3, help="upgrades per event count")
    parser.add_argument("--many", type=int, default=20, help="ProjectorSets for the at-rest measure (0: skip)")
    arguments = parser.parse_args(argv)
    counts = [int(part) for part in arguments.events.split(",") if part.strip()]
    toolchain.ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="projectorset-bench-"))
    runs: list[Run] = []
    # Each part is stopped even if the signal comes while the next one starts.
    with contextlib.ExitStack() as started:
        started.callback(shutil.rmtree, workdir, ignore_errors=True)
        cluster = started.enter_context(LocalCluster.start(workdir / "cluster", audit_log=True))
        postgres = started.enter_context(PostgresServer.start())
        api = api_client(str(cluster.kubeconfig))
        for events in counts:
            for number in range(arguments.runs):
                run = one_upgrade(cluster, api, postgres, events, number, workdir)
                print(f"[bench] events={events} run={number}: {run.result.summary()}", flush=True)
                runs.append(run)
        report(runs)
        if arguments.many:
            memory, requests, seconds = many_projectorsets(cluster, api, postgres, arguments.many, workdir)
            print(
                f"\nmany ProjectorSets: {arguments.many} Active; operator peak memory {memory:.1f} MiB; "
                f"{requests} API requests in {seconds:.0f} s at rest ({requests / seconds:.2f}/s)"
            )
        return 0 if all(run.result.lost == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(stopping.run(main))
