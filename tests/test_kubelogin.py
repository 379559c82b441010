"""Login and client behaviour that needs no API server: what is refused, and how a silent server
ends a request. tests/cluster/test_kubeapi.py logs in and talks to the real API server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from urllib3.exceptions import HTTPError

from projectorset.adapters.kube import KubernetesCluster
from projectorset.adapters.kubeapi import KubeApi
from projectorset.adapters.kubelogin import Credentials
from projectorset.api.conditions import Reason
from projectorset.domain.cluster import ClusterError


def write_kubeconfig(directory: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "shop"}}],
        "current-context": "x",
    }
    path = directory / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


def login_with(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> kopf.ConnectionInfo:
    kubeconfig = write_kubeconfig(tmp_path, user, cluster)
    return Credentials(tmp_path / "no-service-account", {"KUBECONFIG": str(kubeconfig)}).current()


@pytest.mark.parametrize(
    ("user", "cluster", "named"),
    [
        ({"auth-provider": {"name": "oidc", "config": {"id-token": "x"}}}, None, "'auth-provider'"),
        ({"token": "t", "as": "someone-else"}, None, "'as'"),
        ({"client-certificate": "me.crt", "client-certificate-data": "Zm9v"}, None, "Both certificate path & data"),
        ({"token": "t"}, {"certificate-authority-data": "Zm9v"}, "has no server"),
        ({"token": "t"}, {"server": "https://10.0.0.1", "proxy-url": "http://proxy:3128"}, "'proxy-url'"),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}}, None, "v1alpha1"),
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "x", "interactiveMode": "Always"}},
            None,
            "needs a terminal",
        ),
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "no-such-plugin-here"}},
            None,
            "'no-such-plugin-here' did not run",
        ),
    ],
)
def test_what_the_operator_cannot_honour_is_refused_by_name(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None, named: str
) -> None:
    with pytest.raises(kopf.LoginError, match=named):
        login_with(tmp_path, user, cluster)


def test_a_plugin_that_fails_or_answers_nonsense_is_a_login_error(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}}
    plugin.write_text("#!/bin/sh\necho 'no credential for you' >&2\nexit 3\n")
    plugin.chmod(0o755)
    with pytest.raises(kopf.LoginError, match="exited with status 3"):
        login_with(tmp_path, exec_user)
    answer = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": {"token": "t"}}
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(answer)}'\n")
    with pytest.raises(kopf.LoginError, match="not client.authentication.k8s.io/v1 ExecCredential"):
        login_with(tmp_path, exec_user)


def test_kubeconfig_fields_and_relative_paths(tmp_path: Path) -> None:
    info = login_with(
        tmp_path,
        {"client-certificate": "certs/me.crt", "client-key": "/abs/me.key", "username": "u", "password": "p"},
        {"server": "https://10.0.0.1:6443", "certificate-authority": "ca.crt", "insecure-skip-tls-verify": False},
    )
    assert info.server == "https://10.0.0.1:6443" and info.default_namespace == "shop"
    assert info.ca_path == str(tmp_path / "ca.crt") and info.certificate_path == str(tmp_path / "certs/me.crt")
    assert info.private_key_path == "/abs/me.key"
    assert info.as_http_headers()["Authorization"].startswith("Basic ")


def test_no_pod_and_no_kubeconfig_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    with pytest.raises(kopf.LoginError, match="no credentials: not in a pod"):
        Credentials(tmp_path / "no-service-account", {}).current()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung API server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


class Fixed:
    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.info = info

    def current(self) -> kopf.ConnectionInfo:
        return self.info

    def renew(self, failed: kopf.ConnectionInfo | None = None) -> kopf.ConnectionInfo:
        return self.info


def test_a_silent_api_server_ends_the_request_with_urllib3s_error_and_the_pass_with_a_condition(
    silent_server: int,
) -> None:
    info = kopf.ConnectionInfo(server=f"https://127.0.0.1:{silent_server}", insecure=True, token="t")
    kube = KubeApi(Fixed(info), timeout=(0.5, 0.5))
    began = time.monotonic()
    with pytest.raises(HTTPError):
        kube.get("/api/v1/namespaces/default")
    assert time.monotonic() - began < 10  # urllib3's three retries, each cut after half a second
    with pytest.raises(ClusterError) as unanswered:
        KubernetesCluster(kube).read_projectorset("shop", "accounts")
    assert unanswered.value.reason is Reason.KUBERNETES_API_ERROR
    assert "no answer from the API server" in unanswered.value.message
