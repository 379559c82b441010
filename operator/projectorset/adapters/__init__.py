"""The adapters: the Kubernetes API (``kube``, over ``kubejson`` and ``events``) and the event store's
PostgreSQL (``database``, ``pools``), each translating its errors into the domain's."""
