"""Configuration from environment variables, as a pod spec gives it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigurationError(Exception):
    pass


# Read by release v2-currency's AccountProjector whenever it projects (replay, catch-up, golive and
# every write it projects), as a Rails application's projector reading ENV.fetch would: the web
# process starts and is ready without it, its projected writes fail, and so does its replay.
ACCOUNT_CURRENCY = "ACCOUNT_CURRENCY"


class MissingConfiguration(ConfigurationError):
    """A variable the release's code reads is not set: Ruby's ``KeyError`` from ``ENV.fetch``."""


def fetch_env(name: str, reader: str) -> str:
    """``ENV.fetch(name)``, read when the code needs it (not at boot), by ``reader``."""
    value = os.environ.get(name)
    if not value:
        raise MissingConfiguration(f'KeyError: key not found: "{name}" ({reader} reads it from the environment)')
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str
    release: str = "v1"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    event_store_schema: str = "sequent_schema"
    view_schema: str = "view_schema"
    replay_schema: str = "replay_schema"
    archive_schema: str = "archive_schema"
    pool_size: int = 10
    # Test support: "replay" or "catchup" makes that stage's last group fail with a database
    # error, so the stage fails the way Sequent's does (the replay is marked failed, exit 1).
    replay_fault: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        url = env.get("DATABASE_URL", "")
        if not url:
            raise ConfigurationError("DATABASE_URL is not set (a libpq URI of the application's database)")
        try:
            port = int(env.get("LISTEN_PORT", "8080"))
            pool_size = int(env.get("SAMPLEAPP_POOL_SIZE", "10"))
        except ValueError as error:
            raise ConfigurationError(f"LISTEN_PORT and SAMPLEAPP_POOL_SIZE must be integers: {error}") from None
        fault = env.get("SAMPLEAPP_REPLAY_FAULT") or None
        if fault not in (None, "replay", "catchup"):
            raise ConfigurationError(f"SAMPLEAPP_REPLAY_FAULT must be replay or catchup, not {fault!r}")
        return cls(
            database_url=url,
            release=env.get("SAMPLEAPP_RELEASE", "v1"),
            # POD_IP: what the process kubelet's pod specs usually pass (fieldRef status.podIP).
            listen_host=env.get("LISTEN_HOST") or env.get("POD_IP") or "127.0.0.1",
            listen_port=port,
            event_store_schema=env.get("EVENT_STORE_SCHEMA", "sequent_schema"),
            view_schema=env.get("VIEW_SCHEMA", "view_schema"),
            replay_schema=env.get("REPLAY_SCHEMA", "replay_schema"),
            archive_schema=env.get("ARCHIVE_SCHEMA", "archive_schema"),
            pool_size=pool_size,
            replay_fault=fault,
        )
