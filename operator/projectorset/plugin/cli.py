"""The command line of ``kubectl-projectorset`` (kubectl runs it as ``kubectl projectorset``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from rich.console import Console, RenderableType
from rich.live import Live

from projectorset.plugin import actions, render, view
from projectorset.plugin.cluster import Cluster, Connection, Object
from projectorset.plugin.errors import PluginError

# Go's duration units, as kubectl's --request-timeout takes them (1m30s, 500ms).
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _prog() -> str:
    """``kubectl projectorset`` or ``kubectl pjs``, as the user typed it (kubectl runs kubectl-<name>)."""
    executable = Path(sys.argv[0]).name
    return "kubectl " + executable.removeprefix("kubectl-") if executable.startswith("kubectl-") else executable


def request_timeout(text: str) -> float:
    """Seconds from kubectl's ``--request-timeout``: a number of seconds or a Go duration; 0 is none."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds (30) or a number with a unit (500ms, 30s, 2m, 1h30m); "
            "0 waits as long as the server takes"
        )
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


def _connection_flags(default: Any, groups: str) -> argparse.ArgumentParser:
    """kubectl's own flags, with its names and meanings; ``--as-group`` collects into ``groups``."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "-n", "--namespace", default=default, help="namespace of the ProjectorSet (default: the context's)"
    )
    flags.add_argument("--context", default=default, help="kubeconfig context to use (default: the current one)")
    flags.add_argument(
        "--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)"
    )
    flags.add_argument(
        "--request-timeout",
        type=request_timeout,
        default=default,
        metavar="DURATION",
        help="give up on a request the API server has not answered in this time (30s, 1m; default 0: wait)",
    )
    flags.add_argument("--as", dest="as_user", default=default, metavar="USER", help="the user to impersonate")
    flags.add_argument(
        "--as-group",
        dest=groups,
        action="append",
        default=default,
        metavar="GROUP",
        help="a group to impersonate (repeat for several; needs --as)",
    )
    return flags


def parser() -> argparse.ArgumentParser:
    """kubectl passes every argument to a plugin: the connection flags go before or after the command."""
    top = argparse.ArgumentParser(
        prog=_prog(),
        description="Operate ProjectorSets: watch a rollout, promote, abort, retry, pause, resume, "
        "look at the history and roll back, and plan an upgrade before applying it.",
        parents=[_connection_flags(None, "as_group")],
    )
    # Suppressed defaults: a flag given before the command is not reset by the command's parser.
    # The command's --as-group go to a list of their own, added to those given before it.
    common = _connection_flags(argparse.SUPPRESS, "as_group_after")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = commands.add_parser(
        "get", parents=[common], help="a set's tree (versions, replay, stages, events), or without NAME the list"
    )
    get.add_argument("name", nargs="?", help="the ProjectorSet (none: list the namespace's)")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="list the sets of every namespace")
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


def _groups(arguments: argparse.Namespace) -> tuple[str, ...]:
    return (*(arguments.as_group or ()), *getattr(arguments, "as_group_after", ()))


def _connection(arguments: argparse.Namespace) -> Connection:
    return Connection(
        kubeconfig=arguments.kubeconfig,
        context=arguments.context,
        namespace=arguments.namespace,
        request_timeout=arguments.request_timeout or None,
        user=arguments.as_user or None,
        groups=_groups(arguments),
    )


def _emit(screen: Console, shown: RenderableType | str) -> None:
    """A table or tree through rich; a JSON or YAML document as it is."""
    if isinstance(shown, str):
        screen.file.write(shown + "\n")
        screen.file.flush()
    else:
        render.show(screen, shown)


def run_get(cluster: Cluster, arguments: argparse.Namespace, screen: Console) -> int:
    samples: list[view.LagSample] = []

    def read() -> tuple[datetime, Any]:
        """The time and the document: one set's, or the list's."""
        now = _now()
        if arguments.name is None:
            return now, {"projectorsets": [view.summary(b) for b in cluster.projectorsets(arguments.all_namespaces)]}
        snapshot = cluster.snapshot(arguments.name)
        view.record(samples, snapshot.projectorset.get("status") or {}, time.monotonic())
        return now, view.build(snapshot, now, samples)

    def draw() -> RenderableType:
        now, document = read()
        if arguments.name is None:
            return render.sets(document["projectorsets"], now, arguments.all_namespaces)
        return render.tree(document, now)

    if arguments.output != "tree":
        while True:
            _emit(screen, dump(read()[1], arguments.output))
            if not arguments.watch:
                return 0
            if arguments.output == "yaml":
                _emit(screen, "---")
            time.sleep(arguments.interval)
    if not arguments.watch:
        render.show(screen, draw())
        return 0
    if screen.is_terminal:
        # Redrawn in place; on Ctrl-C the last frame stays on the screen.
        with Live(draw(), console=screen, auto_refresh=False) as live:
            while True:
                time.sleep(arguments.interval)
                live.update(draw(), refresh=True)
    # A file or a pipe gets each new frame after the last, a blank line between them.
    last = None
    while True:
        frame = render.plain(screen, draw())
        if frame != last:
            screen.file.write(frame if last is None else "\n" + frame)
            screen.file.flush()
            last = frame
        time.sleep(arguments.interval)


def _patch(cluster: Cluster, name: str, decide: Callable[[Object], actions.Change], screen: Console) -> int:
    change = decide(cluster.read(name))
    cluster.patch_spec(name, change.patch)
    _emit(screen, change.message)
    return 0


def run(cluster: Cluster, arguments: argparse.Namespace, screen: Console) -> int:
    command = arguments.command
    name = arguments.name
    if command == "get":
        return run_get(cluster, arguments, screen)
    simple = {
        "promote": actions.promote,
        "abort": actions.abort,
        "retry": actions.retry,
        "pause": actions.pause,
        "resume": actions.resume,
    }
    if command in simple:
        return _patch(cluster, name, simple[command], screen)
    if command == "history":
        body = cluster.read(name)
        document = actions.history(body, cluster.deployments(name), cluster.events(name))
        table = arguments.output == "table"
        _emit(screen, render.history(document, _now()) if table else dump(document, arguments.output))
        return 0
    if command == "undo":
        return _patch(cluster, name, lambda b: actions.undo(b, cluster.deployments(name), arguments.to_version), screen)
    if command == "plan":
        text = _read_file(arguments.filename)
        body = cluster.read(name)
        document = actions.plan(body, actions.read_manifest(text, name))
        _emit(screen, render.plan(document) if arguments.output == "table" else dump(document, arguments.output))
        return 0
    raise PluginError(f"unknown command {command}")


def _read_file(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        return Path(filename).read_text()
    except OSError as error:
        raise PluginError(f"cannot read {filename}: {error.strerror}") from None


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    connect: Callable[[Connection], Cluster] = Cluster.connect,
) -> int:
    """Run one command; ``out`` and ``connect`` let tests give a terminal or a fake cluster."""
    top = parser()
    arguments = top.parse_args(argv)
    if _groups(arguments) and not arguments.as_user:
        top.error("--as-group needs --as (the user to impersonate)")
    if getattr(arguments, "all_namespaces", False) and arguments.name:
        top.error("-A/--all-namespaces lists the sets of every namespace: give no NAME with it")
    try:
        return run(connect(_connection(arguments)), arguments, render.console(out or sys.stdout))
    except PluginError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C ends --watch, as it ends kubectl's; elsewhere it interrupted a command.
        return 0 if getattr(arguments, "watch", False) else 130
