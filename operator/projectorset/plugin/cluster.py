"""Reading and patching the cluster as kubectl would: the user's kubeconfig, context and namespace.

Everything read comes back as plain dicts (the API's camelCase JSON), so that the rest of the
plugin works on data a test can build by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from projectorset import api
from projectorset.plugin.errors import PluginError

Object = dict[str, Any]


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


class Cluster:
    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
        """Like kubectl: ``--kubeconfig``, else KUBECONFIG (a list of files), else ~/.kube/config;
        ``--context``, else the current one; ``--namespace``, else the context's, else default."""
        try:
            contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = current
            if context is not None:
                chosen = next((c for c in contexts if c["name"] == context), None)
                if chosen is None:
                    raise PluginError(f"context {context!r} is not in the kubeconfig")
            api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        except (ConfigException, OSError) as error:
            raise PluginError(f"cannot load the kubeconfig: {error}") from None
        namespace = namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        return cls(api_client, namespace)

    def _plain(self, obj: Any) -> Object:
        return cast(Object, self.api_client.sanitize_for_serialization(obj))

    # -- the ProjectorSet --

    def read(self, name: str) -> Object:
        try:
            found = self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)
        except ApiException as error:
            raise self._explain(error, name) from None
        return cast(Object, found)

    def _explain(self, error: ApiException, name: str) -> PluginError:
        if error.status == 404:
            if not self.crd_installed():
                return PluginError(
                    f"the cluster has no ProjectorSet CRD ({api.PLURAL}.{api.GROUP}/{api.VERSION}): "
                    "install it first (kubectl apply -f crds/, or the Helm chart)"
                )
            return PluginError(f'projectorset "{name}" not found in namespace "{self.namespace}"')
        if error.status == 403:
            return PluginError(f"forbidden: {_message(error)}")
        return PluginError(f"the API server answered {error.status}: {_message(error)}")

    def crd_installed(self) -> bool:
        try:
            self.custom.get_api_resources(api.GROUP, api.VERSION)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def patch_spec(self, name: str, patch: Object) -> Object:
        """One JSON merge patch of the ProjectorSet (``{"spec": ...}``, maybe with a resourceVersion)."""
        try:
            patched = self.custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                self.namespace,
                api.PLURAL,
                name,
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 409:
                raise PluginError(
                    f"projectorset {name} changed while the command ran; run it again: {_message(error)}"
                ) from None
            if error.status == 422:
                raise PluginError(f"the API server refused the change: {_message(error)}") from None
            raise self._explain(error, name) from None
        return cast(Object, patched)

    # -- what belongs to it --

    def deployments(self, name: str) -> list[Object]:
        listed = self.apps.list_namespaced_deployment(self.namespace, label_selector=f"{api.NAME_LABEL}={name}")
        return [self._plain(item) for item in listed.items]

    def snapshot(self, name: str) -> Snapshot:
        projectorset = self.read(name)
        selector = f"{api.NAME_LABEL}={name}"
        try:
            jobs = self.batch.list_namespaced_job(self.namespace, label_selector=selector).items
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
            events = self.events(name)
            service = self.service((projectorset.get("spec") or {}).get("service", {}).get("name"))
            deployments = self.deployments(name)
        except ApiException as error:
            raise PluginError(f"reading what belongs to projectorset {name}: {_message(error)}") from None
        return Snapshot(
            projectorset=projectorset,
            deployments=deployments,
            jobs=[self._plain(item) for item in jobs],
            pods=[self._plain(item) for item in pods],
            service=service,
            events=events,
        )

    def service(self, name: str | None) -> Object | None:
        if not name:
            return None
        try:
            return self._plain(self.core.read_namespaced_service(name, self.namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def events(self, name: str) -> list[Object]:
        listed = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind={api.KIND}"
        )
        return [self._plain(item) for item in listed.items]
