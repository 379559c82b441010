"""The publisher gate (Sequent's ActiveProjectorsEventPublisher, docs/sequent-protocol.md), as a pure function."""

import pytest

from sampleapp.gate import ProjectorState, PublishRefused, projectors_to_run

CODE = {"AccountProjector": 2, "AuditProjector": 1}


def state(name: str, active: int | None = None, activating: int | None = None, replaying: int | None = None):
    return ProjectorState(name, active, activating, replaying)


def refusal(states: list[ProjectorState]) -> str:
    with pytest.raises(PublishRefused) as caught:
        projectors_to_run(CODE, states)
    return caught.value.error


def test_gate_with_empty_projector_states_runs_no_projector() -> None:
    # Sequent's ActiveProjectorsEventPublisher: a projector without a row is not active.
    assert projectors_to_run(CODE, []) == []


def test_matching_active_versions_run_and_missing_rows_are_skipped() -> None:
    assert projectors_to_run(CODE, [state("AccountProjector", active=2)]) == ["AccountProjector"]


def test_only_replaying_projector_is_skipped() -> None:
    states = [state("AccountProjector", replaying=2), state("AuditProjector", active=1)]
    assert projectors_to_run(CODE, states) == ["AuditProjector"]


def test_unknown_active_or_activating_projector_refuses_every_event() -> None:
    assert refusal([state("AuditProjector", active=1), state("Gone", active=1)]) == "UnknownActiveProjectorError"
    assert refusal([state("Gone", activating=3)]) == "UnknownActiveProjectorError"


def test_unknown_projector_that_is_only_replaying_or_inactive_is_ignored() -> None:
    assert projectors_to_run(CODE, [state("Other", replaying=1), state("AuditProjector", active=1)]) == [
        "AuditProjector"
    ]


def test_activating_projector_refuses() -> None:
    assert refusal([state("AccountProjector", active=1, activating=2)]) == "ProjectorIsActivatingError"


def test_other_active_version_refuses_whether_lower_or_higher() -> None:
    assert refusal([state("AccountProjector", active=1)]) == "DifferentProjectorVersionIsActiveError"
    assert refusal([state("AccountProjector", active=3)]) == "DifferentProjectorVersionIsActiveError"
