"""The operator's own API client and login (``kubeapi``, ``kubelogin``) against the real API server.

Identities are told apart by what they may do: the admin of the test cluster reads Secrets,
the ServiceAccount ``reader`` made here only reads ConfigMaps (403 on Secrets, naming it).
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import tempfile
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
from projectorset.adapters.kubeapi import JSON_PATCH, ApiError, KubeApi, resource_path
from projectorset.adapters.kubelogin import Credentials, Login
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


class CountingCredentials(Credentials):
    """Credentials that count their logins, with a clock the test moves."""

    def __init__(self, service_account_dir: Path, environ: dict[str, str]) -> None:
        self.now = 1000.0
        super().__init__(service_account_dir, environ, clock=lambda: self.now)
        self.logins = 0

    def login(self) -> Login:
        self.logins += 1
        return super().login()


def assert_reads_as_reader(kube: KubeApi, namespace: str) -> None:
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
    # A kubeconfig is there too, as on a developer's machine: the pod's ServiceAccount wins.
    return {
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
        "KUBECONFIG": str(cluster.kubeconfig),
    }


def test_the_kubeconfig_with_embedded_certificates_reads_writes_and_maps_refusals(
    local_cluster: LocalCluster, namespace: Namespace, operator_kube: KubeApi
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
    local_cluster: LocalCluster, namespace: Namespace, operator_kube: KubeApi, tmp_path: Path
) -> None:
    spec = ProjectorSetSpec.model_validate(sample_projectorset("v1")["spec"])
    nowhere = Owner("accounts", "no-such-namespace", "uid-1")
    with pytest.raises(ClusterError) as not_found:
        KubernetesCluster(operator_kube).apply(nowhere, spec, EnsureDeployment("v1", 1))
    assert not_found.value.reason is Reason.KUBERNETES_NOT_FOUND
    assert 'namespaces "no-such-namespace" not found' in not_found.value.message

    token = namespace.token("reader-token")
    directory = service_account_dir(tmp_path / "sa", local_cluster, token, namespace.name)
    as_reader = KubernetesCluster(KubeApi(Credentials(directory, in_pod_environment(local_cluster))))
    with pytest.raises(ClusterError) as forbidden:
        as_reader.observe(Owner("accounts", namespace.name, "uid-1"), spec)
    assert forbidden.value.reason is Reason.KUBERNETES_FORBIDDEN
    assert "403" in forbidden.value.message and "cannot list resource" in forbidden.value.message
    assert token not in forbidden.value.message


def test_an_event_reads_back_as_kubectl_shows_it(namespace: Namespace, operator_kube: KubeApi) -> None:
    owner = Owner("accounts", namespace.name, "4b1e0c3a-0000-4000-8000-000000000001")
    KubernetesCluster(operator_kube).emit(owner, Event("Warning", Reason.KUBERNETES_FORBIDDEN, "x" * 2000))
    [event] = operator_kube.list_items(resource_path("v1", "events", namespace.name))
    assert event["metadata"]["name"].startswith("accounts.")
    assert event["involvedObject"] == {
        "apiVersion": "projectorset.io/v1alpha1",
        "kind": "ProjectorSet",
        "name": "accounts",
        "namespace": namespace.name,
        "uid": owner.uid,
    }
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "KubernetesForbidden", 1)
    assert event["message"] == "x" * 1024
    assert event["source"] == {"component": "projectorset-operator"}
    assert event["reportingComponent"] == "projectorset-operator" and event["reportingInstance"]
    first = datetime.strptime(event["firstTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert event["lastTimestamp"] == event["firstTimestamp"]
    assert abs((datetime.now(UTC) - first).total_seconds()) < 60


def test_in_a_pod_the_service_account_serves_and_a_rotated_token_is_read_again(
    local_cluster: LocalCluster, namespace: Namespace, tmp_path: Path
) -> None:
    first = namespace.token("first")
    directory = service_account_dir(tmp_path / "serviceaccount", local_cluster, first, namespace.name)
    credentials = CountingCredentials(directory, in_pod_environment(local_cluster))
    kube = KubeApi(credentials)
    assert_reads_as_reader(kube, namespace.name)
    info = credentials.current()
    assert info.default_namespace == namespace.name and info.server == local_cluster.server
    assert credentials.logins == 1

    # The kubelet rotates the file, and the former token stops working: the 401 brings a new
    # login, from the file, and the request is sent again.
    second = namespace.token("second")
    (directory / "token").write_text(second)
    namespace.revoke("first", first)
    assert_reads_as_reader(kube, namespace.name)
    assert credentials.logins == 2 and credentials.current().token == second

    # Without a refusal, the file is read again once the token read from it is a minute old.
    third = namespace.token("third")
    (directory / "token").write_text(third)
    credentials.now += 59
    assert credentials.current().token == second
    credentials.now += 2
    assert credentials.current().token == third and credentials.logins == 3

    # A token no login can cure: the 401 is reported after one new login, not retried for ever.
    (directory / "token").write_text("not-a-token")
    namespace.revoke("third", third)
    with pytest.raises(ApiError) as refused:
        kube.get(resource_path("v1", "configmaps", namespace.name, "settings"))
    assert refused.value.status == 401 and credentials.logins == 4


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
                {"name": "EXPIRES_IN", "value": "600"},
            ],
            "interactiveMode": "Never",
            "provideClusterInfo": True,
        }
    }
    kubeconfig = kubeconfig_with_user(tmp_path, local_cluster, user)
    credentials = CountingCredentials(tmp_path / "no-service-account", {"KUBECONFIG": str(kubeconfig)})
    kube = KubeApi(credentials)
    assert_reads_as_reader(kube, namespace.name)
    requests = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(requests) == 1, "one run serves until the credential expires"
    assert requests[0]["spec"]["interactive"] is False
    assert requests[0]["spec"]["cluster"]["server"] == local_cluster.server
    assert requests[0]["spec"]["cluster"]["certificate-authority-data"]
    expiration = credentials.current().expiration
    assert expiration is not None and 590 < expiration.timestamp() - time.time() <= 600

    credentials.now += 601
    assert_reads_as_reader(kube, namespace.name)
    assert len(runs.read_text().splitlines()) == 2 and credentials.logins == 2


def test_an_exec_plugin_may_give_a_client_certificate_and_a_kubeconfig_a_token_file(
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
    kubeconfig = kubeconfig_with_user(tmp_path, local_cluster, user)
    as_admin = KubeApi(Credentials(tmp_path / "no-service-account", {"KUBECONFIG": str(kubeconfig)}))
    assert as_admin.list_items(resource_path("v1", "secrets", namespace.name)) is not None

    token_dir = tmp_path / "token-user"
    token_dir.mkdir()
    (token_dir / "token").write_text(namespace.token("token-file"))
    kubeconfig = kubeconfig_with_user(token_dir, local_cluster, {"tokenFile": "token"})
    assert_reads_as_reader(
        KubeApi(Credentials(tmp_path / "no-service-account", {"KUBECONFIG": str(kubeconfig)})), namespace.name
    )


def test_a_base64_client_certificate_goes_through_a_temporary_file_that_is_gone_after(
    local_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin's certificate and key are embedded (base64) in the testbed's kubeconfig: Python's
    ssl loads them only from files, so they pass through private temporary files, deleted once
    the connection pool's SSL context has loaded them."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    credentials = Credentials(tmp_path / "no-service-account", {"KUBECONFIG": str(local_cluster.kubeconfig)})
    info = credentials.current()
    assert info.certificate_data and info.private_key_data and not info.certificate_path
    assert base64.b64decode(info.certificate_data).startswith(b"-----BEGIN CERTIFICATE-----")
    kube = KubeApi(credentials)
    assert kube.get("/api/v1/namespaces/default")["metadata"]["name"] == "default"
    assert list(temporary.iterdir()) == []
