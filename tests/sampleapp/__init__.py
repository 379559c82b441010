"""A small event-sourced web service that behaves like a Sequent 9 application (Sequent master).

It exists so the operator's end-to-end tests and ``make demo`` upgrade something that fails
the way Sequent fails: events in Sequent's event-store tables, projectors whose versions change
between releases, view-schema migrations per release, Sequent's publisher gate on every write,
and Sequent's replay rake tasks. See ``sampleapp.web``, ``sampleapp.rake``, ``sampleapp.replay``
and ``sampleapp.migrate``.
"""
