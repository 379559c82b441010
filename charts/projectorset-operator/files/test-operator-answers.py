# `helm test`: every running operator pod of the release answers on its health and metrics ports.
# Runs in the operator image (its Python and the kubernetes client); the chart passes the rest in env.
import os
import sys
import urllib.request

from kubernetes import client, config

try:
    config.load_incluster_config()
except config.ConfigException:
    config.load_kube_config()  # outside a cluster's pod: KUBECONFIG

namespace, selector = os.environ["NAMESPACE"], os.environ["SELECTOR"]
timeout = float(os.environ["TIMEOUT"])
checks = [("health", os.environ["HEALTH_PORT"], "/healthz", "")]
if os.environ.get("METRICS_PORT"):
    checks.append(("metrics", os.environ["METRICS_PORT"], "/metrics", "projectorset_"))

pods = client.CoreV1Api().list_namespaced_pod(namespace, label_selector=selector).items
running = [pod for pod in pods if pod.status.phase == "Running" and pod.status.pod_ip]
failures = []
for pod in running:
    for name, port, path, expected in checks:
        url = f"http://{pod.status.pod_ip}:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = response.read().decode(errors="replace")
        except OSError as error:
            failures.append(f"{pod.metadata.name}: {name} {url}: {error}")
            continue
        if expected not in body:
            failures.append(f"{pod.metadata.name}: {name} {url} answered without {expected!r}")
        else:
            print(f"{pod.metadata.name}: {name} {url} answered")
wanted = int(os.environ["REPLICAS"])
if len(running) < max(wanted, 1):
    failures.append(f"{len(running)} running operator pod(s) with {selector} in {namespace}, {wanted} wanted")
for failure in failures:
    print(failure, file=sys.stderr)
sys.exit(1 if failures else 0)
