"""The adapters: the Kubernetes API (``kube``, ``kubeapi``, ``kubelogin``) and the event store's
PostgreSQL (``database``, ``pools``), each translating its errors into the domain's."""
