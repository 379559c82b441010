"""Free TCP ports for the local servers the tests start."""

from __future__ import annotations

import socket
import threading

_handed_out: set[tuple[str, int]] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out before.

    The kernel may give a just-released port again: etcd's ports, chosen after the API server's
    but bound before it, once took the API server's port ("bind: address already in use")."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        with _lock:
            if (host, port) not in _handed_out:
                _handed_out.add((host, port))
                return port
