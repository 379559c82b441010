"""projectorset-operator: run the operator (Kopf underneath) against the current kubeconfig
or, inside a cluster, its ServiceAccount."""

from __future__ import annotations

import argparse
import logging
import os
import random
from collections.abc import Sequence

import prometheus_client

from projectorset.runtime import logfields, memory


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="projectorset-operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces "
        "(also from WATCH_NAMESPACES, comma-separated)",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("PEERING_NAME"),
        help="Kopf peering name: several replicas, only one active (needs Kopf's peering CRDs)",
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"),
        help="health endpoint for liveness and readiness probes",
    )
    parser.add_argument(
        "--log-format",
        choices=["plain", "full", "json"],
        default=os.environ.get("LOG_FORMAT", "full"),
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("METRICS_PORT", "9090")),
        help="serve Prometheus metrics on this port (0: off)",
    )
    parser.add_argument("--metrics-address", default=os.environ.get("METRICS_ADDRESS", "0.0.0.0"))
    parser.add_argument(
        "--priority",
        type=int,
        default=int(os.environ["PEERING_PRIORITY"]) if os.environ.get("PEERING_PRIORITY") else None,
        help="peering priority; default random, since Kopf pauses every peer when priorities tie",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    arguments = parser.parse_args(argv)
    if not arguments.namespace and os.environ.get("WATCH_NAMESPACES"):
        arguments.namespace = [n.strip() for n in os.environ["WATCH_NAMESPACES"].split(",") if n.strip()]
    return arguments


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    memory.limit_arenas()
    import kopf

    import projectorset.runtime.handlers  # noqa: F401 - registers the handlers with Kopf

    kopf.configure(
        verbose=arguments.verbose,
        log_format={"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}[
            arguments.log_format
        ],
    )
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    logfields.add_set_fields()  # after kopf.configure, which puts its handler on the root logger
    if arguments.metrics_port:
        try:
            prometheus_client.start_http_server(arguments.metrics_port, addr=arguments.metrics_address)
        except OSError as error:
            # Metrics are not worth a crash loop (e.g. a local Prometheus already on 9090).
            logging.getLogger(__name__).error("no metrics on port %d: %s", arguments.metrics_port, error)
    # Replicas of one Deployment cannot be told apart by their arguments: a random priority
    # lets the highest one act and the others stand by.
    priority = arguments.priority if arguments.priority is not None else random.randint(1, 2**31 - 1)
    kopf.run(
        clusterwide=not arguments.namespace,
        namespaces=arguments.namespace,
        standalone=arguments.peering is None,
        peering_name=arguments.peering,
        priority=priority,
        liveness_endpoint=arguments.liveness or None,
    )


if __name__ == "__main__":
    main()
