"""The domain: Sequent's protocol as data, what a pass sees and asks for, planning, ownership,
the manifests the operator makes, and the rollout's phase machine. Pure: no Kopf, no driver."""
