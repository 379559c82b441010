"""The layers of docs/architecture.md hold at run time too, not only in `lint-imports`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

OPERATOR = Path(__file__).resolve().parents[1] / "operator"
PURE_MODULES = (
    "projectorset.domain.rollout",
    "projectorset.domain.planning",
    "projectorset.domain.resources",
    "projectorset.domain.cluster",
    "projectorset.domain.observation",
    "projectorset.api.conditions",
    "projectorset.domain.sequent",
    "projectorset.api.models",
)
DRIVERS = ("psycopg", "psycopg_pool", "kopf", "kubernetes", "prometheus_client")


def test_pure_modules_load_and_decide_without_psycopg_kopf_or_kubernetes() -> None:
    script = textwrap.dedent(
        f"""
        import importlib, sys
        from datetime import UTC, datetime

        for name in {DRIVERS!r}:
            sys.modules[name] = None  # any import of it now raises ImportError
        for module in {PURE_MODULES!r}:
            importlib.import_module(module)

        from projectorset.api import ProjectorSetSpec, ProjectorSetStatus
        from projectorset.domain.observation import ClusterView, DatabaseView
        from projectorset.domain.rollout import decide
        from projectorset.domain.sequent import DatabaseState

        spec = ProjectorSetSpec.model_validate({{
            "version": "v1", "service": {{"name": "blog"}}, "database": {{"secretRef": {{"name": "db"}}}},
            "projectors": [{{"name": "PostProjector", "version": 1}}],
            "template": {{"spec": {{"containers": [{{"name": "app"}}]}}}},
        }})
        empty = DatabaseView(DatabaseState())
        decision = decide(spec, 1, ProjectorSetStatus(), ClusterView(), empty, datetime.now(UTC))
        print("decided", decision.status.phase)

        try:
            import projectorset.adapters.database
        except ImportError:
            print("database needs psycopg")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=OPERATOR, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # The blocker works (the adapter cannot load), and the pure rollout still decides.
    assert done.stdout.splitlines() == ["decided Deploying", "database needs psycopg"]
