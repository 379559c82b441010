"""A process kubelet: runs the containers of pods bound to one Node as local processes.

Run as ``python -m testbed.kubelet --kubeconfig PATH --node-name local-node --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from projectorset.adapters.kubejson import KubeJson
from testbed.kubelet.addresses import PodNetwork
from testbed.kubelet.common import log
from testbed.kubelet.log_server import LogServer
from testbed.kubelet.node import NodeAgent, parse_taints
from testbed.kubelet.pod_worker import KubeletConfig
from testbed.kubelet.pods import PodManager
from testbed.workloads import api_client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="local-node")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    # KEP-4603's shorter crash-loop back-off (1 s doubling up to 60 s) keeps tests quick.
    parser.add_argument("--restart-backoff-seconds", type=float, default=1.0)
    parser.add_argument("--max-restart-backoff-seconds", type=float, default=60.0)
    parser.add_argument("--register-with-taints", default="", help="key=value:Effect,... as the kubelet's flag")
    parser.add_argument(
        "--pod-cidr",
        default=None,
        help="a /24 for pod IPs, routed to lo; 'loopback' for 127.0.0.N; default: a free /24 of 198.18.0.0/15",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    args.state_dir.mkdir(parents=True, exist_ok=True)
    kube = KubeJson(api_client(args.kubeconfig))
    config = KubeletConfig(
        node_name=args.node_name,
        state_dir=args.state_dir,
        restart_backoff=args.restart_backoff_seconds,
        max_restart_backoff=args.max_restart_backoff_seconds,
    )
    network = PodNetwork(args.pod_cidr)
    ips = network.setup()
    log.info("pod IPs come from %s", ips.network)
    manager = PodManager(kube, config, ips)
    logs = LogServer(args.state_dir, manager.is_running).start()
    taints = parse_taints(args.register_with_taints)
    node = NodeAgent(kube, args.node_name, args.heartbeat_seconds, taints, kubelet_port=logs.port)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping all containers", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        # The API server may still be coming up when the launcher starts us.
        deadline = time.monotonic() + 60
        while not stopping.is_set():
            try:
                node.register()
                break
            except Exception as error:
                if time.monotonic() > deadline:
                    raise
                log.info("registering node: %s (retrying)", error)
                time.sleep(0.5)
        log.info("node %s registered", args.node_name)

        threading.Thread(target=node.run, name="node-heartbeat", daemon=True).start()
        threading.Thread(target=manager.run, name="pod-watch", daemon=True).start()
        stopping.wait()
        node.stop()
        manager.stop_all(grace=5)
    finally:
        logs.stop()
        network.teardown()
    log.info("kubelet stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
