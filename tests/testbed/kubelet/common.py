"""What every part of the process kubelet shares: its logger, the node's address, timestamps."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

log = logging.getLogger("testbed.kubelet")

HOST_IP = "127.0.0.1"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
