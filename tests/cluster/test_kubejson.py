"""The client the operator, the plugin and the test bed share (``kubejson``), logged in each way
users log in, against the real API server.

Identities are told apart by what they may do: the admin of the test cluster reads Secrets,
the ServiceAccount ``reader`` made here only reads ConfigMaps (403 on Secrets, naming it).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from projectorset.adapters.kube import KubernetesCluster
from projectorset.adapters.kubejson import JSON_PATCH, ApiError, KubeJson, resource_path
from projectorset.api import ProjectorSetSpec
from projectorset.api.conditions import Reason
from projectorset.domain.cluster import ClusterError, Owner
from projectorset.domain.observation import EnsureDeployment, Event
from testbed.cluster import LocalCluster
from testbed.manifests import sample_projectorset

READER = "reader"


def admin(cluster: LocalCluster, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    status, reply = cluster.request(method, path, body)
    assert 200 <= status < 300, (method, path, status, reply)
    return reply


@dataclass
class Namespace:
    name: str
    cluster: LocalCluster

    def token(self, bound_secret: str) -> str:
        """A token of ServiceAccount ``reader`` from the TokenRequest API, valid while the Secret
        ``bound_secret`` exists (deleting it revokes the token)."""
        secret = admin(
            self.cluster,
            "POST",
            f"/api/v1/namespaces/{self.name}/secrets",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": bound_secret}},
        )
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": bound_secret,
                    "uid": secret["metadata"]["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{self.name}/serviceaccounts/{READER}/token"
        return str(admin(self.cluster, "POST", path, request)["status"]["token"])

    def revoke(self, bound_secret: str, token: str) -> None:
        """Delete the token's Secret, and wait until the API server refuses the token."""
        admin(self.cluster, "DELETE", f"/api/v1/namespaces/{self.name}/secrets/{bound_secret}")
        deadline = time.monotonic() + 30
        while status_with_token(self.cluster, token, f"/api/v1/namespaces/{self.name}/configmaps") != 401:
            assert time.monotonic() < deadline, "the revoked token is still accepted"
            time.sleep(0.1)


def status_with_token(cluster: LocalCluster, token: str, path: str) -> int:
    context = ssl.create_default_context(cafile=str(cluster.workdir / "pki" / "ca.crt"))
    request = urllib.request.Request(cluster.server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[Namespace]:
    """A namespace with a ServiceAccount ``reader`` that may get and list ConfigMaps, nothing else."""
    name = f"kubeapi-{int(time.time() * 1000) % 10**8}"
    local_cluster.create_namespace(name)
    base = f"/api/v1/namespaces/{name}"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{name}"
    admin(local_cluster, "POST", f"{base}/serviceaccounts", {"metadata": {"name": READER}})
    admin(
        local_cluster,
        "POST",
        f"{rbac}/roles",
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    admin(
        local_cluster,
        "POST",
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "read-configmaps"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": READER, "namespace": name}],
        },
    )
    admin(local_cluster, "POST", f"{base}/configmaps", {"metadata": {"name": "settings"}, "data": {"a": "1"}})
    try:
        yield Namespace(name, local_cluster)
    finally:
        local_cluster.request("DELETE", base)


def assert_reads_as_reader(kube: KubeJson, namespace: str) -> None:
    """Reads ConfigMaps, and is refused Secrets as the ServiceAccount (not as the admin)."""
    names = [item["metadata"]["name"] for item in kube.list_items(resource_path("v1", "configmaps", namespace))]
    assert "settings" in names
    with pytest.raises(ApiError) as refused:
        kube.list_items(resource_path("v1", "secrets", namespace))
    assert refused.value.status == 403 and refused.value.reason == "Forbidden"
    assert f"system:serviceaccount:{namespace}:{READER}" in refused.value.message


def service_account_dir(directory: Path, cluster: LocalCluster, token: str, namespace: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes((cluster.workdir / "pki" / "ca.crt").read_bytes())
    (directory / "namespace").write_text(namespace)
    return directory


def in_pod_environment(cluster: LocalCluster) -> dict[str, str]:
    server = urllib.parse.urlsplit(cluster.server)
    return {"KUBERNETES_SERVICE_HOST": str(server.hostname), "KUBERNETES_SERVICE_PORT": str(server.port)}


def with_kubeconfig(kubeconfig: Path) -> KubeJson:
    return KubeJson.connect(environ={"KUBECONFIG": str(kubeconfig)})


def test_client_certificates_from_the_kubeconfig_read_write_and_report_refusals(
    namespace: Namespace, operator_kube: KubeJson
) -> None:
    kube = operator_kube
    configmaps = resource_path("v1", "configmaps", namespace.name)
    created = kube.create(configmaps, {"metadata": {"name": "made", "labels": {"made-by": "test"}}, "data": {"x": "1"}})
    assert [c["metadata"]["name"] for c in kube.list_items(configmaps, "made-by=test")] == ["made"]
    # The admin may read Secrets: the kubeconfig's client certificate is the identity.
    kube.list_items(resource_path("v1", "secrets", namespace.name))

    made = f"{configmaps}/made"
    assert kube.patch(made, {"data": {"y": "2"}})["data"] == {"x": "1", "y": "2"}
    replaced = kube.patch(made, [{"op": "replace", "path": "/data", "value": {"z": "3"}}], JSON_PATCH)
    assert replaced["data"] == {"z": "3"}
    with pytest.raises(ApiError) as failed_test:
        kube.patch(made, [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}], JSON_PATCH)
    assert failed_test.value.status in (409, 422)

    with pytest.raises(ApiError) as missing:
        kube.get(f"{configmaps}/missing")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert missing.value.message == 'configmaps "missing" not found'
    with pytest.raises(ApiError) as twice:
        kube.create(configmaps, {"metadata": {"name": "made"}})
    assert (twice.value.status, twice.value.reason) == (409, "AlreadyExists")
    assert "already exists" in twice.value.message
    with pytest.raises(ApiError) as other_uid:
        kube.delete(made, uid="00000000-0000-0000-0000-000000000000")
    assert (other_uid.value.status, other_uid.value.reason) == (409, "Conflict")
    kube.delete(made, propagation_policy="Background", uid=created["metadata"]["uid"])
    with pytest.raises(ApiError) as gone:
        kube.get(made)
    assert gone.value.status == 404


def test_the_cluster_adapter_maps_the_api_servers_refusals_to_reasons(
    local_cluster: LocalCluster, namespace: Namespace, operator_kube: KubeJson, tmp_path: Path
) -> None:
    spec = ProjectorSetSpec.model_validate(sample_projectorset("v1")["spec"])
    nowhere = Owner("accounts", "no-such-namespace", "uid-1")
    with pytest.raises(ClusterError) as not_found:
        KubernetesCluster(operator_kube).apply(nowhere, spec, EnsureDeployment("v1", 1))
    assert not_found.value.reason is Reason.KUBERNETES_NOT_FOUND
    assert 'namespaces "no-such-namespace" not found' in not_found.value.message

    token = namespace.token("reader-token")
    directory = service_account_dir(tmp_path / "sa", local_cluster, token, namespace.name)
    as_reader = KubernetesCluster(
        KubeJson.connect(environ=in_pod_environment(local_cluster), service_account_dir=directory)
    )
    with pytest.raises(ClusterError) as forbidden:
        as_reader.observe(Owner("accounts", namespace.name, "uid-1"), spec)
    assert forbidden.value.reason is Reason.KUBERNETES_FORBIDDEN
    assert "403" in forbidden.value.message and "cannot list resource" in forbidden.value.message
    assert token not in forbidden.value.message


def test_a_set_failing_again_and_again_leaves_one_event_whose_count_grows(
    namespace: Namespace, operator_kube: KubeJson
) -> None:
    owner = Owner("accounts", namespace.name, "4b1e0c3a-0000-4000-8000-000000000001")
    adapter = KubernetesCluster(operator_kube)
    now = [1000.0]
    adapter.events.clock = lambda: now[0]

    def events() -> list[dict[str, Any]]:
        return operator_kube.list_items(resource_path("v1", "events", namespace.name))

    failing = Event("Warning", Reason.KUBERNETES_FORBIDDEN, "x" * 2000)
    for _ in range(3):  # three passes, 5 s apart, fail the same way
        adapter.emit(owner, failing)
        now[0] += 5
        time.sleep(1.1)  # lastTimestamp counts seconds
    [event] = events()
    assert event["metadata"]["name"].startswith("accounts.")
    assert event["involvedObject"] == {
        "apiVersion": "projectorset.io/v1alpha1",
        "kind": "ProjectorSet",
        "name": "accounts",
        "namespace": namespace.name,
        "uid": owner.uid,
    }
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "KubernetesForbidden", 3)
    assert event["message"] == "x" * 1024
    assert event["source"] == {"component": "projectorset-operator"}
    assert event["reportingComponent"] == "projectorset-operator" and event["reportingInstance"]
    first = datetime.strptime(event["firstTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    last = datetime.strptime(event["lastTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 2 <= (last - first).total_seconds() < 60
    assert abs((datetime.now(UTC) - first).total_seconds()) < 60

    # Another Warning within the minute: dropped, as client-go's spam filter drops it; a Normal
    # Event is never held back; a minute after the last new Warning, the other one is posted.
    other = Event("Warning", Reason.KUBERNETES_CONFLICT, "another failure")
    adapter.emit(owner, other)
    assert len(events()) == 1
    adapter.emit(owner, Event("Normal", Reason.KUBERNETES_CONFLICT, "resolved"))
    assert len(events()) == 2
    now[0] += 60
    adapter.emit(owner, other)
    adapter.emit(owner, failing)
    counts = {(e["reason"], e["message"][:20]): e["count"] for e in events() if e["type"] == "Warning"}
    assert counts == {("KubernetesForbidden", "x" * 20): 4, ("KubernetesConflict", "another failure"): 1}


def test_in_a_pod_the_service_account_serves_and_a_rotated_token_keeps_requests_working(
    local_cluster: LocalCluster, namespace: Namespace, tmp_path: Path
) -> None:
    first = namespace.token("first")
    directory = service_account_dir(tmp_path / "serviceaccount", local_cluster, first, namespace.name)
    kube = KubeJson.connect(environ=in_pod_environment(local_cluster), service_account_dir=directory)
    assert_reads_as_reader(kube, namespace.name)
    assert kube.configuration.host == local_cluster.server

    # The kubelet rotates the file, and the former token stops working: the 401 makes the client
    # read the file again, and the request is sent again.
    second = namespace.token("second")
    (directory / "token").write_text(second)
    namespace.revoke("first", first)
    assert_reads_as_reader(kube, namespace.name)

    # A token no login can cure: the 401 is reported after one new login, not retried for ever.
    (directory / "token").write_text("not-a-token")
    namespace.revoke("second", second)
    with pytest.raises(ApiError) as refused:
        kube.get(resource_path("v1", "configmaps", namespace.name, "settings"))
    assert refused.value.status == 401

    # An explicit KUBECONFIG wins over the pod's ServiceAccount (controller-runtime's order).
    (directory / "token").write_text(namespace.token("third"))
    explicit = KubeJson.connect(
        environ={**in_pod_environment(local_cluster), "KUBECONFIG": str(local_cluster.kubeconfig)},
        service_account_dir=directory,
    )
    assert explicit.list_items(resource_path("v1", "secrets", namespace.name)) is not None


def test_a_kubeconfig_token_or_token_file_logs_in_as_its_service_account(
    local_cluster: LocalCluster, namespace: Namespace, tmp_path: Path
) -> None:
    token = namespace.token("kubeconfig-token")
    assert_reads_as_reader(
        with_kubeconfig(kubeconfig_with_user(tmp_path, local_cluster, {"token": token})), namespace.name
    )
    token_dir = tmp_path / "token-user"
    token_dir.mkdir()
    (token_dir / "token").write_text(token)
    # A relative tokenFile is read beside the kubeconfig that names it, as kubectl reads it.
    kubeconfig = kubeconfig_with_user(token_dir, local_cluster, {"tokenFile": "token"})
    assert_reads_as_reader(with_kubeconfig(kubeconfig), namespace.name)


PLUGIN = """#!{python}
import json, os, sys, time
with open(os.environ["RUNS_FILE"], "a") as runs:
    runs.write(os.environ["KUBERNETES_EXEC_INFO"] + "\\n")
status = {{}}
if os.environ.get("TOKEN_FILE"):
    status["token"] = open(os.environ["TOKEN_FILE"]).read().strip()
else:
    status["clientCertificateData"] = open(os.environ["CERT_FILE"]).read()
    status["clientKeyData"] = open(os.environ["KEY_FILE"]).read()
if os.environ.get("EXPIRES_IN"):
    expiry = time.time() + float(os.environ["EXPIRES_IN"])
    status["expirationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry))
print(json.dumps({{"apiVersion": sys.argv[1], "kind": "ExecCredential", "status": status}}))
"""


def kubeconfig_with_user(directory: Path, cluster: LocalCluster, user: dict[str, Any]) -> Path:
    """The test cluster's kubeconfig with another user, written in ``directory``."""
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "other", "user": user}]
    config["contexts"][0]["context"]["user"] = "other"
    path = directory / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


def exec_plugin(directory: Path) -> Path:
    plugin = directory / "credential-plugin"
    plugin.write_text(PLUGIN.format(python=sys.executable))
    plugin.chmod(0o755)
    return plugin


def test_an_exec_credential_plugin_gives_a_token_until_it_expires(
    local_cluster: LocalCluster, namespace: Namespace, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(namespace.token("plugin"))
    exec_plugin(tmp_path)
    runs = tmp_path / "runs"
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "./credential-plugin",  # relative to the kubeconfig, as kubectl reads it
            "args": ["client.authentication.k8s.io/v1"],
            "env": [
                {"name": "TOKEN_FILE", "value": str(tmp_path / "token")},
                {"name": "RUNS_FILE", "value": str(runs)},
                # The client runs the plugin again 5 minutes before the credential expires.
                {"name": "EXPIRES_IN", "value": "305"},
            ],
            "interactiveMode": "Never",
            "provideClusterInfo": True,
        }
    }
    kube = with_kubeconfig(kubeconfig_with_user(tmp_path, local_cluster, user))
    assert_reads_as_reader(kube, namespace.name)
    requests = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(requests) == 1, "one run serves until the credential expires"
    assert requests[0]["spec"]["interactive"] is False
    assert requests[0]["spec"]["cluster"]["server"] == local_cluster.server

    time.sleep(5.5)
    assert_reads_as_reader(kube, namespace.name)
    assert len(runs.read_text().splitlines()) == 2, "an expired credential runs the plugin again"


def test_an_exec_plugin_may_give_a_client_certificate(
    local_cluster: LocalCluster, namespace: Namespace, tmp_path: Path
) -> None:
    pki = local_cluster.workdir / "pki"
    exec_plugin(tmp_path)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": str(tmp_path / "credential-plugin"),
            "args": ["client.authentication.k8s.io/v1beta1"],
            "env": [
                {"name": "CERT_FILE", "value": str(pki / "admin.crt")},
                {"name": "KEY_FILE", "value": str(pki / "admin.key")},
                {"name": "RUNS_FILE", "value": str(tmp_path / "runs")},
            ],
        }
    }
    as_admin = with_kubeconfig(kubeconfig_with_user(tmp_path, local_cluster, user))
    assert as_admin.list_items(resource_path("v1", "secrets", namespace.name)) is not None


class ConnectProxy:
    """An HTTP proxy on loopback that only tunnels (CONNECT), as corporate proxies do for HTTPS,
    and remembers each tunnel's target: the proof that traffic went through it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.tunnels: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host.strip("[]"), int(port))) as upstream:
                self.tunnels.append(target)
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
                back.start()
                _pump(client, upstream)
                back.join(timeout=5)

    def close(self) -> None:
        self.listener.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectProxy]:
    # Loopback is commonly in NO_PROXY: here it must not be, or the proxy would be bypassed.
    for variable in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    running = ConnectProxy()
    yield running
    running.close()


def test_the_kubeconfigs_proxy_url_carries_the_requests(
    local_cluster: LocalCluster, namespace: Namespace, proxy: ConnectProxy, tmp_path: Path
) -> None:
    config = json.loads(local_cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["proxy-url"] = proxy.url
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    kube = with_kubeconfig(kubeconfig)
    assert kube.get(resource_path("v1", "namespaces", name=namespace.name))["metadata"]["name"] == namespace.name
    server = urllib.parse.urlsplit(local_cluster.server)
    assert proxy.tunnels and set(proxy.tunnels) == {f"{server.hostname}:{server.port}"}


def test_https_proxy_from_the_environment_carries_the_requests(
    local_cluster: LocalCluster, namespace: Namespace, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    kube = with_kubeconfig(local_cluster.kubeconfig)
    assert kube.get(resource_path("v1", "namespaces", name=namespace.name))["metadata"]["name"] == namespace.name
    assert len(proxy.tunnels) == 1
    # The same proxy-free client without the variable: no tunnel.
    monkeypatch.delenv("HTTPS_PROXY")
    with_kubeconfig(local_cluster.kubeconfig).get(resource_path("v1", "namespaces", name=namespace.name))
    assert len(proxy.tunnels) == 1
