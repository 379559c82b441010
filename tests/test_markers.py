"""The markers mean what they say: a test that starts PostgreSQL or the Go binaries without the
marker for it fails, naming the marker, so `make unit` never starts either by mistake."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Marked tests get past the guard to the real start, replaced here by one that starts nothing.
INNER_TESTS = textwrap.dedent(
    """
    import pytest

    from testbed import postgres, toolchain
    from testbed.postgres import PostgresServer


    def test_unmarked_starts_postgresql():
        PostgresServer.start()


    def test_unmarked_builds_helm():
        toolchain.binary("helm")


    @pytest.mark.database
    def test_marked_starts_postgresql(monkeypatch):
        monkeypatch.setattr(postgres, "_start_local_server", lambda *args: "started")
        monkeypatch.delenv(postgres.EXTERNAL_URL_VARIABLE, raising=False)
        assert PostgresServer.start() == "started"


    @pytest.mark.chart
    def test_marked_builds_helm(monkeypatch, tmp_path):
        monkeypatch.setattr(toolchain, "bin_dir", lambda *toolset: tmp_path)
        monkeypatch.setattr(toolchain, "_complete", lambda *toolset_and_directory: True)
        assert toolchain.binary("helm") == tmp_path / "helm"
    """
)


def test_a_test_without_its_marker_fails_naming_it_and_one_with_it_goes_on(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    # The suite's conftest as a plugin, on tests outside the suite; its markers from pyproject.toml.
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-c", str(REPO / "pyproject.toml")]
        + ["--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-q", "-rf", str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{REPO / 'operator'}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = ran.stdout + ran.stderr
    assert "2 failed, 2 passed" in output, output
    assert "test_unmarked_starts_postgresql starts PostgreSQL, but is marked neither database nor cluster" in output, (
        output
    )
    assert "test_unmarked_builds_helm builds or runs the Go binaries" in output, output
    assert "marked neither chart nor cluster" in output, output
