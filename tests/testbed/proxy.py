"""A local service proxy: what kube-proxy does for one Service, in user space.

``ServiceProxy`` listens on a local TCP port and forwards every new connection to one ready
endpoint of the Service, round-robin. Endpoints come from the Service's EndpointSlices
(``discovery.k8s.io/v1``, label ``kubernetes.io/service-name``), followed live with a watch: once
a slice changes, new connections go to the new endpoints while open ones carry on. With no ready
endpoint a connection is closed at once, like kube-proxy's REJECT rule.

Run standalone as ``python -m testbed.proxy --kubeconfig PATH --namespace NS --service NAME --port P``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from projectorset.adapters.kubejson import JSON, Gone, KubeJson, is_status
from testbed.workloads import api_client

log = logging.getLogger("testbed.proxy")


def ready_endpoints(slices: dict[str, JSON], port_name: str) -> list[tuple[str, int]]:
    """(address, port) of every ready endpoint, in a stable order, for the Service port's name."""
    found: set[tuple[str, int]] = set()
    for endpoint_slice in slices.values():
        port = next(
            (p.get("port") for p in endpoint_slice.get("ports") or [] if (p.get("name") or "") == port_name), None
        )
        if port is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            # A missing ready condition means ready (the API's documented default).
            if (endpoint.get("conditions") or {}).get("ready", True) is False:
                continue
            for address in endpoint.get("addresses") or []:
                found.add((address, int(port)))
    return sorted(found)


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction; pass the half-close on so request/response protocols end cleanly."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def select_port(service: JSON, wanted: int | str | None) -> JSON:
    """The Service port to proxy: by name or number, or the first one."""
    ports = service["spec"].get("ports") or []
    if not ports:
        raise ValueError(f"service {service['metadata']['name']} has no ports")
    if wanted is None:
        return ports[0]
    for port in ports:
        if wanted in (port.get("name"), port.get("port"), str(port.get("port"))):
            return port
    raise ValueError(f"service {service['metadata']['name']} has no port {wanted!r}")


class ServiceProxy:
    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        service_name: str,
        listen_port: int = 0,
        listen_host: str = "127.0.0.1",
        service_port: int | str | None = None,
    ) -> None:
        self.kube = KubeJson(api_client)
        self.namespace = namespace
        self.service_name = service_name
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.service_port = service_port
        self.port = 0
        self._slices: dict[str, JSON] = {}
        self._endpoints: list[tuple[str, int]] = []
        self._port_name = ""
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._server: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._acceptor: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._stream: Any = None
        # Called with every new endpoint list, as it takes effect (for tests that watch the proxy).
        self.on_endpoints: Callable[[list[tuple[str, int]]], None] | None = None

    # -- endpoints ----------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._endpoints)

    def _refresh(self) -> None:
        with self._lock:
            self._endpoints = ready_endpoints(self._slices, self._port_name)
            endpoints = list(self._endpoints)
            if self.on_endpoints is not None:
                self.on_endpoints(endpoints)
        log.info("%s/%s endpoints: %s", self.namespace, self.service_name, endpoints)

    def _read_service(self) -> None:
        service = self.kube.get(f"/api/v1/namespaces/{self.namespace}/services/{self.service_name}")
        self._port_name = select_port(service, self.service_port).get("name") or ""

    def _watch(self) -> None:
        path = "/apis/discovery.k8s.io/v1/namespaces/" + self.namespace + "/endpointslices"
        selector = f"kubernetes.io/service-name={self.service_name}"
        while not self._stop.is_set():
            try:
                self._read_service()
                listing = self.kube.get(path, labelSelector=selector)
                with self._lock:
                    self._slices = {s["metadata"]["name"]: s for s in listing.get("items") or []}
                self._refresh()
                self._synced.set()
                version = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    events = self.kube.watch(
                        path, version, timeout_seconds=60, on_open=self._set_stream, labelSelector=selector
                    )
                    for event in events:
                        obj = event["object"]
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] == "BOOKMARK":
                            continue
                        with self._lock:
                            if event["type"] == "DELETED":
                                self._slices.pop(obj["metadata"]["name"], None)
                            else:
                                self._slices[obj["metadata"]["name"]] = obj
                        self._refresh()
                        if self._stop.is_set():
                            return
            except Gone:
                continue
            except Exception as error:
                if self._stop.is_set():
                    return
                if is_status(error, 404):
                    # No Service, no endpoints: connections are refused until it appears.
                    log.info("service %s/%s not found yet", self.namespace, self.service_name)
                    self._synced.set()
                else:
                    log.warning("endpoint watch failed (%s): retrying", error)
                self._stop.wait(1)

    def _set_stream(self, response: Any) -> None:
        with self._lock:
            self._stream = response
        if self._stop.is_set():
            self._close_stream()

    def _close_stream(self) -> None:
        # Ends the watch at once: an open watch would also hold up the API server's shutdown.
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.shutdown()

    def _pick(self) -> tuple[str, int] | None:
        with self._lock:
            if not self._endpoints:
                return None
            return self._endpoints[next(self._turn) % len(self._endpoints)]

    # -- forwarding ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        target = self._pick()
        if target is None:
            downstream.close()  # REJECT: nothing is ready
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError as error:
            log.info("connecting to %s:%s failed: %s", *target, error)
            downstream.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._connections.update((downstream, upstream))
        pump = threading.Thread(target=pipe, args=(upstream, downstream), daemon=True)
        pump.start()
        pipe(downstream, upstream)
        pump.join()
        with self._lock:
            self._connections.difference_update((downstream, upstream))
        downstream.close()
        upstream.close()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, sync_timeout: float = 30) -> ServiceProxy:
        """Listen, and wait until the first list of endpoints has been read."""
        self._server = socket.create_server((self.listen_host, self.listen_port), reuse_port=False)
        self.port = self._server.getsockname()[1]
        self._watcher = threading.Thread(target=self._watch, name=f"proxy-watch-{self.service_name}", daemon=True)
        self._watcher.start()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"proxy-{self.service_name}", daemon=True)
        self._acceptor.start()
        if not self._synced.wait(sync_timeout):
            log.warning("no endpoints read for %s/%s yet", self.namespace, self.service_name)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in (self._acceptor, self._watcher):
            if thread is not None:
                thread.join(timeout=5)

    def __enter__(self) -> ServiceProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Forward a local port to a Service's ready endpoints")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--service", required=True)
    parser.add_argument("--port", type=int, default=0, help="local port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--service-port", default=None, help="Service port name or number (default: first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    service_port: int | str | None = args.service_port
    if isinstance(service_port, str) and service_port.isdigit():
        service_port = int(service_port)
    proxy = ServiceProxy(api_client(args.kubeconfig), args.namespace, args.service, args.port, args.host, service_port)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    proxy.start()
    print(f"proxying {args.host}:{proxy.port} -> service {args.namespace}/{args.service}", flush=True)
    while not stopping.wait(1):
        pass
    proxy.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
