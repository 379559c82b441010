"""The operator process runs without the official Kubernetes client: Kopf would import it
whenever it is installed (about 19 MiB resident), and the operator speaks to the API server
through ``kubeapi``. The cluster tests start the real ``projectorset-operator`` that way."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

OPERATOR_DIR = Path(__file__).resolve().parents[1] / "operator"


def imported_modules_after(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport sys\nprint(' '.join(n for n, m in sys.modules.items() if m))\n"
    ran = subprocess.run(
        [sys.executable, "-c", script], cwd=OPERATOR_DIR, capture_output=True, text=True, timeout=120, check=True
    )
    return set(ran.stdout.split())


def test_the_operator_imports_kopf_and_its_handlers_without_the_kubernetes_client() -> None:
    modules = imported_modules_after(
        """
        from projectorset.runtime.main import without_kubernetes_client
        without_kubernetes_client()
        import kopf
        import projectorset.runtime.handlers
        assert kopf.on.login
        """
    )
    assert "projectorset.runtime.handlers" in modules and "kopf" in modules
    assert not any(name == "kubernetes" or name.startswith("kubernetes.") for name in modules)


def test_without_that_kopf_would_import_the_client() -> None:
    # What the helper prevents (and so what makes the test above able to fail): the client is
    # installed here, for the kubectl plugin and the tests, and Kopf imports it when it can.
    assert "kubernetes" in imported_modules_after("import kopf")
