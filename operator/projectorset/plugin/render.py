"""What people read: the ``get`` tree, the ``history``, ``plan`` and list tables, drawn with rich.

A terminal gets colour (none with ``NO_COLOR``) and lines wrapped to its width; a file or a pipe
gets plain text without escape codes, each line whole (rich leaves out styles off a terminal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from projectorset.api import Phase, parse_time
from projectorset.plugin.view import duration, seconds_between

BAR_WIDTH = 24
# Off a terminal no line is wrapped, as kubectl's own output: scripts and logs read whole lines.
PLAIN_WIDTH = 100_000
STATE_MARKS = {"Succeeded": ("✔", "green"), "Failed": ("✖", "red"), "Running": ("●", "yellow")}
PHASE_MARKS = {
    Phase.ACTIVE: ("✔", "green"),
    Phase.FAILED: ("✖", "red"),
    Phase.ABORTED: ("✖", "red"),
    Phase.PAUSED: ("॥", "yellow"),
}


def console(out: TextIO) -> Console:
    """The console for ``out``. Markup, emoji codes and highlighting are off: names and messages
    from the cluster are shown as they are (``[serving]`` is text, not a style tag)."""
    made = Console(file=out, markup=False, emoji=False, highlight=False)
    if not made.is_terminal:
        made.width = PLAIN_WIDTH
    return made


def plain(screen: Console, renderable: RenderableType) -> str:
    """What ``renderable`` looks like off a terminal, without the blanks rich pads table cells with."""
    with screen.capture() as captured:
        screen.print(renderable)
    return "".join(line.rstrip() + "\n" for line in captured.get().splitlines())


def show(screen: Console, renderable: RenderableType) -> None:
    if screen.is_terminal:
        screen.print(renderable)
        return
    screen.file.write(plain(screen, renderable))
    screen.file.flush()


def _ago(value: Any, now: datetime) -> str:
    return duration(seconds_between(parse_time(value), now))


def bar(fraction: float) -> Table:
    """A progress bar and its percentage, on one line. Without colour the bar's rest is blank: the
    brackets show where it ends."""
    line = Table.grid()
    line.add_column()
    line.add_column(min_width=BAR_WIDTH)
    line.add_column()
    line.add_column(no_wrap=True)
    completed = max(0.0, min(1.0, fraction))
    line.add_row("[", ProgressBar(total=1.0, completed=completed, width=BAR_WIDTH), "]", f" {fraction * 100:3.0f}%")
    return line


def _rows(rows: Iterable[Sequence[RenderableType]], header: Sequence[str] = ()) -> Table:
    """Aligned columns two spaces apart, as kubectl prints them (a bold header when given)."""
    table = Table(box=None, show_header=bool(header), header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for name in header:
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _marked(mark: tuple[str, str], text: str) -> Text:
    return Text.assemble((mark[0], mark[1]), " ", text)


def _version_line(version: dict[str, Any]) -> Text:
    serving = "serving" in version["roles"]
    line = Text.assemble(
        (version["version"], "bold"),
        "  ",
        ("[" + " ".join(version["roles"]) + "]", "green" if serving else "cyan"),
        f"  Deployment {version['deployment']}  {version['readyReplicas']}/{version['replicas']} ready",
    )
    if serving:
        line.append("  ◀ Service", "green")
    return line


def _projector_row(projector: dict[str, Any]) -> list[str]:
    def show(value: Any) -> str:
        return "-" if value is None else str(value)

    return [
        projector.get("name", "?"),
        projector.get("plan") or "-",
        f"release {show(projector.get('specVersion'))}",
        f"active {show(projector.get('activeVersion'))}",
        f"activating {show(projector.get('activatingVersion'))}",
        f"replaying {show(projector.get('replayingVersion'))}",
    ]


def _header(d: dict[str, Any], now: datetime) -> Group:
    mark = PHASE_MARKS.get(d["phase"], ("◌", "cyan"))
    state = f"{mark[0]} {d['phase']}" + (f" · {d['reason']}" if d["reason"] else "")
    lines = [Text.assemble((f"ProjectorSet {d['namespace']}/{d['name']}", "bold"), "   ", (state, mark[1]))]
    if d["message"]:
        lines.append(Text(d["message"]))
    facts = [f"version {d['version']}", f"serving {d['servingVersion'] or 'nothing'}", f"promotion {d['promotion']}"]
    if d["promotion"] == "Manual":
        facts.append(f"promoted {d['promote'] or 'nothing'}")
    if d["paused"]:
        facts.append("paused")
    if d["abort"]:
        facts.append("abort requested")
    lines.append(Text(" · ".join(facts)))
    if d["rolloutElapsedSeconds"] is not None:
        lines.append(Text(f"rollout attempt {d['attempt']}, running for {duration(d['rolloutElapsedSeconds'])}"))
    elif d["switchedAt"]:
        lines.append(Text(f"serving since {d['switchedAt']} ({_ago(d['switchedAt'], now)} ago)"))
    return Group(*lines)


def _section(title: str, rows: Table | str) -> Group:
    """A tree node whose rows hang below its title, aligned in columns."""
    return Group(Text(title), rows)


def tree(document: dict[str, Any], now: datetime) -> Tree:
    """The ``get`` tree: everything about one ProjectorSet, read at a glance."""
    d = document
    root = Tree(_header(d, now), guide_style="dim")
    service = d["service"]
    root.add(Text(f"Service {service['name']} → {service['selects'] or 'no version of this set'}"))

    versions = root.add(Text("Versions"))
    if not d["versions"]:
        versions.add(Text("no Deployment yet"))
    for version in d["versions"]:
        node = versions.add(_version_line(version))
        for pod in version["pods"]:
            ready = "terminating" if pod["terminating"] else ("ready" if pod["ready"] else "not ready")
            node.add(Text(f"pod {pod['name']}  {pod['phase']}  {ready}"))

    replay = d["replay"]
    if replay:
        head = f"Replay id {replay['id'] if replay['id'] is not None else '-'} · state {replay['state'] or '-'}"
        head += f" · stage {replay['stage'] or '-'}"
        if replay["catchupRound"]:
            head += f" (catch-up round {replay['catchupRound']})"
        node = root.add(Text(head))
        if replay["lag"] is not None:
            lag = f"lag {replay['lag']:,} events (golive at ≤ {replay['maxLag']:,})"
            if replay.get("catchingUp"):
                # The bar keeps its width; the words wrap in a narrow terminal.
                line = Table.grid(padding=(0, 2))
                line.add_column(no_wrap=True)
                line.add_column()
                line.add_row(bar(replay["progress"] or 0.0), f"{lag}  ETA {replay['eta']}")
                node.add(line)
            else:
                node.add(Text(lag))
        if d["currentJob"]:
            node.add(Text(f"current Job {d['currentJob']}"))

    if d["stages"]:
        stage_rows = []
        for stage in d["stages"]:
            name = stage["stage"] + (f" #{stage['round']}" if stage["round"] else "")
            mark = STATE_MARKS.get(stage["state"], ("?", ""))
            stage_rows.append([_marked(mark, name), duration(stage["elapsedSeconds"]), stage["state"], stage["job"]])
        root.add(_section(f"Stages (attempt {d['attempt']})", _rows(stage_rows)))

    if d["checks"]:
        check_rows: list[list[RenderableType]] = []
        for check in d["checks"]:
            result = check["result"]
            if result is None:
                check_rows.append([_marked(("◌", "dim"), str(check["name"])), "not run in this attempt yet", ""])
                continue
            mark = ("✔", "green") if result.get("passed") else ("✖", "red")
            ran = f"{result.get('checkedAt')} ({result.get('version')}, attempt {result.get('attempt')})"
            check_rows.append([_marked(mark, str(check["name"])), str(result.get("result")), ran])
        root.add(_section("Checks before golive", _rows(check_rows)))

    projectors = "Projectors (plan, and versions in the database as the operator last read them)"
    root.add(
        _section(
            projectors, _rows(_projector_row(p) for p in d["projectors"]) if d["projectors"] else "none reported yet"
        )
    )

    event_rows = [
        [
            _ago(e["time"], now) + " ago",
            Text(e["type"], "yellow" if e["type"] == "Warning" else ""),
            e["reason"],
            e["message"] + (f" (×{e['count']})" if e["count"] > 1 else ""),
        ]
        for e in d["events"]
    ]
    root.add(_section(f"Events (last {len(event_rows)})", _rows(event_rows) if event_rows else "none"))
    return root


def sets(documents: list[dict[str, Any]], now: datetime, all_namespaces: bool) -> Table | Text:
    """``get`` without a name: one row per ProjectorSet, as ``kubectl get`` lists."""
    if not documents:
        return Text("No ProjectorSets found.")
    header = ["NAMESPACE"] if all_namespaces else []
    header += ["NAME", "VERSION", "SERVING", "PHASE", "REASON", "AGE"]
    rows = []
    for d in documents:
        mark = PHASE_MARKS.get(d["phase"], ("◌", "cyan"))
        row: list[RenderableType] = [d["namespace"]] if all_namespaces else []
        row += [
            d["name"],
            str(d["version"] or "-"),
            str(d["servingVersion"] or "-"),
            Text(d["phase"], mark[1]),
            d["reason"] or "-",
            _ago(d["createdAt"], now),
        ]
        rows.append(row)
    return _rows(rows, header)


def history(document: dict[str, Any], now: datetime) -> Group:
    rows = []
    for entry in document["releases"]:
        projectors = ", ".join(f"{name} {version}" for name, version in sorted((entry["projectors"] or {}).items()))
        served = entry["served"] or "-"
        rows.append([entry["version"], projectors or "(unknown)", str(entry["replicas"]), served, entry["now"] or ""])
    undo = (
        f"`undo {document['name']}` goes back to {document['undoDefault'] or '(no earlier release kept)'}; "
        "`undo --to-version V` to another kept release."
    )
    return Group(_rows(rows, ["VERSION", "PROJECTORS", "REPLICAS", "SERVED", "NOW"]), Text(""), Text(undo))


def plan(document: dict[str, Any]) -> Group:
    d = document
    lines: list[RenderableType] = [
        Text(f"Plan for projectorset {d['namespace']}/{d['name']}: version {d['currentVersion']} -> {d['version']}"),
        Text(f"Based on: {d['basedOn']}"),
        Text(""),
    ]
    rows = []
    for projector in d["projectors"]:
        rows.append(
            [
                projector["name"],
                projector["change"],
                "-" if projector["release"] is None else str(projector["release"]),
                "-" if projector["active"] is None else str(projector["active"]),
                projector["action"],
            ]
        )
    lines.append(_rows(rows, ["PROJECTOR", "PLAN", "RELEASE", "ACTIVE", "WHAT HAPPENS"]))
    lines.append(Text(""))
    lines.append(Text(d["summary"]))
    lines.extend(Text(f"note: {notice}") for notice in d["notices"])
    lines.extend(Text(f"blocked ({i['reason']}): {i['message']}", "red") for i in d["issues"])
    return Group(*lines)
