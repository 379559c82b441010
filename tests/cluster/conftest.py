"""Fixtures for tests against the real local cluster (``testbed.cluster``).

The cluster is started once per session; its binaries are built from Go modules on
first use (never skipped: a missing binary is built, which takes long only once).
Every test in this directory carries the ``cluster`` marker, so ``pytest -m 'not cluster'``
runs without it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from projectorset.adapters.kubejson import KubeJson
from testbed import toolchain
from testbed.cluster import LocalCluster
from testbed.postgres import PostgresServer
from testbed.scenario import Scenario, running_scenario

_HERE = Path(__file__).resolve().parent

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kubectl(local_cluster: LocalCluster) -> Kubectl:
    """Run the real kubectl against the cluster: ``kubectl("get", "pods", check=True)``."""
    binary = toolchain.binary("kubectl")

    def run(
        *args: str, check: bool = False, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KUBECONFIG=str(local_cluster.kubeconfig))
        return subprocess.run(
            [str(binary), *args], env=env, input=input, capture_output=True, text=True, check=check, timeout=timeout
        )

    return run


@pytest.fixture(scope="session")
def projectorset_crd(kubectl: Kubectl) -> None:
    """The ProjectorSet CRD installed and established, for tests without a ``scenario``."""
    kubectl("apply", "-f", str(_HERE.parents[1] / "crds" / "projectorsets.yaml"), check=True)
    kubectl("wait", "--for=condition=Established", "crd/projectorsets.projectorset.io", "--timeout=60s", check=True)


@pytest.fixture(scope="session")
def kube_api(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(local_cluster.kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture(scope="session")
def operator_kube(local_cluster: LocalCluster) -> Iterator[KubeJson]:
    """The operator's client (``kubejson``), logged in as the operator is outside a pod: with the
    cluster's kubeconfig."""
    kube = KubeJson.connect(environ={"KUBECONFIG": str(local_cluster.kubeconfig)})
    yield kube
    kube.close()


_namespaces = itertools.count(1)


@pytest.fixture
def scenario(
    local_cluster: LocalCluster,
    kube_api: client.ApiClient,
    postgres_server: PostgresServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Scenario]:
    """A namespace of its own with the sample application's database, Secret and Service, and
    the operator running as a process."""
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")[:20]
    namespace = f"{prefix}-{next(_namespaces)}-{int(time.time()) % 100000}"
    with running_scenario(local_cluster, kube_api, postgres_server, namespace, tmp_path) as running:
        running.prepare()
        running.start_operator()
        yield running


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build the binaries before any test runs: a cold build takes far longer than the
    # per-test timeout, and hooks are not under it. Only when cluster tests were selected.
    if any(item.get_closest_marker("cluster") for item in session.items):
        capture = session.config.pluginmanager.getplugin("capturemanager")
        # Uncaptured, so the build's progress shows instead of a long silence.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            toolchain.ensure_binaries()
