"""A small synchronous JSON client for the Kubernetes API, over urllib3.

The operator's passes read and write a handful of object kinds as plain dicts (the API
server's JSON); the official client's typed models and its import (about 19 MiB resident
once Kopf imports it too) buy nothing for that. Passes run in threads, so the client is
synchronous and shares one connection pool between them.

Credentials come from a ``CredentialSource`` (``kubelogin.Credentials`` in the operator):
the same login Kopf's watches use. A 401 answer logs in again once and repeats the request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import kopf
import urllib3

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

# Every request gives up after this (connect, read) in seconds: a pass never hangs on a silent
# API server, it fails with a condition and the next one retries.
REQUEST_TIMEOUT = (5.0, 30.0)
# Passes run on several threads and each observes with a few reads in parallel: a pool smaller
# than that drops connections, and every request after opens a new TLS connection.
POOL_SIZE = 32
USER_AGENT = "projectorset-operator"


class ApiError(Exception):
    """The API server answered with a status other than 2xx."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason  # the Status object's reason (NotFound, AlreadyExists, ...) or HTTP's phrase
        self.message = message  # what the API server said, e.g. 'deployments.apps "x" not found'


class CredentialSource(Protocol):
    def current(self) -> kopf.ConnectionInfo:
        """The credentials to use now (logs in when there are none or they are stale)."""

    def renew(self, failed: kopf.ConnectionInfo | None = None) -> kopf.ConnectionInfo:
        """Log in again because ``failed`` was refused (unless that was already done meanwhile)."""


def resource_path(
    group_version: str, plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None
) -> str:
    """The URL path of a collection or an object: ``("apps/v1", "deployments", "ns", "x")``."""
    parts = ["/api" if group_version == "v1" else "/apis", group_version]
    if namespace is not None:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    if sub is not None:
        parts.append(sub)
    return "/".join(parts)


def _tls_identity(info: kopf.ConnectionInfo) -> tuple[Any, ...]:
    """What the connections depend on: a new token alone keeps the pool (and its TLS sessions)."""
    return (
        info.server,
        info.ca_path,
        info.ca_data,
        info.insecure,
        info.certificate_path,
        info.certificate_data,
        info.private_key_path,
        info.private_key_data,
    )


class KubeApi:
    def __init__(
        self,
        credentials: CredentialSource,
        *,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.credentials = credentials
        self.timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._pool_identity: tuple[Any, ...] | None = None

    # -- the verbs the operator uses --

    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, query=query)

    def list_items(self, path: str, label_selector: str | None = None) -> list[JSON]:
        """The items of a collection (``labelSelector`` filtered by the API server)."""
        found = self.request("GET", path, query={"labelSelector": label_selector} if label_selector else None)
        return list(found.get("items") or [])

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: JSON | list[JSON], content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, *, propagation_policy: str | None = None, uid: str | None = None) -> JSON:
        """Delete with a DeleteOptions body; ``uid`` deletes only that object, should the name be
        taken again meanwhile (409 if it was)."""
        options: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if uid:
            options["preconditions"] = {"uid": uid}
        return self.request("DELETE", path, body=options)

    # -- transport --

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> JSON:
        """Send one request and return the answer's JSON. A non-2xx answer raises ``ApiError``;
        a timeout or a lost connection raises urllib3's ``HTTPError`` (after urllib3's usual retries)."""
        url = path + ("?" + urlencode(query) if query else "")
        payload = None if body is None else json.dumps(body).encode()
        info = self.credentials.current()
        response = self._send(info, method, url, payload, content_type)
        if response.status == 401:
            # Expired or rotated credentials: log in again once (another thread may have already).
            info = self.credentials.renew(info)
            response = self._send(info, method, url, payload, content_type)
        if not 200 <= response.status < 300:
            raise _api_error(response)
        return json.loads(response.data) if response.data else {}

    def _send(
        self, info: kopf.ConnectionInfo, method: str, url: str, payload: bytes | None, content_type: str
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **info.as_http_headers()}
        if payload is not None:
            headers["Content-Type"] = content_type
        return self._pool_for(info).request(
            method, info.server.rstrip("/") + url, body=payload, headers=headers, timeout=self.timeout
        )

    def _pool_for(self, info: kopf.ConnectionInfo) -> urllib3.PoolManager:
        identity = _tls_identity(info)
        with self._lock:
            if self._pool is None or self._pool_identity != identity:
                if self._pool is not None:
                    self._pool.clear()  # connections made with the former certificates
                self._pool = urllib3.PoolManager(
                    num_pools=1,
                    maxsize=self.pool_size,
                    # Kopf's: CA file or data, the client certificate and key (data go through a
                    # private temporary file, deleted as soon as the context has loaded them).
                    ssl_context=info.as_ssl_context(),
                    cert_reqs="CERT_NONE" if info.insecure else "CERT_REQUIRED",
                )
                self._pool_identity = identity
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.clear()
            self._pool = None
            self._pool_identity = None


def _api_error(response: urllib3.BaseHTTPResponse) -> ApiError:
    reason = response.reason or ""
    message = ""
    try:
        status = json.loads(response.data)
    except ValueError:
        message = response.data.decode(errors="replace").strip()[:500]
    else:
        if isinstance(status, dict):
            reason = status.get("reason") or reason
            message = status.get("message") or ""
    return ApiError(response.status, reason, message or reason)
