"""One reconcile pass: observe through the adapters, decide with the domain, act, report."""
