"""How ``kubejson`` answers an API server that sheds load (429 with Retry-After, as API priority
and fairness does) or hangs up, for every verb: against a small HTTP server on loopback, since the
test bed's real API server cannot be made to refuse on demand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from projectorset.adapters.kubejson import ApiError, KubeJson, load_configuration


class Shedding(ThreadingHTTPServer):
    """Answers ``refusals`` requests with 429 and ``Retry-After: 1``, then 200 with a ConfigMap."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.refusals = 0
        self.seen: list[tuple[str, float]] = []


class Handler(BaseHTTPRequestHandler):
    server: Shedding

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append((self.command, time.monotonic()))
        if self.server.refusals > 0:
            self.server.refusals -= 1
            body = json.dumps({"kind": "Status", "reason": "TooManyRequests", "message": "too many requests"})
            self.send_response(429)
            self.send_header("Retry-After", "1")
        else:
            body = json.dumps({"kind": "ConfigMap", "metadata": {"name": "settings"}})
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Shedding]:
    running = Shedding()
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


@pytest.fixture
def kubeconfig(server: Shedding, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return kubeconfig


@pytest.fixture
def kube(kubeconfig: Path) -> KubeJson:
    return KubeJson.connect(environ={"KUBECONFIG": str(kubeconfig)})


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
def test_a_429_with_retry_after_is_sent_again_after_that_time_whatever_the_verb(
    server: Shedding, kube: KubeJson, method: str
) -> None:
    server.refusals = 2
    answer = kube.request(method, "/api/v1/namespaces/shop/configmaps/settings", body=None if method == "GET" else {})
    assert answer["metadata"]["name"] == "settings"
    assert [verb for verb, _ in server.seen] == [method] * 3
    waits = [later - earlier for (_, earlier), (_, later) in zip(server.seen, server.seen[1:], strict=False)]
    assert all(wait >= 0.9 for wait in waits), waits


def test_a_server_that_keeps_refusing_is_reported_with_its_status(server: Shedding, kubeconfig: Path) -> None:
    server.refusals = 100
    configuration = load_configuration(environ={"KUBECONFIG": str(kubeconfig)})
    configuration.retries = configuration.retries.new(total=2, status=2)  # not 10 s of waiting
    kube = KubeJson(ApiClient(configuration))
    with pytest.raises(ApiError) as refused:
        kube.get("/api/v1/namespaces/shop/configmaps/settings")
    assert (refused.value.status, refused.value.reason, refused.value.message) == (
        429,
        "TooManyRequests",
        "too many requests",
    )
    assert len(server.seen) == 3
