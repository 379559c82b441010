"""Which watch events wake a ProjectorSet: only those that change what its rollout sees."""

from __future__ import annotations

import copy
from typing import Any

from projectorset.handlers import _seen_differently
from projectorset.resources import job_view


def migrate_job(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "accounts-v2-a1-migrate",
            "uid": "job-1",
            "labels": {
                "projectorset.io/name": "accounts",
                "projectorset.io/version": "v2",
                "projectorset.io/attempt": "1",
                "projectorset.io/stage": "migrate",
            },
        },
        "status": status,
    }


def test_a_job_wakes_its_set_when_it_starts_and_ends_not_when_its_pod_gets_ready() -> None:
    views: dict[str, Any] = {}
    created = migrate_job()
    started = migrate_job(active=1, startTime="2026-11-29T21:00:00Z")
    ready = copy.deepcopy(started)
    ready["status"]["ready"] = 1
    done = migrate_job(
        succeeded=1,
        conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-29T21:00:05Z"}],
    )
    woke = [
        _seen_differently(views, "job-1", "MODIFIED", lambda b=body: job_view(b))
        for body in (created, started, ready, done)
    ]
    assert woke == [True, True, False, True]
    assert _seen_differently(views, "job-1", "DELETED", lambda: job_view(done))
    assert views == {}
