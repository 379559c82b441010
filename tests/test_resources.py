"""The manifests the operator builds, read back the way the adapter reads them."""

from __future__ import annotations

import json

from rollout_world import manifest

from projectorset.cluster import Owner
from projectorset.resources import RELEASE_ANNOTATION, build_deployment, deployment_view

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
