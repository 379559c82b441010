"""The publisher gate of Sequent's ActiveProjectorsEventPublisher (docs/sequent-protocol.md), as a pure function."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ProjectorState:
    name: str
    active_version: int | None
    activating_version: int | None
    replaying_version: int | None


class PublishRefused(Exception):
    """Publishing is refused; ``error`` is Sequent's error class name."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


def projectors_to_run(code_versions: Mapping[str, int], states: Iterable[ProjectorState]) -> list[str]:
    """Names of the code's projectors that must process a published event, or raise PublishRefused."""
    # As Sequent's ActiveProjectorsEventPublisher: a projector without a row is not active, so
    # with an empty table no projector runs (the events are still stored).
    by_name = {state.name: state for state in states}
    unknown = sorted(
        name
        for name, state in by_name.items()
        if name not in code_versions and (state.active_version is not None or state.activating_version is not None)
    )
    if unknown:
        raise PublishRefused(
            "UnknownActiveProjectorError",
            f"active or activating projectors unknown to this code: {', '.join(unknown)}",
        )
    run: list[str] = []
    for name, version in code_versions.items():
        state = by_name.get(name)
        if state is None:
            continue
        if state.activating_version is not None:
            raise PublishRefused(
                "ProjectorIsActivatingError",
                f"{name} version {state.activating_version} is activating; this code has version {version}",
            )
        if state.active_version is None:
            continue  # only replaying
        if state.active_version != version:
            raise PublishRefused(
                "DifferentProjectorVersionIsActiveError",
                f"{name} version {state.active_version} is active; this code has version {version}",
            )
        run.append(name)
    return run
