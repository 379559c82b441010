"""A process kubelet: runs the containers of pods bound to one Node as local processes.

Run as ``python -m testbed.kubelet --kubeconfig PATH --node-name local-node --state-dir DIR``.

There is no container runtime on the test machines, so a container is a process group started from
the container's ``command``/``args`` (the image is ignored), with the environment the pod spec
describes. Each pod gets its own IP on this machine, so two replicas can listen on the same port:
an address of a /24 that the kubelet routes to ``lo`` (see ``PodNetwork``: loopback addresses
would do for the processes, but the API rejects them in EndpointSlices). Apps bind to the pod IP,
which they get from a ``status.podIP`` fieldRef as in any cluster. A container's output goes to
``<state-dir>/pods/<namespace>_<pod>_<uid>/<container>.log``. Everything else follows the real
kubelet closely enough for the Deployment, ReplicaSet, Job and EndpointSlice controllers to work:
Node registration and heartbeats (Lease and status), probes, restarts with back-off, pod phase,
conditions and container statuses, graceful deletion.

Which file holds what:

- ``__main__.py``: the command line; wires the parts below together and stops them on SIGTERM.
- ``node.py``: ``NodeAgent`` registers the Node and keeps it Ready (Lease renewal and status
  heartbeats); ``parse_taints`` reads ``--register-with-taints``.
- ``pods.py``: ``PodManager`` lists and watches the pods bound to the node and owns one
  ``PodWorker`` each.
- ``pod_worker.py``: ``PodWorker`` (a thread per pod) starts, probes, restarts and stops the pod's
  containers and reports the pod status (``pod_phase``, ``delete_pod``, ``KubeletConfig``).
- ``containers.py``: ``Container`` is one container's process and its observed state;
  ``should_restart`` and ``restart_delay`` are the restart policy and its back-off.
- ``probes.py``: ``Prober`` runs a single httpGet/tcpSocket/exec probe; ``ProbeTracker`` applies
  the thresholds.
- ``environment.py``: ``EnvResolver`` builds a container's variables from env/envFrom (Secrets,
  ConfigMaps, fieldRefs); ``expand`` is the ``$(VAR)`` expansion.
- ``addresses.py``: ``PodNetwork`` picks and routes the pod IP range; ``IPAllocator`` hands out
  its addresses.
- ``events.py``: ``EventRecorder`` posts the pod Events ``kubectl describe pod`` shows.
- ``log_server.py``: ``LogServer`` serves ``/containerLogs`` for ``kubectl logs``.
- ``common.py``: the logger, the node's address (``HOST_IP``) and timestamps every part uses.
"""

from testbed.kubelet.addresses import IPAllocator, PodNetwork
from testbed.kubelet.containers import Container, restart_delay, should_restart
from testbed.kubelet.environment import ConfigError, EnvResolver, expand, process_environment
from testbed.kubelet.events import EventRecorder
from testbed.kubelet.log_server import LogServer
from testbed.kubelet.node import NodeAgent, parse_taints
from testbed.kubelet.pod_worker import KubeletConfig, PodWorker, delete_pod, pod_phase
from testbed.kubelet.pods import PodManager
from testbed.kubelet.probes import Prober, ProbeTracker, resolve_port

__all__ = [
    "ConfigError",
    "Container",
    "EnvResolver",
    "EventRecorder",
    "IPAllocator",
    "KubeletConfig",
    "LogServer",
    "NodeAgent",
    "PodManager",
    "PodNetwork",
    "PodWorker",
    "ProbeTracker",
    "Prober",
    "delete_pod",
    "expand",
    "parse_taints",
    "pod_phase",
    "process_environment",
    "resolve_port",
    "restart_delay",
    "should_restart",
]
