"""A small event-sourced web service that behaves like a Sequent 9 application.

It exists so the operator's end-to-end tests and ``make demo`` upgrade something real:
events in Sequent's event-store tables, projectors whose versions change between
releases, the active-projectors publisher rules on every write, and replay stage
commands mirroring Sequent's rake tasks. See ``sampleapp.web``, ``sampleapp.replay``
and ``sampleapp.migrate``.
"""
