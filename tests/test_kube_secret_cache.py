"""The database URI read from a ProjectorSet's Secret is reused for a while, never past a refusal.

A thousand sets starting at once each make several passes within seconds; one Secret read serves
them. The cluster test of wrong credentials (tests/cluster/test_upgrade.py) shows the same on a
real API server: a fixed Secret is used as soon as the database refused the old URI."""

from __future__ import annotations

import base64
from typing import Any, cast

import pytest

from projectorset.adapters import kube
from projectorset.adapters.kube import KubernetesCluster
from projectorset.adapters.kubejson import ApiError, KubeJson
from projectorset.api import ProjectorSetSpec
from projectorset.domain.cluster import Owner
from testbed.manifests import sample_projectorset

URI = "postgresql://app:pw@db.example:5432/app"


class SecretReads:
    """Stands in for ``KubeJson.get`` of the Secret, counting the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.uri: str | None = URI

    def get(self, path: str, **_: Any) -> dict[str, Any]:
        assert path == "/api/v1/namespaces/shop/secrets/accounts-db", path
        self.reads += 1
        if self.uri is None:
            raise ApiError(404, "Not Found", '{"reason": "NotFound", "message": "secrets \\"accounts-db\\" not found"}')
        return {"kind": "Secret", "data": {"uri": base64.b64encode(self.uri.encode()).decode()}}


@pytest.fixture
def cluster() -> tuple[KubernetesCluster, SecretReads]:
    reads = SecretReads()
    return KubernetesCluster(cast(KubeJson, reads)), reads


OWNER = Owner("accounts", "shop", "uid-1")
SPEC = ProjectorSetSpec.model_validate(sample_projectorset("v1")["spec"])


def test_one_read_serves_the_passes_of_a_minute(
    cluster: tuple[KubernetesCluster, SecretReads], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter, secret = cluster
    now = [1000.0]
    monkeypatch.setattr(kube.time, "monotonic", lambda: now[0])
    assert adapter._database_uri(OWNER, SPEC) == (URI, None)
    now[0] += kube.SECRET_CACHE_SECONDS - 1
    assert adapter._database_uri(OWNER, SPEC) == (URI, None)
    assert secret.reads == 1
    now[0] += 2
    secret.uri = URI.replace(":pw@", ":rotated@")
    assert adapter._database_uri(OWNER, SPEC) == (secret.uri, None)
    assert secret.reads == 2


def test_after_the_database_refused_the_uri_the_secret_is_read_again(
    cluster: tuple[KubernetesCluster, SecretReads],
) -> None:
    adapter, secret = cluster
    adapter._database_uri(OWNER, SPEC)
    secret.uri = URI.replace(":pw@", ":fixed@")
    adapter.forget_database_uri(OWNER, SPEC)
    assert adapter._database_uri(OWNER, SPEC) == (secret.uri, None)
    assert secret.reads == 2


def test_a_missing_secret_is_not_remembered(cluster: tuple[KubernetesCluster, SecretReads]) -> None:
    adapter, secret = cluster
    secret.uri = None
    uri, problem = adapter._database_uri(OWNER, SPEC)
    assert uri is None and problem is not None and "not found" in problem
    secret.uri = URI
    assert adapter._database_uri(OWNER, SPEC) == (URI, None)
    assert secret.reads == 2
