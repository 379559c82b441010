"""Which set may switch a Service (ownership.service_claim)."""

from __future__ import annotations

import pytest

from projectorset.api import NAME_LABEL, VERSION_LABEL
from projectorset.domain.ownership import OWNER_ANNOTATION, service_claim


def claim(annotations: dict[str, str], selector: dict[str, str], *, first_install: bool = False) -> str | None:
    refusal = service_claim("shop", "web", "frontend", annotations, selector, first_install=first_install)
    return None if refusal is None else refusal.message


def test_the_set_that_claimed_a_service_switches_it() -> None:
    assert claim({OWNER_ANNOTATION: "shop/web"}, {NAME_LABEL: "web", VERSION_LABEL: "v1"}) is None


@pytest.mark.parametrize("first_install", [True, False])
def test_a_service_claimed_by_another_set_is_never_switched(first_install: bool) -> None:
    refusal = service_claim(
        "shop",
        "web",
        "frontend",
        {OWNER_ANNOTATION: "shop/workers"},
        {NAME_LABEL: "workers", VERSION_LABEL: "v3"},
        first_install=first_install,
    )
    assert refusal is not None
    assert refusal.other == "shop/workers"
    assert "shop/workers" in refusal.message and "frontend" in refusal.message


def test_an_unclaimed_service_selecting_another_sets_pods_belongs_to_that_set() -> None:
    refusal = service_claim(
        "shop", "web", "frontend", {}, {NAME_LABEL: "workers", VERSION_LABEL: "v3"}, first_install=True
    )
    assert refusal is not None and refusal.other == "shop/workers"


def test_an_unclaimed_service_already_selecting_this_sets_pods_is_claimed() -> None:
    # Switched by an operator version from before claims: this set's own.
    assert claim({}, {NAME_LABEL: "web", VERSION_LABEL: "v1"}) is None


def test_a_service_selecting_foreign_pods_is_taken_over_only_on_a_first_install() -> None:
    assert claim({}, {"app": "frontend"}, first_install=True) is None
    message = claim({"team": "web"}, {"app": "frontend"}, first_install=False)
    assert message is not None and f"{OWNER_ANNOTATION}=shop/web" in message
