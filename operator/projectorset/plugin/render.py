"""Text for people: the ``get`` tree, the ``history`` and ``plan`` tables. Plain text with
box-drawing characters, no colour, so that it reads the same in a terminal, a log and a README."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from projectorset.api import Phase
from projectorset.plugin.view import duration, parse_time, seconds_between

BAR_WIDTH = 24
STATE_MARKS = {"Succeeded": "✔", "Failed": "✖", "Running": "●"}
PHASE_MARKS = {Phase.ACTIVE: "✔", Phase.FAILED: "✖", Phase.ABORTED: "✖", Phase.PAUSED: "॥"}


def _ago(value: Any, now: datetime) -> str:
    return duration(seconds_between(parse_time(value), now))


def bar(fraction: float) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * BAR_WIDTH))
    return "[" + "█" * filled + "░" * (BAR_WIDTH - filled) + f"] {fraction * 100:3.0f}%"


class _Tree:
    """Lines of a tree: ``add(depth, text, last)`` with the connectors drawn from the open levels."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.open: list[bool] = []

    def add(self, depth: int, text: str, last: bool) -> None:
        del self.open[depth:]
        prefix = "".join("│  " if still_open else "   " for still_open in self.open)
        self.lines.append(prefix + ("└─ " if last else "├─ ") + text)
        self.open.append(not last)

    def children(self, depth: int, texts: Sequence[str]) -> None:
        for index, text in enumerate(texts):
            self.add(depth, text, index == len(texts) - 1)


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows padded to aligned columns (the last column is not padded)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(widths[i]) if i < len(widths) else cell for i, cell in enumerate(row)) for row in rows]


def _version_line(version: dict[str, Any]) -> str:
    roles = " ".join(version["roles"])
    ready = f"{version['readyReplicas']}/{version['replicas']} ready"
    arrow = "  ◀ Service" if "serving" in version["roles"] else ""
    return f"{version['version']}  [{roles}]  Deployment {version['deployment']}  {ready}{arrow}"


def _projector_line(projector: dict[str, Any]) -> list[str]:
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


def tree(document: dict[str, Any], now: datetime) -> str:
    """The ``get`` tree: everything about one ProjectorSet, read at a glance."""
    d = document
    mark = PHASE_MARKS.get(d["phase"], "◌")
    title = f"ProjectorSet {d['namespace']}/{d['name']}"
    state = f"{mark} {d['phase']}" + (f" · {d['reason']}" if d["reason"] else "")
    lines = [f"{title}   {state}"]
    if d["message"]:
        lines.append(f"│  {d['message']}")
    facts = [f"version {d['version']}", f"serving {d['servingVersion'] or 'nothing'}", f"promotion {d['promotion']}"]
    if d["promotion"] == "Manual":
        facts.append(f"promoted {d['promote'] or 'nothing'}")
    if d["paused"]:
        facts.append("paused")
    if d["abort"]:
        facts.append("abort requested")
    lines.append("│  " + " · ".join(facts))
    if d["rolloutElapsedSeconds"] is not None:
        lines.append(f"│  rollout attempt {d['attempt']}, running for {duration(d['rolloutElapsedSeconds'])}")
    elif d["switchedAt"]:
        lines.append(f"│  serving since {d['switchedAt']} ({_ago(d['switchedAt'], now)} ago)")
    out = _Tree()
    sections: list[tuple[str, list[str], list[list[str]]]] = []

    service = d["service"]
    sections.append((f"Service {service['name']} → {service['selects'] or 'no version of this set'}", [], []))

    version_lines = []
    version_children: list[list[str]] = []
    for version in d["versions"]:
        version_lines.append(_version_line(version))
        pods = []
        for pod in version["pods"]:
            ready = "ready" if pod["ready"] else "not ready"
            pods.append(f"pod {pod['name']}  {pod['phase']}  {'terminating' if pod['terminating'] else ready}")
        version_children.append(pods)
    sections.append(("Versions", version_lines or ["no Deployment yet"], version_children))

    replay = d["replay"]
    if replay:
        head = f"Replay id {replay['id'] if replay['id'] is not None else '-'} · state {replay['state'] or '-'}"
        head += f" · stage {replay['stage'] or '-'}"
        if replay["catchupRound"]:
            head += f" (catch-up round {replay['catchupRound']})"
        replay_lines = []
        if replay["lag"] is not None:
            lag = f"lag {replay['lag']:,} events (golive at ≤ {replay['maxLag']:,})"
            if replay.get("catchingUp"):
                lag = f"{bar(replay['progress'] or 0.0)}  {lag}  ETA {replay['eta']}"
            replay_lines.append(lag)
        if d["currentJob"]:
            replay_lines.append(f"current Job {d['currentJob']}")
        sections.append((head, replay_lines, []))

    if d["stages"]:
        stage_rows = []
        for stage in d["stages"]:
            name = stage["stage"] + (f" #{stage['round']}" if stage["round"] else "")
            stage_rows.append(
                [
                    f"{STATE_MARKS.get(stage['state'], '?')} {name}",
                    duration(stage["elapsedSeconds"]),
                    stage["state"],
                    stage["job"],
                ]
            )
        sections.append((f"Stages (attempt {d['attempt']})", _columns(stage_rows), []))

    if d["checks"]:
        check_rows = []
        for check in d["checks"]:
            result = check["result"]
            if result is None:
                check_rows.append(["◌ " + str(check["name"]), "not run in this attempt yet", ""])
                continue
            mark = "✔" if result.get("passed") else "✖"
            ran = f"{result.get('checkedAt')} ({result.get('version')}, attempt {result.get('attempt')})"
            check_rows.append([f"{mark} {check['name']}", str(result.get("result")), ran])
        sections.append(("Checks before golive", _columns(check_rows), []))

    projector_rows = [_projector_line(p) for p in d["projectors"]]
    sections.append(
        (
            "Projectors (plan, and versions in the database as the operator last read them)",
            _columns(projector_rows) or ["none reported yet"],
            [],
        )
    )

    event_rows = [
        [
            _ago(e["time"], now) + " ago",
            e["type"],
            e["reason"],
            e["message"] + (f" (×{e['count']})" if e["count"] > 1 else ""),
        ]
        for e in d["events"]
    ]
    sections.append((f"Events (last {len(event_rows)})", _columns(event_rows) or ["none"], []))

    for index, (head, children, grandchildren) in enumerate(sections):
        out.add(0, head, index == len(sections) - 1)
        for child_index, child in enumerate(children):
            out.add(1, child, child_index == len(children) - 1)
            below = grandchildren[child_index] if child_index < len(grandchildren) else []
            out.children(2, below)
    return "\n".join(lines + out.lines)


def history(document: dict[str, Any], now: datetime) -> str:
    rows = [["VERSION", "PROJECTORS", "REPLICAS", "SERVED", "NOW"]]
    for entry in document["releases"]:
        projectors = ", ".join(f"{name} {version}" for name, version in sorted((entry["projectors"] or {}).items()))
        served = entry["served"] or "-"
        rows.append([entry["version"], projectors or "(unknown)", str(entry["replicas"]), served, entry["now"] or ""])
    lines = _columns(rows)
    lines.append("")
    lines.append(
        f"`undo {document['name']}` goes back to {document['undoDefault'] or '(no earlier release kept)'}; "
        "`undo --to-version V` to another kept release."
    )
    return "\n".join(lines)


def plan(document: dict[str, Any]) -> str:
    d = document
    lines = [
        f"Plan for projectorset {d['namespace']}/{d['name']}: version {d['currentVersion']} -> {d['version']}",
        f"Based on: {d['basedOn']}",
        "",
    ]
    rows = [["PROJECTOR", "PLAN", "RELEASE", "ACTIVE", "WHAT HAPPENS"]]
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
    lines.extend(_columns(rows))
    lines.append("")
    lines.append(d["summary"])
    for notice in d["notices"]:
        lines.append(f"note: {notice}")
    for issue in d["issues"]:
        lines.append(f"blocked ({issue['reason']}): {issue['message']}")
    return "\n".join(lines)
