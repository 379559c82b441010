"""``make profile-scale``: where the time and memory of many starting ProjectorSets go.

Not a benchmark with a verdict (``make bench-scale`` is): a tool for the next change. It starts
the local cluster (controllers at ``--controller-qps``), one PostgreSQL and the operator, creates
N cheap sets at once (``testbed.crowd``, pods on the virtual node), waits until all are Active,
lets the operator rest, and prints:

- the time to all Active and each component's CPU seconds meanwhile;
- the API requests by user, verb and resource (the API server's audit log): how many passes a
  set made is the operator's ``get projectorsets`` count divided by N;
- the operator's resident memory at the start, at all Active and after the rest, and after the
  rest its memory by mapping (``/proc/PID/smaps``: ``[anon]`` and ``[heap]`` are Python's objects
  and what fragments them; the rest are shared libraries).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

from testbed import stopping
from testbed.bench_scale import ScaleEnvironment, audit_events, cpu_seconds, proc_status, scale_environment
from testbed.cluster import OPERATOR_USER
from testbed.crowd import create_crowd, create_event_stores, phases
from testbed.scenario import OperatorProcess, install_crd
from testbed.virtual_node import pod_placement

NAMESPACE = "scale"


def rss_mib(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def wait_until_serving(operator: OperatorProcess, timeout: float = 120.0) -> None:
    """Until the operator answers its liveness probe: started, imports done, watches open."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the operator never answered its liveness probe")
        time.sleep(0.5)


def memory_by_mapping(pid: int) -> collections.Counter[str]:
    """Resident KiB per mapped file, anonymous memory counted as ``[anon]``."""
    resident: collections.Counter[str] = collections.Counter()
    mapping = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            fields = line.split()
            mapping = fields[5] if len(fields) > 5 else "[anon]"
        elif line.startswith("Rss:"):
            resident[mapping] += int(line.split()[1])
    return resident


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.profile_scale", description=__doc__)
    parser.add_argument("--sets", type=int, default=300)
    parser.add_argument("--controller-qps", type=int, default=100, help="0: Kubernetes' defaults")
    parser.add_argument("--rest", type=float, default=60.0, help="seconds at rest before the memory is read")
    arguments = parser.parse_args(argv)

    with scale_environment("projectorset-profile-scale-", arguments.controller_qps) as env:
        return _profile(arguments, env)


def _profile(arguments: argparse.Namespace, env: ScaleEnvironment) -> int:
    cluster, postgres, api = env.cluster, env.postgres, env.api
    operator: OperatorProcess | None = None
    try:
        install_crd(cluster)
        cluster.create_namespace(NAMESPACE)
        operator = OperatorProcess(cluster.user_kubeconfig(OPERATOR_USER), NAMESPACE, env.workdir / "operator.log")
        operator.start()
        assert operator.process is not None
        pid = operator.process.pid
        url = create_event_stores(postgres, arguments.sets, "crowd")
        wait_until_serving(operator)
        print(f"operator resident at start: {rss_mib(pid):.0f} MiB", flush=True)
        components = {component.name: component.pid for component in cluster.components}
        components["operator"] = pid
        components["this process (virtual node, crowd)"] = os.getpid()
        cpu_before = {name: cpu_seconds(p) for name, p in components.items()}
        since, began = time.time(), time.monotonic()
        create_crowd(api, NAMESPACE, url, arguments.sets, pod_placement())
        print(f"created {arguments.sets} sets in {time.monotonic() - began:.0f} s", flush=True)
        while True:
            seen = phases(api, NAMESPACE)
            if len(seen) >= arguments.sets and all(phase == "Active" for phase in seen.values()):
                break
            time.sleep(2)
        print(f"all Active after {time.monotonic() - began:.0f} s; CPU seconds meanwhile:")
        for name, p in components.items():
            print(f"  {cpu_seconds(p) - cpu_before[name]:7.1f}  {name}")
        print(f"operator resident at all Active: {rss_mib(pid):.0f} MiB", flush=True)
        time.sleep(2)  # the audit log is written in batches
        requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for event in audit_events(cluster, since, time.time()):
            target = event.get("objectRef", {})
            resource = "/".join(filter(None, (target.get("resource"), target.get("subresource"))))
            requests[(event.get("user", {}).get("username", "?"), event.get("verb", "?"), resource)] += 1
        print("API requests until all Active (user, verb, resource):")
        for (user, verb, resource), count in requests.most_common(25):
            print(f"  {count:7d}  {user} {verb} {resource}")
        time.sleep(arguments.rest)
        print(f"operator resident after {arguments.rest:.0f} s at rest: {rss_mib(pid):.0f} MiB, by mapping:")
        for mapping, kib in memory_by_mapping(pid).most_common(12):
            print(f"  {kib / 1024:7.1f} MiB  {mapping}")
        return 0
    finally:
        if operator is not None:
            operator.stop()


if __name__ == "__main__":
    sys.exit(stopping.run(main))
