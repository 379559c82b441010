"""``kubectl projectorset`` (and ``kubectl pjs``): operate ProjectorSets like Argo Rollouts.

``cli`` parses the command line and runs a command; ``cluster`` reads and patches the cluster
with the official client and the user's kubeconfig; ``view`` turns what it read into one
document (the tree and ``-o json|yaml`` show the same data); ``actions`` computes the spec
patches and refuses the ones that make no sense; ``render`` draws text.
"""
