"""Does a Service switch leave a moment with no ready endpoint, or fail a request? Watch and measure.

Two ready Deployments (``blue`` and ``green``) sit behind one Service, whose selector is switched
between them N times as the operator switches versions (the whole selector in one JSON patch) while:

- ``SliceRecorder`` records every EndpointSlice event of the Service, in watch order, with the time
  it arrived, and after each the ready endpoints of all its slices together (what kube-proxy, which
  merges slices by name, serves). A moment with none is a gap;
- ``ServiceProxy`` (``testbed.proxy``) reports each endpoint list it takes up, so its own gaps count too;
- ``RequestLoop`` sends ``GET /`` through the proxy on loopback, a new connection each, bounded in
  count and time, and records each failure with its time.

    python -m testbed.switchgap --switches 20              # starts a local cluster of its own
    python -m testbed.switchgap --kubeconfig PATH ...      # or uses a running one (make cluster-up)

prints the slice events after each switch, the gaps and the request figures; exits 1 on a gap or a
failed request.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from projectorset.adapters.kubejson import JSON, JSON_PATCH, Gone, KubeJson
from testbed.proxy import ServiceProxy, ready_endpoints
from testbed.workloads import api_client as load_api_client
from testbed.workloads import available_deployment, create, deployment, echo_container, service, wait_until

VERSIONS = ("blue", "green")
SERVICE = "app"


def slices_path(namespace: str) -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


@dataclass(frozen=True)
class SliceEvent:
    at: float  # time.monotonic() when the event arrived
    kind: str  # LISTED (the list taken at start), ADDED, MODIFIED, DELETED
    slice_name: str
    endpoints: tuple[tuple[str, bool], ...]  # (address, ready) as this slice lists them
    ready_after: tuple[tuple[str, int], ...]  # every slice together, after this event

    def describe(self, origin: float) -> str:
        listed = ", ".join(f"{address}{'' if ready else ' (not ready)'}" for address, ready in self.endpoints)
        together = ", ".join(address for address, _ in self.ready_after) or "NONE"
        return f"{(self.at - origin) * 1000:+9.1f} ms {self.kind:8} {self.slice_name} [{listed}] -> ready: {together}"


@dataclass(frozen=True)
class Gap:
    began: float
    ended: float | None  # None: still no ready endpoint when the recording ended

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.began


def gaps_in(changes: list[tuple[float, bool]]) -> list[Gap]:
    """The stretches without an endpoint in a timeline of (time, has endpoints)."""
    found: list[Gap] = []
    began: float | None = None
    for at, has_endpoints in changes:
        if not has_endpoints and began is None:
            began = at
        elif has_endpoints and began is not None:
            found.append(Gap(began, at))
            began = None
    if began is not None:
        found.append(Gap(began, None))
    return found


class SliceRecorder:
    """Every EndpointSlice event of one Service, in watch order, after a list taken at start."""

    def __init__(self, api_client: client.ApiClient, namespace: str, service_name: str, port_name: str) -> None:
        self.kube = KubeJson(api_client)
        self.namespace = namespace
        self.service_name = service_name
        self.port_name = port_name
        self.lost_events = False  # the watch expired: the recording has a hole
        self._events: list[SliceEvent] = []
        self._slices: dict[str, JSON] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> SliceRecorder:
        selector = f"kubernetes.io/service-name={self.service_name}"
        listing = self.kube.get(slices_path(self.namespace), labelSelector=selector)
        for item in listing.get("items") or []:
            self._apply("LISTED", item)
        version = listing["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._follow, args=(selector, version), daemon=True)
        self._thread.start()
        return self

    def _follow(self, selector: str, version: str) -> None:
        while not self._stop.is_set():
            try:
                for event in self.kube.watch(
                    slices_path(self.namespace),
                    version,
                    timeout_seconds=60,
                    on_open=self._opened,
                    labelSelector=selector,
                ):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self._apply(event["type"], obj)
            except Gone:
                self.lost_events = True  # cannot vouch for the moments in between: say so, stop
                return
            except Exception:
                if self._stop.is_set():
                    return
                self._stop.wait(0.2)

    def _opened(self, response: Any) -> None:
        self._stream = response
        if self._stop.is_set():
            with contextlib.suppress(Exception):
                response.shutdown()

    def _apply(self, kind: str, obj: JSON) -> None:
        at = time.monotonic()
        name = obj["metadata"]["name"]
        listed = tuple(
            (address, (endpoint.get("conditions") or {}).get("ready", True) is not False)
            for endpoint in obj.get("endpoints") or []
            for address in endpoint.get("addresses") or []
        )
        with self._lock:
            if kind == "DELETED":
                self._slices.pop(name, None)
            else:
                self._slices[name] = obj
            ready = tuple(ready_endpoints(self._slices, self.port_name))
            self._events.append(SliceEvent(at, kind, name, listed, ready))

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def events(self) -> list[SliceEvent]:
        with self._lock:
            return list(self._events)

    def gaps(self) -> list[Gap]:
        """Every stretch in which the slices together listed no ready endpoint."""
        return gaps_in([(event.at, bool(event.ready_after)) for event in self.events])

    def ready_addresses(self) -> set[str]:
        """Every address the slices ever listed as ready."""
        return {address for event in self.events for address, _ in event.ready_after}


class ProxyEndpoints:
    """The endpoint lists the proxy took up, with their times (its ``on_endpoints`` hook)."""

    def __init__(self, proxy: ServiceProxy) -> None:
        self.changes: list[tuple[float, bool]] = []
        proxy.on_endpoints = lambda endpoints: self.changes.append((time.monotonic(), bool(endpoints)))

    def gaps(self) -> list[Gap]:
        return gaps_in(list(self.changes))


@dataclass
class Failure:
    at: float
    error: str


@dataclass
class RequestLoop:
    """``GET /`` through the proxy on loopback, a new connection each, until stopped or out of bounds."""

    port: int
    max_requests: int = 20_000
    max_seconds: float = 300.0
    pause: float = 0.002
    answered: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RequestLoop:
        self._thread = threading.Thread(target=self._run, name="switchgap-requests", daemon=True)
        self._thread.start()
        return self

    @property
    def sent(self) -> int:
        return self.answered + len(self.failures)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and self.sent < self.max_requests and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
                version = json.loads(body)["version"]
                self.versions[version] = self.versions.get(version, 0) + 1
                self.answered += 1
            except Exception as error:
                self.failures.append(Failure(time.monotonic(), f"{type(error).__name__}: {error}"))
            finally:
                conn.close()
            self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class Switch:
    to: str
    at: float  # when the patch was sent
    followed: float | None = None  # when the proxy's endpoints were first all the new version's


@dataclass
class SwitchRun:
    switches: list[Switch]
    events: list[SliceEvent]
    slice_gaps: list[Gap]
    proxy_gaps: list[Gap]
    requests: RequestLoop
    lost_events: bool

    def follow_ms(self) -> list[float]:
        return [round((s.followed - s.at) * 1000, 1) for s in self.switches if s.followed is not None]

    def report(self) -> str:
        lines = []
        for number, switch in enumerate(self.switches):
            end = self.switches[number + 1].at if number + 1 < len(self.switches) else float("inf")
            followed = "never" if switch.followed is None else f"{(switch.followed - switch.at) * 1000:.0f} ms after"
            lines.append(f"switch {number + 1} to {switch.to} (the proxy followed {followed}):")
            lines += ["  " + e.describe(switch.at) for e in self.events if switch.at <= e.at < end]

        def ms(gaps: list[Gap]) -> str:
            return ", ".join("open" if g.seconds is None else f"{g.seconds * 1000:.1f} ms" for g in gaps) or "none"

        lines.append(
            f"{len(self.switches)} switches; {len(self.events)} slice events"
            f"{' (the watch expired: events were lost)' if self.lost_events else ''}; moments with no ready "
            f"endpoint: {ms(self.slice_gaps)} in the slices, {ms(self.proxy_gaps)} in the proxy; "
            f"the proxy followed each switch in {self.follow_ms()} ms"
        )
        lines.append(f"{self.requests.sent} requests {self.requests.versions}, {len(self.requests.failures)} failed")
        lines += [
            f"  failed {(f.at - self.switches[0].at):.3f} s after switch 1: {f.error}"
            for f in self.requests.failures[:20]
        ]
        return "\n".join(lines)


def _selector(version: str) -> dict[str, str]:
    return {"app": "switchgap", "version": version}


def deploy_two_versions(kube: KubeJson, namespace: str, replicas: int = 2, timeout: float = 120) -> None:
    """Two Deployments of the echo server, both Available, and the Service selecting ``blue``."""
    for version in VERSIONS:
        container = echo_container(version=version)
        create(kube, namespace, deployment(f"{SERVICE}-{version}", _selector(version), replicas, container))
    create(kube, namespace, service(SERVICE, _selector(VERSIONS[0])))
    for version in VERSIONS:
        wait_until(
            f"{SERVICE}-{version} Available",
            available_deployment(kube, namespace, f"{SERVICE}-{version}", replicas),
            timeout=timeout,
        )
    blue = _addresses(kube, namespace, VERSIONS[0])
    wait_until("the slices to list blue's pods", lambda: _slice_addresses(kube, namespace) == blue)


def switch_selector(kube: KubeJson, namespace: str, version: str) -> None:
    """As the operator switches: the whole selector replaced in one JSON patch."""
    kube.patch(
        f"/api/v1/namespaces/{namespace}/services/{SERVICE}",
        [{"op": "add", "path": "/spec/selector", "value": _selector(version)}],
        JSON_PATCH,
    )


def _addresses(kube: KubeJson, namespace: str, version: str) -> set[str]:
    selector = ",".join(f"{k}={v}" for k, v in _selector(version).items())
    return {
        p["status"].get("podIP")
        for p in kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
    }


def _slice_addresses(kube: KubeJson, namespace: str) -> set[str]:
    listed = kube.get(slices_path(namespace), labelSelector=f"kubernetes.io/service-name={SERVICE}")["items"]
    return {address for address, _ in ready_endpoints({s["metadata"]["name"]: s for s in listed}, "http")}


@contextlib.contextmanager
def watched_proxy(
    api_client: client.ApiClient, namespace: str, service_name: str, port_name: str = "http"
) -> Iterator[tuple[SliceRecorder, ServiceProxy, ProxyEndpoints]]:
    """A slice recorder and a proxy (with its endpoint lists recorded) for one Service."""
    recorder = SliceRecorder(api_client, namespace, service_name, port_name).start()
    proxy = ServiceProxy(api_client, namespace, service_name)
    proxy_endpoints = ProxyEndpoints(proxy)
    try:
        proxy.start()
        yield recorder, proxy, proxy_endpoints
    finally:
        proxy.stop()
        recorder.stop()


def run_switches(
    api_client: client.ApiClient,
    namespace: str,
    switches: int,
    settle: float = 1.0,
    max_requests: int = 20_000,
    max_seconds: float = 300.0,
) -> SwitchRun:
    """Switch the Service ``switches`` times under the request loop, ``settle`` seconds apart."""
    kube = KubeJson(api_client)
    done: list[Switch] = []
    with watched_proxy(api_client, namespace, SERVICE) as (recorder, proxy, proxy_endpoints):
        requests = RequestLoop(proxy.port, max_requests=max_requests, max_seconds=max_seconds).start()
        try:
            time.sleep(settle)
            for number in range(switches):
                if not requests.running:
                    break  # the loop reached a bound: a switch nobody sends requests through proves nothing
                target = VERSIONS[(number + 1) % 2]
                target_addresses = _addresses(kube, namespace, target)
                done.append(Switch(target, time.monotonic()))
                switch_selector(kube, namespace, target)
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline:
                    serving = {address for address, _ in proxy.endpoints}
                    if serving and serving <= target_addresses:
                        done[-1].followed = time.monotonic()
                        break
                    time.sleep(0.005)
                time.sleep(settle)
        finally:
            requests.stop()
    return SwitchRun(done, recorder.events, recorder.gaps(), proxy_endpoints.gaps(), requests, recorder.lost_events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Switch a Service between two ready Deployments and watch.")
    parser.add_argument("--kubeconfig", help="a running cluster's kubeconfig (default: start a local cluster)")
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between switches")
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        if args.kubeconfig:
            kubeconfig = args.kubeconfig
        else:
            from testbed.cluster import LocalCluster

            kubeconfig = str(stack.enter_context(LocalCluster.start()).kubeconfig)
        api_client = load_api_client(kubeconfig)
        kube = KubeJson(api_client)
        namespace = f"switchgap-{uuid.uuid4().hex[:6]}"
        kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
        stack.callback(kube.request, "DELETE", f"/api/v1/namespaces/{namespace}")
        wait_until(
            "the default ServiceAccount", lambda: kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
        )
        deploy_two_versions(kube, namespace, args.replicas)
        run = run_switches(api_client, namespace, args.switches, args.settle)
        print(run.report(), flush=True)
        return 1 if run.slice_gaps or run.proxy_gaps or run.requests.failures or run.lost_events else 0


if __name__ == "__main__":
    raise SystemExit(main())
