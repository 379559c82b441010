"""Reading a ProjectorSet's status conditions, as ``kubectl get -o yaml`` shows them."""

from __future__ import annotations

from typing import Any


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of that type, or ``{}`` while the status has none (so polling can ``.get``)."""
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def is_true(status: dict[str, Any], type_: str) -> bool:
    return condition(status, type_).get("status") == "True"


def failed_and_aborted(status: dict[str, Any]) -> bool:
    """The rollout failed and its replay was aborted: the old version keeps serving."""
    return status.get("phase") == "Failed" and is_true(status, "ReplayAborted")
