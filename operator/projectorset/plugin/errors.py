"""The one error a plugin command ends with: a message for a person, exit code 1."""

from __future__ import annotations


class PluginError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
