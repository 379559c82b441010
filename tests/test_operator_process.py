"""The operator process logs in once: Kopf's watches and the passes' requests share one client
(``kubejson``), found as controller-runtime finds its cluster. No API server is needed to see
which one is chosen; tests/cluster/test_kubejson.py sends requests with each login."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from projectorset.adapters import kubejson
from projectorset.runtime import handlers


def write_kubeconfig(
    path: Path, server: str, user: dict[str, object], cluster: dict[str, object] | None = None
) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a pod has: the ServiceAccount's files and the service variables (no kubeconfig)."""
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("pod-token")
    (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (directory / "namespace").write_text("operators")
    monkeypatch.setattr(kubejson, "SERVICE_ACCOUNT_DIR", directory)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return directory


@pytest.fixture(autouse=True)
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(handlers.runtime, "kube", None)
    yield
    if handlers.runtime.kube is not None:
        handlers.runtime.kube.close()


def test_in_a_pod_kopf_and_the_passes_log_in_with_the_service_account(pod: Path) -> None:
    info = handlers.login()
    assert info.server == "https://10.96.0.1:443"
    assert (info.scheme, info.token) == ("bearer", "pod-token")
    assert info.ca_path == str(pod / "ca.crt")
    # The passes' client is the one Kopf's login came from.
    assert handlers._kube().configuration.host == info.server


def test_an_explicit_kubeconfig_wins_over_the_pods_service_account(
    pod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig", "https://api.example:6443", {"token": "user-token"}, {"proxy-url": "http://proxy:3128"}
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    info = handlers.login()
    assert (info.server, info.token) == ("https://api.example:6443", "user-token")
    # Kopf's watches go through the kubeconfig's proxy as the passes do.
    assert info.proxy_url == "http://proxy:3128" == handlers._kube().configuration.proxy


def test_a_login_again_reads_the_rotated_token(pod: Path) -> None:
    assert handlers.login().token == "pod-token"
    (pod / "token").write_text("rotated-token")
    assert handlers.login().token == "rotated-token"
    assert handlers._kube().configuration.get_api_key_with_prefix("BearerToken") == "bearer rotated-token"


def test_without_any_login_kopf_is_told_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(kopf.LoginError, match="cannot log in to the Kubernetes API"):
        handlers.login()
