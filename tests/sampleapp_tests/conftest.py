"""Fixtures for the sample application's tests."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from sampleapp_tests.helpers import AppClient, StageResult, run_stage, running_app, settings_for


@pytest.fixture
def app(database_url: str) -> Callable[[str], AbstractContextManager[AppClient]]:
    """``with app("v1") as client:`` runs release v1 against the test database."""

    def start(release: str) -> AbstractContextManager[AppClient]:
        return running_app(settings_for(database_url, release))

    return start


@pytest.fixture
def stage(database_url: str) -> Callable[..., StageResult]:
    """``stage("v2", "prepare", "AccountProjector")``; asserts nothing, returns the result."""

    def call(release: str, *args: str, module: str = "sampleapp.replay") -> StageResult:
        return run_stage(database_url, release, *args, module=module)

    return call
