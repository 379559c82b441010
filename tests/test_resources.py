"""The manifests the operator builds, read back the way the adapter reads them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from rollout_world import manifest

from projectorset.cluster import Owner
from projectorset.observation import JobState
from projectorset.resources import (
    RELEASE_ANNOTATION,
    build_deployment,
    deployment_view,
    failed_pod_messages,
    job_view,
)

OWNER = Owner("blog", "apps", "uid-1")


def test_a_deployment_records_its_release_and_reads_it_back() -> None:
    spec = manifest("v2", {"PostProjector": 2, "AuthorProjector": 1})
    deployment = build_deployment(OWNER, spec, "v2")

    release = json.loads(deployment["metadata"]["annotations"][RELEASE_ANNOTATION])
    assert release["version"] == "v2"
    assert release["projectors"] == {"AuthorProjector": 1, "PostProjector": 2}
    assert release["replicas"] == 2
    # The spec's own template, without the labels the operator adds to the pods.
    assert release["template"] == spec.template
    assert deployment_view(deployment).projectors == {"AuthorProjector": 1, "PostProjector": 2}


def test_a_deployment_without_a_readable_release_has_no_projectors() -> None:
    deployment = build_deployment(OWNER, manifest("v1"), "v1")
    del deployment["metadata"]["annotations"][RELEASE_ANNOTATION]
    assert deployment_view(deployment).projectors is None
    deployment["metadata"]["annotations"][RELEASE_ANNOTATION] = "{not json"
    assert deployment_view(deployment).projectors is None


def test_a_failed_stage_job_shows_the_end_of_its_output_and_its_pods_still_running() -> None:
    """The condition of a failed stage names Sequent's own error (here: no pg_dump in the image),
    and a Job whose pods still run or terminate is not over yet."""
    job = {
        "metadata": {
            "name": "blog-v2-a1-prepare",
            "labels": {
                "projectorset.io/version": "v2",
                "projectorset.io/stage": "prepare",
                "projectorset.io/attempt": "1",
                "projectorset.io/round": "0",
            },
            "deletionTimestamp": "2026-11-29T18:00:05Z",
        },
        "status": {
            "active": 0,
            "terminating": 1,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastTransitionTime": "2026-11-29T18:00:00Z",
                }
            ],
        },
    }
    pod = {
        "metadata": {"labels": {"job-name": "blog-v2-a1-prepare"}},
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 1,
                            "finishedAt": "2026-11-29T17:59:59Z",
                            "message": "rake aborted!\ncannot determine full path of the `pg_dump` executable\n",
                        }
                    }
                }
            ]
        },
    }
    view = job_view(job, failed_pod_messages([pod]))
    assert view.state is JobState.FAILED
    assert view.message == (
        "BackoffLimitExceeded: Job has reached the specified backoff limit; its output ends: "
        "rake aborted! | cannot determine full path of the `pg_dump` executable"
    )
    assert view.active == 1 and view.deleting
    assert view.finished_at == datetime(2026, 11, 29, 18, 0, tzinfo=UTC)
