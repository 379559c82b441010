"""A container's environment: ``$(VAR)`` expansion, env/envFrom from Secrets, ConfigMaps and fieldRefs."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping

from projectorset.adapters.kubejson import JSON, KubeJson, is_status
from testbed.kubelet.common import HOST_IP

# Variables a container inherits from the kubelet itself, so `python -m ...` and tools on PATH work.
INHERITED_ENV = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")

_VAR_REF = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2)
        if name in variables:
            return variables[name]
        return match.group(0)

    return _VAR_REF.sub(replace, text)


class ConfigError(Exception):
    """A Secret, ConfigMap or key the container needs is missing (CreateContainerConfigError)."""


class EnvResolver:
    """Builds a container's environment from env/envFrom, reading Secrets and ConfigMaps."""

    def __init__(self, kube: KubeJson) -> None:
        self.kube = kube

    def _object(self, namespace: str, kind: str, name: str, optional: bool) -> JSON | None:
        try:
            return self.kube.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except Exception as error:
            if is_status(error, 404):
                if optional:
                    return None
                raise ConfigError(f'{kind[:-1]} "{name}" not found') from error
            raise

    @staticmethod
    def _data(obj: JSON, kind: str) -> dict[str, str]:
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data = dict(obj.get("data") or {})
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value).decode(errors="replace")
        return data

    def _key(self, namespace: str, kind: str, ref: JSON) -> str | None:
        optional = bool(ref.get("optional"))
        obj = self._object(namespace, kind, ref["name"], optional)
        if obj is None:
            return None
        data = self._data(obj, kind)
        if ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} {namespace}/{ref['name']}")
        return data[ref["key"]]

    @staticmethod
    def _field(pod: JSON, path: str, pod_ip: str) -> str:
        meta = pod["metadata"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": pod_ip,
            "status.podIPs": pod_ip,
            "status.hostIP": HOST_IP,
            "status.hostIPs": HOST_IP,
        }
        if path not in values:
            raise ConfigError(f"unsupported fieldRef {path}")
        return values[path]

    @staticmethod
    def _resource(container: JSON, ref: JSON) -> str:
        # Enough for apps that read their limits: the raw quantity, or "0" when unset.
        kind, _, resource = ref["resource"].partition(".")
        return str(((container.get("resources") or {}).get(kind) or {}).get(resource, "0"))

    def pod_variables(self, pod: JSON, container: JSON, pod_ip: str) -> dict[str, str]:
        """The variables the pod spec defines for this container (envFrom, then env)."""
        namespace = pod["metadata"]["namespace"]
        variables: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("secrets", "secretRef"), ("configmaps", "configMapRef")):
                if key in source:
                    ref = source[key]
                    obj = self._object(namespace, kind, ref["name"], bool(ref.get("optional")))
                    if obj is not None:
                        for key_name, data_value in self._data(obj, kind).items():
                            variables[prefix + key_name] = data_value
        for entry in container.get("env") or []:
            name = entry["name"]
            if "valueFrom" not in entry:
                variables[name] = expand(entry.get("value", ""), variables)
                continue
            source = entry["valueFrom"]
            value: str | None
            if "secretKeyRef" in source:
                value = self._key(namespace, "secrets", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self._key(namespace, "configmaps", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = self._field(pod, source["fieldRef"]["fieldPath"], pod_ip)
            elif "resourceFieldRef" in source:
                value = self._resource(container, source["resourceFieldRef"])
            else:
                raise ConfigError(f"unsupported valueFrom for {name}")
            if value is not None:
                variables[name] = value
        return variables


def process_environment(pod: JSON, variables: Mapping[str, str]) -> dict[str, str]:
    """What the process sees: a few of the kubelet's own variables, overridden by the pod's."""
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env["HOSTNAME"] = pod["metadata"]["name"]
    env.update(variables)
    return env
