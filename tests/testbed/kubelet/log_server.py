"""The kubelet's HTTPS ``/containerLogs`` endpoint, behind ``kubectl logs [-f] [--tail N]``."""

from __future__ import annotations

import http.server
import ipaddress
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testbed.kubelet.common import HOST_IP, log


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "process-kubelet")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST_IP))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class LogServer:
    """The kubelet's ``/containerLogs`` endpoint, so ``kubectl logs [-f] [--tail N]`` works.

    The API server proxies those requests to the node's ``daemonEndpoints`` port over HTTPS. It
    verifies the kubelet's certificate only when started with --kubelet-certificate-authority, so
    a self-signed one does; it listens on 127.0.0.1 only, on a free port the Node status reports.
    """

    def __init__(self, state_dir: Path, is_running: Callable[[str, str], bool]) -> None:
        self.state_dir = state_dir
        self.is_running = is_running
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def log_file(self, namespace: str, pod: str, container: str) -> Path | None:
        # The newest pod of that name: a name is reused by a new pod once the old one is gone.
        dirs = sorted(
            (self.state_dir / "pods").glob(f"{namespace}_{pod}_*"), key=lambda d: d.stat().st_mtime, reverse=True
        )
        for directory in dirs:
            if (directory / f"{container}.log").exists():
                return directory / f"{container}.log"
        return None

    def start(self) -> LogServer:
        import ssl

        cert, key = _self_signed_certificate(self.state_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("log server: " + format, *args)

        server = http.server.ThreadingHTTPServer((HOST_IP, 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, name="log-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, request: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(request.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            request.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served")
            return
        _, namespace, pod, container = parts
        query = urllib.parse.parse_qs(url.query)
        path = self.log_file(namespace, pod, container)
        if path is None:
            request.send_error(404, f"no log for container {container} of pod {namespace}/{pod}")
            return
        data = path.read_bytes()
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"][0]) :]) if int(query["tailLines"][0]) > 0 else b""
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        request.end_headers()  # no length: the body ends when the connection closes
        try:
            request.wfile.write(data)
            request.wfile.flush()
            if query.get("follow", ["false"])[0] == "true":
                self._follow(request, path, namespace, pod)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _follow(self, request: http.server.BaseHTTPRequestHandler, path: Path, namespace: str, pod: str) -> None:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            while True:
                chunk = log_file.read()
                if chunk:
                    request.wfile.write(chunk)
                    request.wfile.flush()
                elif not self.is_running(namespace, pod):
                    return  # as the kubelet ends a follow when the container is gone
                else:
                    time.sleep(0.2)
