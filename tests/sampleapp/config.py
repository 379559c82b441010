"""Configuration from environment variables, as a pod spec gives it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# Per event replayed one by one, the time Sequent master spends beyond the sample app's SQL (one
# statement per projector). Sequent's catch-up and golive use its default offline persistor,
# ActiveRecordPersistor (lib/sequent/configuration.rb, DEFAULT_OFFLINE_REPLAY_PERSISTOR_CLASS):
# per event Ruby deserializes the row (core/event_store.rb#replay_events_from_cursor,
# deserialize_event), publishes it to each projector, and each record write runs
# `where(...).first` (one more SELECT) and then `save!` on an ActiveRecord object
# (core/persistors/active_record_persistor.rb#update_record, #create_or_update_record). In issue
# 20 a real application's golive replayed ~560 events under its locks and writes were refused for
# 441 ms at best, under 0.8 ms per event all in; the sample app's SQL took 0.27 ms per event (one
# projector, a loaded 2-core machine), so 0.4 ms more puts it at the fast end of what the real
# application showed. Set 0 to measure the SQL alone.
REPLAY_EVENT_OVERHEAD_MS = 0.4


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
    # Per event replayed one by one (catch-up, golive): the time Sequent spends beyond the SQL this
    # app runs. See REPLAY_EVENT_OVERHEAD_MS.
    replay_event_overhead_ms: float = REPLAY_EVENT_OVERHEAD_MS

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
        overhead_text = env.get("SAMPLEAPP_REPLAY_EVENT_OVERHEAD_MS", str(REPLAY_EVENT_OVERHEAD_MS))
        try:
            overhead = float(overhead_text)
        except ValueError:
            overhead = -1.0
        if not 0 <= overhead <= 1000:
            raise ConfigurationError(
                "SAMPLEAPP_REPLAY_EVENT_OVERHEAD_MS must be a number of milliseconds from 0 to 1000, "
                f"not {overhead_text!r}"
            )
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
            replay_event_overhead_ms=overhead,
        )
