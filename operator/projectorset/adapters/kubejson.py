"""The Kubernetes API as plain-dict JSON, over the official client's transport.

The operator, the kubectl plugin and the test bed read and write objects as the API server's
JSON (field names as in YAML), never as the client's generated models: building a model for
every listed object costs time and memory and buys nothing here. Everything else is the official
``kubernetes`` client's: the login (kubeconfig or a pod's ServiceAccount, see ``load_configuration``),
TLS, proxies, one pooled urllib3 ``PoolManager`` shared by every thread, and retries.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kubernetes import config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTClientObject
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import SERVICE_HOST_ENV_NAME, InClusterConfigLoader
from kubernetes.watch.watch import iter_resp_lines
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

# Every request gives up after this (connect, read) in seconds: a pass never hangs on a silent
# API server, it fails with a condition and the next one retries.
REQUEST_TIMEOUT = (5.0, 30.0)
# The operator's passes run on several threads, each observing with a few reads in parallel: a
# pool smaller than that drops connections, and every request after opens a new TLS connection.
POOL_SIZE = 32
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
HOME_KUBECONFIG = "~/.kube/config"
# client-go sends a request again at most 10 times after a 429 (or 5xx) with Retry-After.
MAX_RETRIES = 10

__all__ = [
    "JSON",
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "ApiError",
    "ApiException",
    "ConfigException",
    "Gone",
    "KubeJson",
    "is_status",
    "load_configuration",
    "resource_path",
]


class ApiError(ApiException):
    """The API server answered with a status other than 2xx: ``status``, and its Status object's
    ``reason`` (NotFound, AlreadyExists, ...; HTTP's phrase when there is none) and ``message``
    (e.g. ``deployments.apps "x" not found``)."""

    def __init__(self, status: int, reason: str, body: str, headers: Any = None) -> None:
        super().__init__(status=status, reason=reason, body=body)
        self.headers = headers
        self.message = reason
        try:
            answer = json.loads(body)
        except ValueError:
            self.message = body.strip()[:500] or reason
            return
        if isinstance(answer, dict):
            self.reason = answer.get("reason") or reason
            self.message = answer.get("message") or self.reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


class Gone(Exception):
    """A watch's resourceVersion is too old: the caller must list again."""


def is_status(error: BaseException, *codes: int) -> bool:
    return isinstance(error, ApiException) and error.status in codes


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


class RetryAfter(Retry):
    """urllib3's retries (lost connections; reads only for idempotent verbs), and as client-go: an
    answer 429 or 503 with ``Retry-After`` (API priority and fairness refused the request before
    acting on it) is sent again whatever its verb, after the time the header names."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if self.respect_retry_after_header and has_retry_after and status_code in self.RETRY_AFTER_STATUS_CODES:
            return bool(self.total)
        return super().is_retry(method, status_code, has_retry_after)


def retries() -> Retry:
    return RetryAfter(
        total=MAX_RETRIES,
        connect=3,
        read=2,
        status=MAX_RETRIES,
        backoff_factor=0.2,
        backoff_max=5.0,
        backoff_jitter=0.2,
        respect_retry_after_header=True,
        # The last refusal comes back as an answer (an ApiError with its status), not as urllib3's MaxRetryError.
        raise_on_status=False,
    )


def load_configuration(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: str | Path | None = None,
    pool_size: int = POOL_SIZE,
) -> Configuration:
    """Where to find the cluster, in controller-runtime's order: the kubeconfig named (a flag),
    else ``KUBECONFIG`` (a list of files, merged), else the pod's ServiceAccount (its token file,
    which the kubelet rotates, is read again once a minute and after a 401), else ``~/.kube/config``.
    Raises ``ConfigException`` when none is found or the one found is broken."""
    configuration = Configuration()
    explicit = kubeconfig or environ.get("KUBECONFIG")
    if explicit:
        config.load_kube_config(
            config_file=explicit, context=context, client_configuration=configuration, persist_config=False
        )
    elif context is None and environ.get(SERVICE_HOST_ENV_NAME):
        directory = Path(service_account_dir or SERVICE_ACCOUNT_DIR)
        InClusterConfigLoader(
            token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt"), environ=environ
        ).load_and_set(configuration)
    else:
        config.load_kube_config(
            config_file=os.path.expanduser(HOME_KUBECONFIG),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    if not configuration.verify_ssl:
        # kubectl sends its credentials all the same; say so once, where it is chosen.
        log.warning("insecure-skip-tls-verify: %s is not verified, and credentials go to it", configuration.host)
    configuration.retries = retries()
    configuration.connection_pool_maxsize = pool_size
    return configuration


def _tls_identity(configuration: Configuration) -> tuple[Any, ...]:
    """What the pooled connections depend on: a new token alone keeps them."""
    return (
        configuration.host,
        configuration.ssl_ca_cert,
        configuration.verify_ssl,
        configuration.cert_file,
        configuration.key_file,
        configuration.proxy,
        configuration.tls_server_name,
    )


class KubeJson:
    """Requests as dicts in, dicts out. One instance (one ``ApiClient``, one pool) serves a process."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        reload: Callable[[], Configuration] | None = None,
        request_timeout: float | tuple[float, float] | None = REQUEST_TIMEOUT,
    ) -> None:
        self.api_client = api_client
        # Each request's (connect, read) timeout, or one for both; None: as long as the server takes.
        self.request_timeout = request_timeout
        # How to log in again when the API server refuses the credentials (None: never).
        self._reload = reload
        self._lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        *,
        environ: Mapping[str, str] = os.environ,
        service_account_dir: str | Path | None = None,
        pool_size: int = POOL_SIZE,
        user_agent: str = "",
    ) -> KubeJson:
        """Logged in as ``load_configuration`` finds the cluster, and again the same way after a 401."""

        def load() -> Configuration:
            return load_configuration(
                kubeconfig, context, environ=environ, service_account_dir=service_account_dir, pool_size=pool_size
            )

        api_client = ApiClient(load())
        if user_agent:
            api_client.user_agent = user_agent
        return cls(api_client, reload=load)

    @property
    def configuration(self) -> Configuration:
        return self.api_client.configuration

    # -- the verbs --

    def get(self, path: str, **query: Any) -> JSON:
        return self.request("GET", path, query)

    def text(self, path: str, **query: Any) -> str:
        """A plain-text answer (a pod's log); a non-2xx answer raises ``ApiError``."""
        return self._answer("GET", path, query, None, "application/json", self.request_timeout).decode(errors="replace")

    def list_items(self, path: str, label_selector: str | None = None, **query: Any) -> list[JSON]:
        """The items of a collection (``labelSelector`` filtered by the API server)."""
        if label_selector:
            query["labelSelector"] = label_selector
        return list(self.request("GET", path, query).get("items") or [])

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
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
    ) -> JSON:
        """Send one request and return the answer's JSON. A non-2xx answer raises ``ApiError``; a
        connection lost or timed out after the retries raises urllib3's ``HTTPError``. ``timeout``:
        this request's instead of ``request_timeout``."""
        timeout = timeout if timeout is not None else self.request_timeout
        data = self._answer(method, path, query, body, content_type, timeout)
        return json.loads(data) if data else {}

    def _answer(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float | tuple[float, float] | None,
    ) -> bytes:
        response = self._send_once_more_after_401(method, path, query, body, content_type, timeout)
        data: bytes = response.read()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, response.reason or "", data.decode(errors="replace"), response.headers)
        return data

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
            watch=True, resourceVersion=resource_version, allowWatchBookmarks=True, timeoutSeconds=timeout_seconds
        )
        # The read timeout outlives the server-side timeout so that a dead connection is noticed.
        response = self._send_once_more_after_401(
            "GET", path, query, None, "application/json", (5, timeout_seconds + 30)
        )
        if response.status != 200:
            data = response.read()
            if response.status == 410:
                raise Gone(path)
            raise ApiError(response.status, response.reason or "", data.decode(errors="replace"), response.headers)
        if on_open is not None:
            on_open(response.response)
        try:
            for line in iter_resp_lines(response.response):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise Gone(path)
                    raise ApiError(int(status.get("code") or 0), "", json.dumps(status))
                yield event
        finally:
            response.response.release_conn()

    def _send_once_more_after_401(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float | tuple[float, float] | None,
    ) -> Any:
        configuration = self.configuration
        response = self._send(method, path, query, body, content_type, timeout)
        if response.status == 401 and self._reload is not None:
            # A rotated ServiceAccount token or an expired exec credential: log in again once (as
            # client-go does), unless another thread did meanwhile, and send the request again.
            response.read()
            self.renew(configuration)
            response = self._send(method, path, query, body, content_type, timeout)
        return response

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float | tuple[float, float] | None,
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

    def renew(self, refused: Configuration | None = None) -> Configuration:
        """Log in again, as at start (the token file read anew, an exec plugin run again), unless
        the login that was ``refused`` has already been replaced. New certificates, CA or proxy
        get a new pool; a new token alone keeps the connections."""
        with self._lock:
            current = self.configuration
            if self._reload is None or (refused is not None and refused is not current):
                return current
            fresh = self._reload()
            if _tls_identity(fresh) != _tls_identity(current):
                former = self.api_client.rest_client
                self.api_client.rest_client = RESTClientObject(fresh)
                former.close()
            self.api_client.configuration = fresh
            return fresh

    def close(self) -> None:
        self.api_client.close()
