"""Reading and patching the cluster as kubectl would: the user's kubeconfig and context, the
namespace, impersonation (``--as``, ``--as-group``) and ``--request-timeout``.

Everything read comes back as plain dicts (the API's camelCase JSON), so that the rest of the
plugin works on data a test can build by hand: requests go through ``kubejson``, the client the
operator uses, never through the client's typed models. Every API call goes through ``Cluster._call``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, config
from urllib3.util.retry import Retry

from projectorset import api
from projectorset.adapters.kubejson import ApiException, ConfigException, KubeJson, load_configuration, resource_path
from projectorset.plugin.errors import PluginError

Object = dict[str, Any]
IMPERSONATE_USER = "Impersonate-User"
IMPERSONATE_GROUP = "Impersonate-Group"


@dataclass(frozen=True)
class Connection:
    """kubectl's connection flags as given (None: not given)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    request_timeout: float | None = None  # seconds; None: as long as the server takes
    user: str | None = None  # --as
    groups: tuple[str, ...] = ()  # --as-group

    def kubeconfig_files(self) -> str | None:
        """``--kubeconfig``, else KUBECONFIG (a list of files, merged), else the client's ~/.kube/config."""
        return self.kubeconfig or os.environ.get("KUBECONFIG") or None


@dataclass(frozen=True)
class Snapshot:
    """What ``get`` shows, read in one go."""

    projectorset: Object
    deployments: list[Object] = field(default_factory=list)
    jobs: list[Object] = field(default_factory=list)
    pods: list[Object] = field(default_factory=list)
    service: Object | None = None
    events: list[Object] = field(default_factory=list)


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


class _ImpersonatingClient(client.ApiClient):
    """Sends one ``Impersonate-Group`` line per group: the client's default headers are a dict (one
    value per name), and the API server takes each line as one group name, commas and all."""

    def __init__(self, configuration: client.Configuration, groups: tuple[str, ...]) -> None:
        super().__init__(configuration)
        self.groups = groups

    def param_serialize(self, *args: Any, **kwargs: Any) -> Any:
        method, url, headers, body, post_params = super().param_serialize(*args, **kwargs)
        lines = urllib3.HTTPHeaderDict(headers)
        for group in self.groups:
            lines.add(IMPERSONATE_GROUP, group)
        return method, url, lines, body, post_params


def client_for(connection: Connection) -> tuple[client.ApiClient, str]:
    """The client for the chosen context, and the namespace (the flag's, else the context's, else default)."""
    files = connection.kubeconfig_files()
    try:
        contexts, current = config.list_kube_config_contexts(config_file=files)
        chosen = current
        if connection.context is not None:
            chosen = next((c for c in contexts if c["name"] == connection.context), None)
            if chosen is None:
                raise PluginError(f"--context: context {connection.context!r} is not in the kubeconfig")
        configuration = load_configuration(files, connection.context)
    except (ConfigException, OSError) as error:
        raise PluginError(f"cannot load the kubeconfig: {error}") from None
    # One try per request, as kubectl: a read timing out is not sent again (--request-timeout is
    # per request), only a 429's Retry-After is waited for (client-go's retries).
    configuration.retries = Retry(total=10, connect=0, read=0, other=0)
    configuration.client_go_retries = True
    kube = (
        _ImpersonatingClient(configuration, connection.groups) if connection.groups else client.ApiClient(configuration)
    )
    if connection.user:
        kube.set_default_header(IMPERSONATE_USER, connection.user)
    namespace = connection.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
    return kube, namespace


class Cluster:
    def __init__(self, api_client: client.ApiClient, namespace: str, request_timeout: float | None = None) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.request_timeout = request_timeout
        # None: as long as the server takes, as kubectl without --request-timeout.
        self.kube = KubeJson(api_client, request_timeout=request_timeout)

    @classmethod
    def connect(cls, connection: Connection) -> Cluster:
        api_client, namespace = client_for(connection)
        return cls(api_client, namespace, connection.request_timeout)

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)

    def _call(self, request: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API request within --request-timeout; an unreachable or silent server is a PluginError
        (the API's own refusals stay ApiException, for the caller to explain)."""
        try:
            return request(*args, **kwargs)
        except urllib3.exceptions.HTTPError as error:
            reason = getattr(error, "reason", None) or error
            # (urllib3's NewConnectionError, a refused connection, is a kind of timeout error.)
            silent = isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
                reason, urllib3.exceptions.NewConnectionError
            )
            if silent and self.request_timeout:
                waited = f"{self.request_timeout:g}s (--request-timeout)"
                raise PluginError(f"the API server at {self.server} did not answer within {waited}") from None
            raise PluginError(f"cannot reach the API server at {self.server}: {reason}") from None
        except ApiException as error:
            if error.status == 0:  # the client's own wrapping of a TLS failure
                raise PluginError(f"cannot reach the API server at {self.server}: {error.reason}") from None
            raise

    def _projectorsets(self, name: str | None = None, all_namespaces: bool = False) -> str:
        namespace = None if all_namespaces else self.namespace
        return resource_path(f"{api.GROUP}/{api.VERSION}", api.PLURAL, namespace, name)

    # -- the ProjectorSet --

    def read(self, name: str) -> Object:
        try:
            found: Object = self._call(self.kube.get, self._projectorsets(name))
        except ApiException as error:
            raise self._explain(error, f'projectorset "{name}"', f'in namespace "{self.namespace}"') from None
        return found

    def projectorsets(self, all_namespaces: bool) -> list[Object]:
        """The ProjectorSets of the namespace, or of every namespace (-A)."""
        try:
            found: list[Object] = self._call(self.kube.list_items, self._projectorsets(all_namespaces=all_namespaces))
        except ApiException as error:
            raise self._explain(error, "projectorsets", "") from None
        return found

    def _explain(self, error: ApiException, what: str, where: str) -> PluginError:
        if error.status == 404:
            if not self.crd_installed():
                return PluginError(
                    f"the cluster has no ProjectorSet CRD ({api.PLURAL}.{api.GROUP}/{api.VERSION}): "
                    "install it first (kubectl apply -f crds/, or the Helm chart)"
                )
            return PluginError(f"{what} not found {where}".rstrip())
        if error.status == 401:
            return PluginError(f"the API server at {self.server} did not accept the kubeconfig's credentials")
        if error.status == 403:
            return PluginError(f"forbidden: {_message(error)}")
        return PluginError(f"the API server answered {error.status}: {_message(error)}")

    def crd_installed(self) -> bool:
        try:
            self._call(self.kube.get, f"/apis/{api.GROUP}/{api.VERSION}")
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def patch_spec(self, name: str, patch: Object) -> Object:
        """One JSON merge patch of the ProjectorSet (``{"spec": ...}``, maybe with a resourceVersion)."""
        try:
            patched: Object = self._call(self.kube.patch, self._projectorsets(name), patch)
        except ApiException as error:
            if error.status == 409:
                raise PluginError(
                    f"projectorset {name} changed while the command ran; run it again: {_message(error)}"
                ) from None
            if error.status == 422:
                raise PluginError(f"the API server refused the change: {_message(error)}") from None
            raise self._explain(error, f'projectorset "{name}"', f'in namespace "{self.namespace}"') from None
        return patched

    # -- what belongs to it --

    def _owned(self, group_version: str, plural: str, name: str, **query: str) -> list[Object]:
        """The set's objects of a kind (its label), or those ``query`` selects."""
        query = query or {"labelSelector": f"{api.NAME_LABEL}={name}"}
        try:
            found: list[Object] = self._call(
                self.kube.list_items, resource_path(group_version, plural, self.namespace), **query
            )
        except ApiException as error:
            raise PluginError(f"reading what belongs to projectorset {name}: {_message(error)}") from None
        return found

    def deployments(self, name: str) -> list[Object]:
        return self._owned("apps/v1", "deployments", name)

    def events(self, name: str) -> list[Object]:
        selector = f"involvedObject.name={name},involvedObject.kind={api.KIND}"
        return self._owned("v1", "events", name, fieldSelector=selector)

    def snapshot(self, name: str) -> Snapshot:
        projectorset = self.read(name)
        return Snapshot(
            projectorset=projectorset,
            deployments=self.deployments(name),
            jobs=self._owned("batch/v1", "jobs", name),
            pods=self._owned("v1", "pods", name),
            service=self.service(name, (projectorset.get("spec") or {}).get("service", {}).get("name")),
            events=self.events(name),
        )

    def service(self, name: str, service: str | None) -> Object | None:
        if not service:
            return None
        try:
            found: Object = self._call(self.kube.get, resource_path("v1", "services", self.namespace, service))
        except ApiException as error:
            if error.status == 404:
                return None
            raise PluginError(f"reading what belongs to projectorset {name}: {_message(error)}") from None
        return found
