"""The toolchain's cache keys: each toolset's key covers its own modules only, so pinning one
(promtool) never rebuilds another (the control plane, a cold build of 30+ minutes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testbed import toolchain


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "toolchain"
    shutil.copytree(toolchain.MODULES_DIR, copy)
    monkeypatch.setattr(toolchain, "MODULES_DIR", copy)
    return copy


def test_a_changed_pin_changes_only_its_toolsets_key(modules: Path) -> None:
    cluster, promtool = toolchain.cache_key(toolchain.CLUSTER), toolchain.cache_key(toolchain.PROMTOOL)
    assert cluster.startswith(f"k8s-{toolchain.KUBERNETES_VERSION}-")
    assert promtool.startswith(f"promtool-v{toolchain.PROMETHEUS_VERSION}-")

    with (modules / "promtool" / "go.sum").open("a") as go_sum:
        go_sum.write("example.com/another v1.0.0 h1:x=\n")
    assert toolchain.cache_key(toolchain.CLUSTER) == cluster
    assert toolchain.cache_key(toolchain.PROMTOOL) != promtool

    with (modules / "helm" / "go.sum").open("a") as go_sum:
        go_sum.write("example.com/another v1.0.0 h1:x=\n")
    assert toolchain.cache_key(toolchain.CLUSTER) != cluster


def test_each_binary_belongs_to_one_toolset() -> None:
    names = [name for toolset in toolchain.TOOLSETS for name in toolset.binaries]
    assert len(names) == len(set(names))
    with pytest.raises(KeyError, match="unknown binary 'prometheus'"):
        toolchain.binary("prometheus")
