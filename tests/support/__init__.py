"""Helpers and fixtures shared by the suite's test modules, so that no test module imports another.

``harness``: the controller over the in-process fake cluster with a real PostgreSQL, and its
fixtures (registered for the whole suite by ``tests/conftest.py``); ``conditions``: reading the
conditions of a ProjectorSet's status; ``traffic``: v1 installed on the local cluster with writes
going through its Service.
"""
