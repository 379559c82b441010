"""The operator's credentials for the API server: one login shared by Kopf and the passes.

In a pod, the ServiceAccount (its token, CA and namespace, the server from
``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``, as client-go does); otherwise the
kubeconfig (``KUBECONFIG``, else ``~/.kube/config``): server, CA, client certificate, token and
basic auth as Kopf's ``login_with_kubeconfig`` reads them, and what users of real clusters need
beside, which that function lacks: ``exec`` credential plugins, ``tokenFile``, and paths
relative to the kubeconfig that names them (so the merge keeps each entry's file, and the
kubeconfig is read here rather than by Kopf's function). What it cannot honour is refused by name.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The kubelet rotates a pod's token file; client-go reads it again once its copy is a minute old.
TOKEN_FILE_SECONDS = 60.0
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT_SECONDS = 60.0
# Kubeconfig fields that would change who the operator is or how it connects, which neither
# Kopf's watches nor the passes' client can honour: refused rather than silently ignored.
UNSUPPORTED_USER_FIELDS = ("auth-provider", "as", "as-uid", "as-groups", "as-user-extra")
UNSUPPORTED_CLUSTER_FIELDS = ("proxy-url", "tls-server-name")


@dataclasses.dataclass(frozen=True)
class Login:
    """Credentials, and for how many seconds they serve before they must be read again (None:
    until the API server refuses them)."""

    info: kopf.ConnectionInfo
    fresh_for: float | None = None


def in_pod_login(directory: str | Path, environ: Mapping[str, str]) -> Login | None:
    """The pod's ServiceAccount, or None when not in a pod (as client-go decides: both service
    variables set and a token file present)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token_file = Path(directory) / "token"
    if not host or not port or not token_file.exists():
        return None
    ca_file = Path(directory) / "ca.crt"
    namespace_file = Path(directory) / "namespace"
    server_host = f"[{host}]" if ":" in host else host
    return Login(
        kopf.ConnectionInfo(
            server=f"https://{server_host}:{port}",
            ca_path=str(ca_file) if ca_file.exists() else None,
            token=token_file.read_text().strip() or None,
            default_namespace=namespace_file.read_text().strip() if namespace_file.exists() else None,
        ),
        fresh_for=TOKEN_FILE_SECONDS,
    )


@dataclasses.dataclass(frozen=True)
class _Kubeconfig:
    """The current context's cluster and user, each with the directory of the file that named it."""

    cluster: dict[str, Any]
    cluster_dir: Path
    user: dict[str, Any]
    user_dir: Path
    namespace: str | None


def _kubeconfig_paths(environ: Mapping[str, str]) -> list[Path]:
    if environ.get("KUBECONFIG"):
        return [Path(p).expanduser() for p in environ["KUBECONFIG"].split(os.pathsep) if p.strip()]
    default = Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


def _read_kubeconfig(paths: list[Path]) -> _Kubeconfig:
    """Merged as kubectl (and Kopf) do: the first current-context and the first entry of each name win."""
    current: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {"contexts": {}, "clusters": {}, "users": {}}
    for path in paths:
        if not path.exists():
            continue  # as kubectl: a missing file in KUBECONFIG's list is skipped
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise kopf.LoginError(f"cannot read kubeconfig {path}: {error}") from None
        current = current or config.get("current-context")
        for kind, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in config.get(kind) or []:
                entries[kind].setdefault(item["name"], (item.get(key) or {}, path.absolute().parent))
    if not current:
        raise kopf.LoginError(f"no current-context in the kubeconfig ({os.pathsep.join(map(str, paths))})")
    if current not in entries["contexts"]:
        raise kopf.LoginError(f"the kubeconfig has no context {current!r}")
    context = entries["contexts"][current][0]
    cluster = entries["clusters"].get(context.get("cluster", ""))
    user = entries["users"].get(context.get("user", ""), ({}, Path.cwd()))
    if cluster is None:
        raise kopf.LoginError(f"the kubeconfig has no cluster {context.get('cluster')!r} (context {current!r})")
    return _Kubeconfig(cluster[0], cluster[1], user[0], user[1], context.get("namespace"))


def _relative_to(directory: Path, path: Any) -> Any:
    """A path as kubectl reads it: relative to the kubeconfig that names it."""
    if isinstance(path, str) and path and not os.path.isabs(path):
        return str(directory / path)
    return path


def kubeconfig_login(environ: Mapping[str, str]) -> Login | None:
    """The kubeconfig's current context, or None when there is no kubeconfig."""
    paths = _kubeconfig_paths(environ)
    if not paths:
        return None
    config = _read_kubeconfig(paths)
    for field in UNSUPPORTED_USER_FIELDS:
        if config.user.get(field):
            raise kopf.LoginError(f"the kubeconfig's user sets {field!r}, which the operator does not support")
    for field in UNSUPPORTED_CLUSTER_FIELDS:
        if config.cluster.get(field):
            raise kopf.LoginError(f"the kubeconfig's cluster sets {field!r}, which the operator does not support")
    cluster, user = config.cluster, config.user
    if not cluster.get("server"):
        raise kopf.LoginError("the kubeconfig's cluster has no server")
    try:
        info = _connection_info(config)
    except ValueError as error:  # e.g. a certificate both as a file and as data
        raise kopf.LoginError(f"the kubeconfig's current context: {error}") from None
    if user.get("exec"):
        return _exec_login(info, config)
    if not info.token and user.get("tokenFile"):
        token_file = Path(_relative_to(config.user_dir, user["tokenFile"]))
        try:
            token = token_file.read_text().strip()
        except OSError as error:
            raise kopf.LoginError(f"cannot read the kubeconfig's tokenFile {token_file}: {error}") from None
        return Login(dataclasses.replace(info, token=token), fresh_for=TOKEN_FILE_SECONDS)
    return Login(info)


def _connection_info(config: _Kubeconfig) -> kopf.ConnectionInfo:
    cluster, user = config.cluster, config.user
    return kopf.ConnectionInfo(
        server=cluster["server"],
        ca_path=_relative_to(config.cluster_dir, cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=cluster.get("insecure-skip-tls-verify"),
        certificate_path=_relative_to(config.user_dir, user.get("client-certificate")),
        certificate_data=user.get("client-certificate-data"),
        private_key_path=_relative_to(config.user_dir, user.get("client-key")),
        private_key_data=user.get("client-key-data"),
        username=user.get("username"),
        password=user.get("password"),
        token=user.get("token"),
        default_namespace=config.namespace,
    )


def _exec_login(info: kopf.ConnectionInfo, config: _Kubeconfig) -> Login:
    """Run the kubeconfig's credential plugin (client.authentication.k8s.io ExecCredential)."""
    plugin = config.user["exec"]
    api_version = plugin.get("apiVersion")
    command = plugin.get("command")
    if api_version not in EXEC_API_VERSIONS:
        raise kopf.LoginError(f"exec credential plugin apiVersion {api_version!r} is not supported")
    if not command:
        raise kopf.LoginError("the kubeconfig's exec credential plugin names no command")
    if plugin.get("interactiveMode") == "Always":
        raise kopf.LoginError(f"exec credential plugin {command!r} needs a terminal (interactiveMode: Always)")
    if os.sep in command:
        command = _relative_to(config.user_dir, command)
    request: dict[str, Any] = {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    if plugin.get("provideClusterInfo"):
        request["spec"]["cluster"] = _exec_cluster(config)
    environment = {
        **os.environ,
        **{item["name"]: item.get("value", "") for item in plugin.get("env") or []},
        "KUBERNETES_EXEC_INFO": json.dumps(request),
    }
    try:
        # stderr passes through to the operator's log, as kubectl shows it; stdout is the credential.
        ran = subprocess.run(
            [command, *(plugin.get("args") or [])],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            timeout=EXEC_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        hint = f" ({plugin['installHint'].strip()})" if plugin.get("installHint") else ""
        raise kopf.LoginError(f"exec credential plugin {command!r} did not run: {error}{hint}") from None
    if ran.returncode != 0:
        raise kopf.LoginError(f"exec credential plugin {command!r} exited with status {ran.returncode}")
    try:
        credential = json.loads(ran.stdout)
        status = credential["status"]
    except (ValueError, KeyError, TypeError):
        raise kopf.LoginError(f"exec credential plugin {command!r} printed no ExecCredential with a status") from None
    if credential.get("apiVersion") != api_version or credential.get("kind") != "ExecCredential":
        raise kopf.LoginError(
            f"exec credential plugin {command!r} answered {credential.get('apiVersion')!r} "
            f"{credential.get('kind')!r}, not {api_version} ExecCredential"
        )
    token = status.get("token")
    certificate, key = status.get("clientCertificateData"), status.get("clientKeyData")
    if bool(certificate) != bool(key):
        raise kopf.LoginError(f"exec credential plugin {command!r} gave a client certificate without its key")
    if not token and not certificate:
        raise kopf.LoginError(f"exec credential plugin {command!r} gave neither a token nor a client certificate")
    expiration = None
    if status.get("expirationTimestamp"):
        try:
            expiration = datetime.fromisoformat(status["expirationTimestamp"])
        except ValueError:
            raise kopf.LoginError(f"exec credential plugin {command!r}: bad expirationTimestamp") from None
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
    if certificate:
        info = dataclasses.replace(
            info, certificate_path=None, certificate_data=certificate, private_key_path=None, private_key_data=key
        )
    if token:
        info = dataclasses.replace(info, token=token, scheme=None)
    info = dataclasses.replace(info, expiration=expiration)
    return Login(info, fresh_for=(expiration - datetime.now(UTC)).total_seconds() if expiration else None)


def _exec_cluster(config: _Kubeconfig) -> dict[str, Any]:
    """The cluster as an ExecCredential's spec.cluster tells it to a plugin that asks for it."""
    cluster = config.cluster
    ca_data = cluster.get("certificate-authority-data")
    if not ca_data and cluster.get("certificate-authority"):
        ca_file = Path(_relative_to(config.cluster_dir, cluster["certificate-authority"]))
        try:
            ca_data = base64.b64encode(ca_file.read_bytes()).decode()
        except OSError as error:
            raise kopf.LoginError(f"cannot read the kubeconfig's certificate-authority {ca_file}: {error}") from None
    described: dict[str, Any] = {"server": cluster.get("server")}
    if ca_data:
        described["certificate-authority-data"] = ca_data
    if cluster.get("insecure-skip-tls-verify"):
        described["insecure-skip-tls-verify"] = True
    extension = {e.get("name"): e.get("extension") for e in cluster.get("extensions") or []}
    if extension.get("client.authentication.k8s.io/exec") is not None:
        described["config"] = extension["client.authentication.k8s.io/exec"]
    return described


class Credentials:
    """The operator's one login: Kopf's login handler and the passes' client both ask here.

    Credentials are kept until they must be read again (a token file a minute old, an exec
    credential's expiry) or the API server refused them (``renew``)."""

    def __init__(
        self,
        service_account_dir: str | Path = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service_account_dir = service_account_dir
        self.environ = environ if environ is not None else os.environ
        self.clock = clock
        self._info: kopf.ConnectionInfo | None = None
        self._renew_at: float | None = None  # clock() time
        self._lock = threading.Lock()

    def login(self) -> Login:
        """Log in now, from the pod's ServiceAccount or else the kubeconfig."""
        found = in_pod_login(self.service_account_dir, self.environ) or kubeconfig_login(self.environ)
        if found is None:
            raise kopf.LoginError(
                f"no credentials: not in a pod (no KUBERNETES_SERVICE_HOST/PORT or no token in "
                f"{self.service_account_dir}) and no kubeconfig (KUBECONFIG or ~/.kube/config)"
            )
        return found

    def current(self) -> kopf.ConnectionInfo:
        with self._lock:
            if self._info is None or (self._renew_at is not None and self.clock() >= self._renew_at):
                return self._log_in()
            return self._info

    def renew(self, failed: kopf.ConnectionInfo | None = None) -> kopf.ConnectionInfo:
        with self._lock:
            # When another thread renewed since ``failed`` was handed out, its login serves.
            if self._info is None or failed is None or self._info is failed:
                return self._log_in()
            return self._info

    def _log_in(self) -> kopf.ConnectionInfo:
        found = self.login()
        self._info = found.info
        self._renew_at = None if found.fresh_for is None else self.clock() + found.fresh_for
        return found.info
