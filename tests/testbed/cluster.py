"""A real local Kubernetes cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the process kubelet, all as local processes on 127.0.0.1.

What controller-runtime's envtest gives Go operators, plus the controllers, the
scheduler and a node, so Deployments, Jobs and EndpointSlices behave for real.
Binaries come from ``testbed.toolchain`` (built from Go modules on first use).

    with LocalCluster.start() as cluster:
        subprocess.run([kubectl, "--kubeconfig", cluster.kubeconfig, "get", "nodes"])

Identities are client certificates from a CA made here: an admin in system:masters
(the kubeconfig handed out), and the controller manager, scheduler and kubelet each
with the identity that the built-in RBAC roles and the Node authorizer expect.

CLI (what ``make cluster-up`` / ``make cluster-down`` run):

    python -m testbed.cluster up      # starts it in the background; last line: export KUBECONFIG=...
    python -m testbed.cluster down    # stops every process and removes the state directory
    python -m testbed.cluster status
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed import stopping, toolchain
from testbed.ports import free_port

NODE_NAME = "local-node"
SERVICE_CIDR = "10.96.0.0/16"
# The first address of the service range: the ClusterIP of the `kubernetes` Service.
API_SERVICE_IP = "10.96.0.1"

_TESTS_DIR = Path(__file__).resolve().parent.parent
_REPO_DIR = _TESTS_DIR.parent

# Stop order: the kubelet first so it can stop its pods while the API still answers.
_STOP_ORDER = ("kubelet", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
COMPONENTS = _STOP_ORDER


def state_dir() -> Path:
    """The fixed place where `up` keeps the background cluster, so `down` finds it."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / "projectorset-cluster"


class ClusterError(RuntimeError):
    pass


# --- certificates ---------------------------------------------------------------------------------


OPERATOR_USER = "projectorset-operator"

# Every request at Metadata level: enough to count who asked for what, nothing of bodies.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def _write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, client certificates and the service-account keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365)

    def key_pem(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(common: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    # EC P-256 keys: generated in milliseconds, which keeps the cold start short.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("projectorset-local-ca"))
        .issuer_name(name("projectorset-local-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(key_pem(ca_key))

    def issue(stem: str, subject: x509.Name, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid_from)
            .not_valid_after(valid_to)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            names: list[x509.GeneralName] = [
                x509.DNSName(n)
                for n in (
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", API_SERVICE_IP)]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{stem}.key").write_bytes(key_pem(key))

    issue("apiserver", name("kube-apiserver"), server=True)
    issue("admin", name("admin", "system:masters"), server=False)
    issue("controller-manager", name("system:kube-controller-manager"), server=False)
    issue("scheduler", name("system:kube-scheduler"), server=False)
    issue("kubelet", name(f"system:node:{NODE_NAME}", "system:nodes"), server=False)
    # An identity of its own for the operator in benchmarks, so the audit log can count its requests.
    issue(OPERATOR_USER, name(OPERATOR_USER, "system:masters"), server=False)

    # Service-account tokens are signed with RSA (RS256 is what every client verifies).
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(key_pem(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    # Certificates are embedded so the file stands alone (copies and `export KUBECONFIG` just work).
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "projectorset-local",
                "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki / f"{user}.crt"),
                    "client-key-data": b64(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "projectorset-local", "context": {"cluster": "projectorset-local", "user": user}}],
        "current-context": "projectorset-local",
    }
    # JSON is valid YAML, and kubeconfig readers accept it.
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


# --- processes ------------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process: with the pid it names a process uniquely (pids are reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has already exited
    return fields[19]


def _alive(pid: int, start_time: str | None) -> bool:
    current = _start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class _Component:
    name: str
    pid: int
    start_time: str | None
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return _alive(self.pid, self.start_time)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "log": str(self.log)}


def _signal_group(pid: int, sig: int) -> None:
    # Each component leads its own session, so its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --- the cluster ----------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    workdir: Path
    server: str
    kubeconfig: Path
    remove_workdir: bool
    components: list[_Component] = field(default_factory=list)
    started_in: float = 0.0

    # -- starting --

    @classmethod
    def start(
        cls,
        workdir: Path | None = None,
        *,
        with_kubelet: bool = True,
        audit_log: bool = False,
        controller_qps: int | None = None,
    ) -> LocalCluster:
        began = time.monotonic()
        binaries = toolchain.ensure_binaries()
        remove = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="projectorset-cluster-")) if workdir is None else workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        api_port = free_port()
        cluster = cls(
            workdir=workdir,
            server=f"https://127.0.0.1:{api_port}",
            kubeconfig=workdir / "kubeconfig",
            remove_workdir=remove,
        )
        try:
            cluster._launch(binaries, api_port, with_kubelet, audit_log, controller_qps)
        except BaseException:
            cluster._print_logs()
            cluster.stop()
            raise
        cluster.started_in = time.monotonic() - began
        # A process that exits without stop() (an interrupted test run) still takes its cluster along.
        atexit.register(cluster.stop)
        return cluster

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> _Component:
        log = self.workdir / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # its own process group: stop() kills it and all it started
            )
        component = _Component(name, popen.pid, _start_time(popen.pid), log, popen)
        self.components.append(component)
        self._save_state()
        return component

    def _launch(
        self,
        binaries: dict[str, Path],
        api_port: int,
        with_kubelet: bool,
        audit_log: bool = False,
        controller_qps: int | None = None,
    ) -> None:
        pki = self.workdir / "pki"
        _write_pki(pki)
        audit_flags: list[str] = []
        if audit_log:
            (self.workdir / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))
            audit_flags = [
                f"--audit-policy-file={self.workdir / 'audit-policy.json'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
            ]
        for user in ("admin", "controller-manager", "scheduler", "kubelet", OPERATOR_USER):
            _write_kubeconfig(self.workdir / f"{user}.kubeconfig", self.server, pki, user)
        shutil.copyfile(self.workdir / "admin.kubeconfig", self.kubeconfig)
        self.kubeconfig.chmod(0o600)

        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                str(binaries["etcd"]),
                "--name=local",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=local=http://127.0.0.1:{peer_port}",
                # Throwaway data: skipping fsync makes every write (and so the tests) much faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(binaries["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The `kubernetes` Service's endpoints would be 127.0.0.1, which the API rejects
                # as an endpoint address; pods on this "node" reach the server on loopback anyway.
                "--endpoint-reconciler-type=none",
                "--enable-admission-plugins=NodeRestriction",
                "--profiling=false",
                *audit_flags,
            ],
        )
        self._wait_ready(timeout=60.0)
        common = ["--leader-elect=false", "--secure-port=0", "--profiling=false"]
        # Each controller's client is limited to 20 requests/s by default (the scheduler's to 50):
        # the Job controller alone then needs about 5 minutes for a thousand Jobs. Large clusters
        # raise it; make bench-scale does, to measure the operator rather than that limit.
        rate = [f"--kube-api-qps={controller_qps}", f"--kube-api-burst={2 * controller_qps}"] if controller_qps else []
        self._spawn(
            "kube-controller-manager",
            [
                str(binaries["kube-controller-manager"]),
                f"--kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                # Each controller gets its own service account, so RBAC applies to them as upstream.
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=projectorset-local",
                *rate,
                *common,
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(binaries["kube-scheduler"]),
                f"--kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
                *rate,
                *common,
            ],
        )
        if with_kubelet:
            self._spawn(
                "kubelet",
                [
                    sys.executable,
                    "-m",
                    "testbed.kubelet",
                    f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
                    f"--node-name={NODE_NAME}",
                    f"--state-dir={self.workdir / 'kubelet'}",
                ],
                env=self._child_env(),
            )
            self._wait_node_ready(timeout=60.0)
        self.wait_for_default_service_account("default", timeout=60.0)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(_TESTS_DIR), str(_REPO_DIR / "operator")]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        # The venv's bin first (its python and console scripts), then kubectl and helm.
        front = [str(Path(sys.executable).parent), str(toolchain.bin_dir())]
        env["PATH"] = os.pathsep.join([*front, env.get("PATH", "")])
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    # -- talking to the API (plain HTTPS, so the launcher needs no client library) --

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """An admin request; returns (status, parsed JSON or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def _wait(self, what: str, timeout: float, check: Any) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for component in self.components:
                if not component.alive():
                    raise ClusterError(f"{component.name} exited while waiting for {what}; log: {component.log}")
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError) as err:
                last = err
            time.sleep(0.1)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")

    def _wait_ready(self, timeout: float) -> None:
        self._wait("the API server's /readyz", timeout, lambda: self.request("GET", "/readyz")[0] == 200)

    def _wait_node_ready(self, timeout: float) -> None:
        def ready() -> bool:
            status, node = self.request("GET", f"/api/v1/nodes/{NODE_NAME}")
            if status != 200:
                return False
            conditions = node.get("status", {}).get("conditions") or []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

        self._wait(f"node {NODE_NAME} to be Ready", timeout, ready)

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines), written when started with ``audit_log=True``."""
        return self.workdir / "logs" / "audit.log"

    def user_kubeconfig(self, user: str, groups: list[str] | None = None) -> Path:
        """A kubeconfig for a client-certificate identity issued at start (only the operator's)."""
        if user != OPERATOR_USER or (groups or ["system:masters"]) != ["system:masters"]:
            raise ValueError(f"only {OPERATOR_USER} in system:masters is issued by this cluster")
        return self.workdir / f"{OPERATOR_USER}.kubeconfig"

    def wait_for_default_service_account(self, namespace: str, timeout: float = 30.0) -> None:
        """Pods are admitted only once their namespace's `default` ServiceAccount exists."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"
        self._wait(f"ServiceAccount {namespace}/default", timeout, lambda: self.request("GET", path)[0] == 200)

    def create_namespace(self, namespace: str, timeout: float = 30.0) -> None:
        """Create a namespace (if absent) and return once pods can be created in it."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        status, reply = self.request("POST", "/api/v1/namespaces", body)
        if status not in (201, 409):
            raise ClusterError(f"creating namespace {namespace} failed: {status} {reply}")
        self.wait_for_default_service_account(namespace, timeout)

    # -- state, so `down` in another process can stop what `up` started --

    def _save_state(self) -> None:
        state = {
            "workdir": str(self.workdir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "remove_workdir": self.remove_workdir,
            "components": [c.to_json() for c in self.components],
        }
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.rename(self.workdir / "state.json")

    @classmethod
    def attach(cls, workdir: Path) -> LocalCluster:
        state = json.loads((workdir / "state.json").read_text())
        return cls(
            workdir=Path(state["workdir"]),
            server=state["server"],
            kubeconfig=Path(state["kubeconfig"]),
            remove_workdir=state["remove_workdir"],
            components=[_Component(c["name"], c["pid"], c["start_time"], Path(c["log"])) for c in state["components"]],
        )

    def running(self) -> list[str]:
        return [c.name for c in self.components if c.alive()]

    # -- stopping --

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this cluster started (and their children); remove the workdir if ours."""
        atexit.unregister(self.stop)
        by_name = {c.name: c for c in self.components}
        ordered = [by_name[n] for n in _STOP_ORDER if n in by_name]
        ordered += [c for c in self.components if c.name not in _STOP_ORDER]
        for component in ordered:
            self._stop_component(component, grace)
        self.components.clear()
        if self.remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_component(self, component: _Component, grace: float) -> None:
        if not _alive(component.pid, component.start_time):
            if component.popen is not None:
                component.popen.wait()
            return
        # Children that left the group (a pod started in a session of its own) are found by parentage.
        extra = _descendants(component.pid)
        extra_times = {pid: _start_time(pid) for pid in extra}
        _signal_group(component.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (
            _alive(component.pid, component.start_time) or any(_alive(p, t) for p, t in extra_times.items())
        ):
            if component.popen is not None:
                component.popen.poll()  # reap, so an exited child is not left as a zombie
            time.sleep(0.05)
        _signal_group(component.pid, signal.SIGKILL)
        for pid, started in extra_times.items():
            if _alive(pid, started):
                _signal_group(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if component.popen is not None:
            component.popen.wait()
        else:
            # Not our child (started by `up` in another process): wait until init has reaped it.
            deadline = time.monotonic() + 5
            while _alive(component.pid, component.start_time) and time.monotonic() < deadline:
                time.sleep(0.05)

    def _print_logs(self, lines: int = 30) -> None:
        for component in self.components:
            print(f"--- {component.name} log: {component.log}", file=sys.stderr)
            try:
                tail = component.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            for line in tail:
                print(f"    {line}", file=sys.stderr)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- CLI ------------------------------------------------------------------------------------------


def _up() -> int:
    directory = state_dir()
    if (directory / "state.json").exists():
        existing = LocalCluster.attach(directory)
        if existing.running():
            print(f"a cluster is already running in {directory}", file=sys.stderr)
            print(f"export KUBECONFIG={existing.kubeconfig}")
            return 0
        existing.stop()  # leftovers of a cluster that died: clear them first
    shutil.rmtree(directory, ignore_errors=True)
    # Components lead their own sessions, so they outlive this command; `down` stops them.
    try:
        cluster = LocalCluster.start(directory)
    except BaseException:  # a failed or interrupted start (SIGTERM, Ctrl-C) stopped what it started
        shutil.rmtree(directory, ignore_errors=True)
        raise
    cluster.remove_workdir = True  # `down` removes the fixed directory too
    atexit.unregister(cluster.stop)  # this one outlives the command on purpose
    cluster._save_state()
    print(f"cluster up in {cluster.started_in:.1f} s; logs in {directory / 'logs'}", file=sys.stderr)
    print(f"kubectl and helm: export PATH={toolchain.bin_dir()}:$PATH", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _down() -> int:
    directory = state_dir()
    if not (directory / "state.json").exists():
        print("no cluster is running", file=sys.stderr)
        shutil.rmtree(directory, ignore_errors=True)
        return 0
    cluster = LocalCluster.attach(directory)
    cluster.stop()
    shutil.rmtree(directory, ignore_errors=True)
    print("cluster stopped", file=sys.stderr)
    return 0


def _status() -> int:
    directory = state_dir()
    if not (directory / "state.json").exists():
        print("no cluster")
        return 1
    cluster = LocalCluster.attach(directory)
    running = cluster.running()
    print(f"running: {', '.join(running) or 'nothing'}; KUBECONFIG={cluster.kubeconfig}")
    return 0 if running else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = {"up": _up, "down": _down, "status": _status}
    if len(args) != 1 or args[0] not in commands:
        print("usage: python -m testbed.cluster up|down|status", file=sys.stderr)
        return 2
    return commands[args[0]]()


if __name__ == "__main__":
    sys.exit(stopping.run(main))
