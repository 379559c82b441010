"""A failed stage's condition quotes the error, not the end of rake's backtrace (issue 20, item 5)."""

from __future__ import annotations

from projectorset.domain.stage_output import MAX_CHARS, cause

BACKTRACE = "\n".join(
    f"/app/vendor/bundle/ruby/3.3.0/gems/sequent-9.0.0/lib/sequent/core/projector.rb:{n}:in 'block in replay'"
    for n in range(70)
)
TRAILER = "Tasks: TOP => sequent:projectors:replay:replay\n(See full trace by running task with --trace)"


def test_the_exception_after_rake_aborted_not_the_backtrace_after_it() -> None:
    output = (
        "I, [2026-12-01T10:00:00.000000 #1]  INFO -- : Replaying AccountProjector v2\n"
        "rake aborted!\n"
        "RuntimeError: AccountProjector v2: undefined column accounts.iban\n"
        f"{BACKTRACE}\n{TRAILER}\n"
    )
    assert cause(output) == "RuntimeError: AccountProjector v2: undefined column accounts.iban"


def test_an_empty_rake_aborted_quotes_the_error_lines_logged_before_it() -> None:
    output = (
        "I, [2026-12-01T10:00:00.000000 #1]  INFO -- : Replaying AccountProjector v2\n"
        "E, [2026-12-01T10:00:01.000000 #1] ERROR -- : Replaying failed for ids: ^00 - ^0f\n"
        "E, [2026-12-01T10:00:01.000000 #1] ERROR -- : +++++++++++++++ ERROR +++++++++++++++\n"
        "E, [2026-12-01T10:00:01.000000 #1] ERROR -- : PG::UndefinedColumn: column iban does not exist\n"
        "rake aborted!\n"
        f"{BACKTRACE}\n{TRAILER}\n"
    )
    assert cause(output) == (
        "E, [2026-12-01T10:00:01.000000 #1] ERROR -- : Replaying failed for ids: ^00 - ^0f | "
        "E, [2026-12-01T10:00:01.000000 #1] ERROR -- : +++++++++++++++ ERROR +++++++++++++++ | "
        "E, [2026-12-01T10:00:01.000000 #1] ERROR -- : PG::UndefinedColumn: column iban does not exist"
    )


def test_an_uncaught_ruby_exception_gives_its_class_and_message() -> None:
    output = (
        "/app/lib/migrations.rb:12:in 'versions': ACCOUNT_API_KEY is not set (KeyError)\n"
        "\tfrom /app/Rakefile:3:in '<main>'\n"
    )
    assert cause(output) == "KeyError: ACCOUNT_API_KEY is not set"


def test_the_sample_applications_own_failure_line() -> None:
    output = "rake aborted!\nsequent:projectors:replay:prepare failed: SEQUENT_ENV not set\n"
    assert cause(output) == "sequent:projectors:replay:prepare failed: SEQUENT_ENV not set"


def test_output_without_any_marker_gives_its_last_lines_without_the_trailer() -> None:
    output = "connecting\nFATAL:  password authentication failed for user app\n" + TRAILER
    assert cause(output) == "FATAL:  password authentication failed for user app"
    assert cause("starting\nstill starting\nkilled\n") == "starting | still starting | killed"


def test_nothing_said_is_nothing_quoted_and_a_long_cause_is_cut() -> None:
    assert cause("") == ""
    assert cause(f"{BACKTRACE}\n{TRAILER}") == ""
    long = cause("rake aborted!\nRuntimeError: " + "x" * 1000)
    assert len(long) == MAX_CHARS and long.startswith("RuntimeError: xxx") and long.endswith("...")
