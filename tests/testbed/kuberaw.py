"""Plain-JSON access to the Kubernetes API through the official client's transport.

The kubelet and the service proxy work on raw dicts (field names as in YAML) instead of the
generated models: pod specs are easier to read that way, and watch streams need raw events to
handle 410 Gone and bookmarks themselves. Authentication, TLS and the server address still come
from the official client's ``ApiClient``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

JSON = dict[str, Any]


class Gone(Exception):
    """The watch's resourceVersion is too old: the caller must list again."""


def load_api_client(kubeconfig: str) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # Many threads share one client (a watch each, a worker per pod): keep their connections pooled.
    configuration.connection_pool_maxsize = 64
    return client.ApiClient(configuration)


class RawKube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float | tuple[float, float],
    ) -> Any:
        params = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items()]
        _, url, headers, body, post = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api_client.call_api(method, url, headers, body, post, _request_timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = (5, 30),
    ) -> JSON:
        """Send one request; raise ``ApiException`` (with ``.status``) on any non-2xx answer."""
        response = self._send(method, path, query, body, content_type, timeout)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason, body=response.data.decode())
        return json.loads(response.data) if response.data else {}

    def get(self, path: str, **query: Any) -> JSON:
        return self.request("GET", path, query)

    def patch(self, path: str, body: Any, merge: str = "strategic") -> JSON:
        kind = {"strategic": "strategic-merge-patch", "merge": "merge-patch", "json": "json-patch"}[merge]
        return self.request("PATCH", path, body=body, content_type=f"application/{kind}+json")

    def watch(
        self,
        path: str,
        resource_version: str,
        timeout_seconds: int = 300,
        on_open: Callable[[Any], None] | None = None,
        **query: Any,
    ) -> Iterator[JSON]:
        """Yield watch events (``{"type", "object"}``) from ``resource_version`` on.

        Raises ``Gone`` when the server says the version expired (HTTP 410 or an ERROR event).
        Returns normally when the server closes the stream after ``timeout_seconds``.
        ``on_open`` receives the open urllib3 response, so another thread can ``shutdown()`` it.
        """
        query.update(
            watch=True,
            resourceVersion=resource_version,
            allowWatchBookmarks=True,
            timeoutSeconds=timeout_seconds,
        )
        # The read timeout outlives the server-side timeout so a dead connection is noticed.
        response = self._send("GET", path, query, None, "application/json", (5, timeout_seconds + 30))
        if response.status == 410:
            response.read()
            raise Gone(path)
        if response.status != 200:
            response.read()
            raise ApiException(status=response.status, reason=response.reason, body=response.data.decode())
        if on_open is not None:
            on_open(response.response)
        try:
            for line in iter_resp_lines(response.response):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    if status.get("code") == 410:
                        raise Gone(path)
                    raise ApiException(status=status.get("code"), reason=status.get("message"))
                yield event
        finally:
            response.response.release_conn()


def is_status(error: BaseException, *codes: int) -> bool:
    return isinstance(error, ApiException) and error.status in codes
