"""The manifests the operator builds, read back the way the adapter reads them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from rollout_world import manifest

from projectorset.api import LABEL_VALUE_PATTERN
from projectorset.domain.cluster import Owner
from projectorset.domain.observation import JobState
from projectorset.domain.resources import (
    RELEASE_ANNOTATION,
    build_deployment,
    build_stage_job,
    deployment_name,
    deployment_view,
    failed_pod_messages,
    job_name,
    job_view,
    service_selector,
)
from projectorset.domain.sequent import Stage

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
            "namespace": "blog",
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
        "BackoffLimitExceeded: Job has reached the specified backoff limit; the error: "
        "cannot determine full path of the `pg_dump` executable "
        "(full output: kubectl logs -n blog job/blog-v2-a1-prepare)"
    )
    assert view.active == 1 and view.deleting
    assert view.finished_at == datetime(2026, 11, 29, 18, 0, tzinfo=UTC)


# ---- object names ---------------------------------------------------------------------------------

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def names_of(set_name: str, version: str) -> list[str]:
    owner = Owner(set_name, "apps", "uid-1")
    return [deployment_name(owner, version), *(job_name(owner, version, 1, stage) for stage in Stage)]


def test_versions_that_differ_in_case_dot_or_underscore_get_their_own_objects() -> None:
    versions = ["v1.2", "v1_2", "V1-2", "v1-2", "v1--2", "v1-.2"]
    deployments = {deployment_name(OWNER, version) for version in versions}
    jobs = {job_name(OWNER, version, 1, Stage.PREPARE) for version in versions}
    catchups = {job_name(OWNER, version, 2, Stage.CATCHUP, 3) for version in versions}
    assert len(deployments) == len(jobs) == len(catchups) == len(versions), (deployments, jobs, catchups)
    # Each still reads as set and version, with the stage (and attempt, round) of a Job at its end.
    assert all(re.fullmatch(r"blog-v1-2-[0-9a-f]{8}", name) for name in deployments), deployments
    assert all(re.fullmatch(r"blog-v1-2-[0-9a-f]{8}-a2-catchup-3", name) for name in catchups), catchups


def test_a_set_and_version_split_at_another_hyphen_get_their_own_objects() -> None:
    """Set ``a`` at version ``b-c`` and set ``a-b`` at version ``c``, in one namespace."""
    first, second = Owner("a", "apps", "uid-1"), Owner("a-b", "apps", "uid-2")
    assert deployment_name(first, "b-c") != deployment_name(second, "c")
    for stage in Stage:
        assert job_name(first, "b-c", 1, stage) != job_name(second, "c", 1, stage)
        assert job_name(first, "b-c", 1, stage, 2) != job_name(second, "c", 1, stage, 2)
    # The names the operator used to give, now plain names of the sets whose names cannot clash:
    # a plain name has exactly one hyphen, a hashed one at least two.
    assert deployment_name(Owner("a", "apps", "uid-3"), "b") == "a-b"
    assert deployment_name(first, "b-c").startswith("a-b-c-")


def test_plain_sets_and_versions_keep_plain_names() -> None:
    spec = manifest("v2")
    assert build_deployment(OWNER, spec, "v2")["metadata"]["name"] == "blog-v2"
    job = build_stage_job(OWNER, spec, "v2", 3, Stage.CATCHUP, 12, ["PostProjector"])
    assert job["metadata"]["name"] == "blog-v2-a3-catchup-12"
    assert job_name(OWNER, "v2", 1, Stage.PREPARE) == "blog-v2-a1-prepare"


def test_the_service_selects_the_versions_deployment_pods_and_never_its_stage_pods() -> None:
    """A running stage pod has no probe, so it is Ready: if the Service selected it, it would take
    connections that nothing accepts (seen as resets right after each switch, while golive's pod exited)."""
    spec = manifest("v2")
    selector = service_selector(OWNER, "v2").items()
    pod_labels = build_deployment(OWNER, spec, "v2")["spec"]["template"]["metadata"]["labels"]
    assert selector <= pod_labels.items()
    for stage in Stage:
        job = build_stage_job(OWNER, spec, "v2", 1, stage, 0, ["PostProjector"])
        stage_pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert not selector <= stage_pod_labels.items(), stage
        # The operator and the plugin still find a stage's pods by set and stage; its Job says the version.
        assert stage_pod_labels["projectorset.io/name"] == "blog" and stage_pod_labels["projectorset.io/stage"] == stage
        assert job["metadata"]["labels"]["projectorset.io/version"] == "v2"


def test_long_sets_and_versions_fit_in_a_label_and_keep_the_stage_visible() -> None:
    owner = Owner("a" * 253, "apps", "uid-1")
    name = job_name(owner, "1.2.3-rc.1" + "x" * 30, 123456, Stage.OPTIMIZE, 999)
    assert DNS_LABEL.fullmatch(name) and len(name) <= 63, name
    assert name.endswith("-a123456-optimize-999") and name.startswith("aaaa"), name
    # A plain pair too long for a plain name is shortened and hashed like any other.
    plain_but_long = Owner("b" * 60, "apps", "uid-1")
    assert len(deployment_name(plain_but_long, "v2")) <= 63
    assert deployment_name(plain_but_long, "v2") != deployment_name(Owner("b" * 61, "apps", "uid-1"), "v2")


# Set names are DNS subdomains (letters lower-case), versions label values of at most 40
# characters. Drawn mostly from a few characters, so that near-collisions (case, '.', '_', '-',
# truncation of long names) are what the property meets.
set_names = st.one_of(
    st.from_regex(r"[ab0]([-.ab0]{0,6}[ab0])?", fullmatch=True),
    st.from_regex(r"[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?", fullmatch=True),
)
versions = st.one_of(
    st.from_regex(r"[aA1]([-_.aA1]{0,6}[aA1])?", fullmatch=True),
    st.from_regex(LABEL_VALUE_PATTERN, fullmatch=True).filter(lambda version: len(version) <= 40),
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.tuples(set_names, versions), min_size=2, max_size=30, unique=True))
def test_different_sets_or_versions_never_share_a_name(pairs: list[tuple[str, str]]) -> None:
    named = {pair: names_of(*pair) for pair in pairs}
    for names in named.values():
        assert all(DNS_LABEL.fullmatch(name) and len(name) <= 63 for name in names), names
    deployments = [names[0] for names in named.values()]
    assert len(set(deployments)) == len(pairs), named
    jobs = [name for names in named.values() for name in names[1:]]
    assert len(set(jobs)) == len(jobs), named


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.tuples(set_names, versions),
    st.lists(
        st.tuples(st.integers(1, 10**6), st.sampled_from(Stage), st.integers(0, 10**6)),
        min_size=2,
        max_size=20,
        unique=True,
    ),
)
def test_the_jobs_of_one_version_never_share_a_name(pair: tuple[str, str], runs: list[tuple[int, Stage, int]]) -> None:
    owner = Owner(pair[0], "apps", "uid-1")
    names = [job_name(owner, pair[1], attempt, stage, round_) for attempt, stage, round_ in runs]
    assert len(set(names)) == len(names), names
    assert all(DNS_LABEL.fullmatch(name) and len(name) <= 63 for name in names), names
