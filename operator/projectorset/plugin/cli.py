"""The command line of ``kubectl-projectorset`` (kubectl runs it as ``kubectl projectorset``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from projectorset.plugin import actions, render, view
from projectorset.plugin.cluster import Cluster, Object
from projectorset.plugin.errors import PluginError

# Clear the screen and home the cursor: --watch redraws in place without curses.
CLEAR = "\x1b[H\x1b[2J"


def _prog() -> str:
    """``kubectl projectorset`` or ``kubectl pjs``, as the user typed it (kubectl runs kubectl-<name>)."""
    executable = Path(sys.argv[0]).name
    return "kubectl " + executable.removeprefix("kubectl-") if executable.startswith("kubectl-") else executable


def _connection_flags(default: Any) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "-n", "--namespace", default=default, help="namespace of the ProjectorSet (default: the context's)"
    )
    flags.add_argument("--context", default=default, help="kubeconfig context to use (default: the current one)")
    flags.add_argument(
        "--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)"
    )
    return flags


def parser() -> argparse.ArgumentParser:
    """kubectl passes every argument to a plugin: the connection flags go before or after the command."""
    top = argparse.ArgumentParser(
        prog=_prog(),
        description="Operate ProjectorSets: watch a rollout, promote, abort, retry, pause, resume, "
        "look at the history and roll back, and plan an upgrade before applying it.",
        parents=[_connection_flags(None)],
    )
    # Suppressed defaults: a flag given before the command is not reset by the command's parser.
    common = _connection_flags(argparse.SUPPRESS)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = commands.add_parser("get", parents=[common], help="the set, its versions, replay, stages and events")
    get.add_argument("name")
    get.add_argument("-w", "--watch", action="store_true", help="redraw until interrupted")
    get.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch")
    get.add_argument("-o", "--output", choices=["tree", "json", "yaml"], default="tree")

    for command, text in (
        ("promote", "let the awaited version go live (manual promotion: sets spec.promote)"),
        ("abort", "abort the rollout; the serving version keeps serving (sets spec.abort)"),
        ("retry", "start a Failed or Aborted rollout again"),
        ("pause", "hold the rollout before its next step (sets spec.paused)"),
        ("resume", "carry on after pause (clears spec.paused)"),
    ):
        sub = commands.add_parser(command, parents=[common], help=text, description=text)
        sub.add_argument("name")

    history = commands.add_parser("history", parents=[common], help="the releases kept in the cluster")
    history.add_argument("name")
    history.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")

    undo = commands.add_parser("undo", parents=[common], help="roll back to a kept release (default: the previous)")
    undo.add_argument("name")
    undo.add_argument("--to-version", help="the kept release to go back to")

    plan = commands.add_parser(
        "plan", parents=[common], help="which projectors a manifest would replay, activate or remove"
    )
    plan.add_argument("name")
    plan.add_argument("-f", "--filename", required=True, help="the ProjectorSet manifest ('-' for stdin)")
    plan.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    return top


def dump(document: Any, output: str) -> str:
    if output == "json":
        return json.dumps(document, indent=2, sort_keys=False)
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True).rstrip("\n")


def _now() -> datetime:
    return datetime.now(UTC)


def run_get(cluster: Cluster, arguments: argparse.Namespace, out: TextIO) -> int:
    samples: list[view.LagSample] = []

    def draw() -> str:
        snapshot = cluster.snapshot(arguments.name)
        now = _now()
        view.record(samples, snapshot.projectorset.get("status") or {}, time.monotonic())
        document = view.build(snapshot, now, samples)
        return render.tree(document, now) if arguments.output == "tree" else dump(document, arguments.output)

    if not arguments.watch:
        print(draw(), file=out)
        return 0
    try:
        while True:
            text = draw()
            if arguments.output == "tree":
                out.write(CLEAR + text + "\n")
            else:
                out.write(text + ("\n---\n" if arguments.output == "yaml" else "\n"))
            out.flush()
            time.sleep(arguments.interval)
    except KeyboardInterrupt:
        return 0


def _patch(cluster: Cluster, name: str, decide: Callable[[Object], actions.Change], out: TextIO) -> int:
    change = decide(cluster.read(name))
    cluster.patch_spec(name, change.patch)
    print(change.message, file=out)
    return 0


def run(arguments: argparse.Namespace, out: TextIO) -> int:
    cluster = Cluster.connect(arguments.kubeconfig, arguments.context, arguments.namespace)
    command = arguments.command
    name = arguments.name
    if command == "get":
        return run_get(cluster, arguments, out)
    simple = {
        "promote": actions.promote,
        "abort": actions.abort,
        "retry": actions.retry,
        "pause": actions.pause,
        "resume": actions.resume,
    }
    if command in simple:
        return _patch(cluster, name, simple[command], out)
    if command == "history":
        body = cluster.read(name)
        document = actions.history(body, cluster.deployments(name), cluster.events(name))
        text = render.history(document, _now()) if arguments.output == "table" else dump(document, arguments.output)
        print(text, file=out)
        return 0
    if command == "undo":
        return _patch(cluster, name, lambda b: actions.undo(b, cluster.deployments(name), arguments.to_version), out)
    if command == "plan":
        text = _read_file(arguments.filename)
        body = cluster.read(name)
        document = actions.plan(body, actions.read_manifest(text, name))
        print(render.plan(document) if arguments.output == "table" else dump(document, arguments.output), file=out)
        return 0
    raise PluginError(f"unknown command {command}")


def _read_file(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        return Path(filename).read_text()
    except OSError as error:
        raise PluginError(f"cannot read {filename}: {error.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    try:
        return run(arguments, sys.stdout)
    except PluginError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def console() -> None:
    """The console script's entry point."""
    sys.exit(main())
