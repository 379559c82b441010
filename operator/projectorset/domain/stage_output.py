"""The cause of a failed stage, found in its output.

A stage Job runs one of Sequent's rake tasks. When it fails, the end of its output is mostly
backtrace: rake prints ``rake aborted!``, the exception as ``Class: message``, dozens of
``/app/...:12:in 'method'`` lines, then ``Tasks: TOP => ...`` and ``(See full trace ...)``. Often
``rake aborted!`` is followed by no message at all, and the cause is in the ``ERROR`` lines the
application's logger wrote before it. The last lines of the output are therefore the wrong lines
to quote; :func:`cause` picks the right ones.
"""

from __future__ import annotations

import re

# What is never the cause: backtrace frames, rake's own trailer, blank lines.
_NOISE = re.compile(
    r"""^\s*(
        $                                  # blank
      | (from\s+)?\S+:\d+:in\s             # a Ruby backtrace frame: /app/x.rb:12:in 'm'
      | Tasks:\s+TOP\s+=>                  # rake's task chain
      | \(See\ full\ trace                 # rake's hint
      | \.\.\.\s\d+\ levels\.\.\.          # Ruby's elided frames
      | Caused\ by:\s*$
    )""",
    re.VERBOSE,
)
# A line the application's logger marked as an error: Ruby's Logger ("E, [time #pid] ERROR -- : m"),
# or the level as a word of its own.
_ERROR_LINE = re.compile(r"^(E, \[[^\]]*\]\s+)?(ERROR|FATAL)\b|\b(ERROR|FATAL)\s+--\s|\[(ERROR|FATAL)\]")
# An uncaught exception's first line, as Ruby prints it: "/app/x.rb:12:in 'm': message (Class)".
_UNCAUGHT = re.compile(r"^\S+:\d+:in\s.*?:\s(?P<message>.+)\s\((?P<cls>[A-Z]\w*(::[A-Z]\w*)*)\)\s*$")
_ABORTED = re.compile(r"^\s*rake aborted!\s*$")

MAX_LINES = 3
MAX_CHARS = 400


def cause(output: str) -> str:
    """The lines of ``output`` that say why the stage failed, joined by `` | `` (at most
    ``MAX_CHARS`` characters), or "" when the output says nothing."""
    return _shorten(" | ".join(line.strip() for line in cause_lines(output)))


def cause_lines(output: str) -> list[str]:
    """The few lines of ``output`` that :func:`cause` quotes; kept instead of a whole log, they
    give the same cause again."""
    lines = [line.rstrip() for line in output.splitlines()]
    return _after_rake_aborted(lines) or _error_lines(lines) or _uncaught(lines) or _last_words(lines)


def _after_rake_aborted(lines: list[str]) -> list[str]:
    """The exception rake printed after its last ``rake aborted!``, up to the backtrace."""
    starts = [index for index, line in enumerate(lines) if _ABORTED.match(line)]
    if not starts:
        return []
    found: list[str] = []
    for line in lines[starts[-1] + 1 :]:
        if _NOISE.match(line):
            break
        found.append(line)
    return found[:MAX_LINES]


def _error_lines(lines: list[str]) -> list[str]:
    """The last ERROR or FATAL lines the application logged (before ``rake aborted!`` if any)."""
    starts = [index for index, line in enumerate(lines) if _ABORTED.match(line)]
    before = lines[: starts[-1]] if starts else lines
    return [line for line in before if _ERROR_LINE.search(line)][-MAX_LINES:]


def _uncaught(lines: list[str]) -> list[str]:
    for line in reversed(lines):
        match = _UNCAUGHT.match(line.strip())
        if match:
            return [f"{match['cls']}: {match['message']}"]
    return []


def _last_words(lines: list[str]) -> list[str]:
    return [line for line in lines if not _NOISE.match(line) and not _ABORTED.match(line)][-MAX_LINES:]


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 3] + "..."
