"""Log records that name their ProjectorSet as fields, not only in the message text.

Kopf's per-object loggers put a reference to the object on each record (the ``k8s_ref``
attribute); its JSON formatter prints it as the ``object`` field, ``{"apiVersion", "kind",
"name", "uid", "namespace"}``. The operator's own lines about a set come from its loop and
from the pass in a worker thread, deep in code that knows no Kopf (the controller, the
adapters): ``about_set`` marks that loop's context, ``PassRunner`` carries the context into the
pass's thread, and ``SetFields``, a filter on the log handlers, gives every record logged there
the same reference. One field for Kopf's lines and the operator's: a log query on
``object.namespace`` and ``object.name`` finds every line about a set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from projectorset import api

# The set whose loop (or pass) is running in this context; None outside any set's work.
_current_set: ContextVar[dict[str, Any] | None] = ContextVar("projectorset_current_set", default=None)
# The attribute Kopf's loggers and formatters read (kopf/_core/actions/loggers.py).
REFERENCE_ATTRIBUTE = "k8s_ref"


@contextlib.contextmanager
def about_set(namespace: str, name: str, uid: str | None = None) -> Iterator[None]:
    """Within this block (and the passes it runs), log records are about this ProjectorSet."""
    reference = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "name": name,
        "uid": uid,
        "namespace": namespace,
    }
    token = _current_set.set(reference)
    try:
        yield
    finally:
        _current_set.reset(token)


class SetFields(logging.Filter):
    """Adds the current set's reference to records that carry none (Kopf's own already do)."""

    def filter(self, record: logging.LogRecord) -> bool:
        reference = _current_set.get()
        if reference is not None and not hasattr(record, REFERENCE_ATTRIBUTE):
            setattr(record, REFERENCE_ATTRIBUTE, reference)
        return True


def add_set_fields(logger: logging.Logger | None = None) -> None:
    """Put ``SetFields`` on every handler of ``logger`` (the root logger, where ``kopf.configure``
    puts its own): a filter on a handler sees records from every logger, a logger's only its own."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(existing, SetFields) for existing in handler.filters):
            handler.addFilter(SetFields())
