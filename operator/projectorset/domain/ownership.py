"""Which ProjectorSet may act on what other sets may also name: pure decisions, no I/O.

A Service: the first ProjectorSet to switch it claims it with the ``OWNER_ANNOTATION``
(``namespace/name``); no other set ever patches it while that set exists.

A projector on an event store: the set created first that lists it owns it; a later set listing
it too waits (``ProjectorIndex.earlier_overlap``) instead of acting. A set that only requires it
(``requiredProjectors``: its code registers it, another set owns it) waits for its owner's golive;
the index says who that owner is and whom to wake when it lands.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from projectorset import api

OWNER_ANNOTATION = f"{api.GROUP}/owner"


def owner_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class ServiceRefusal:
    """Why a set may not switch a Service; ``other`` names the set that owns it, if one does."""

    message: str
    other: str | None = None


def service_claim(
    namespace: str,
    name: str,
    service: str,
    annotations: Mapping[str, str],
    selector: Mapping[str, str],
    *,
    first_install: bool,
) -> ServiceRefusal | None:
    """None when set ``namespace/name`` may switch (and so claim) the Service, else why not.

    - claimed by this set: yes; claimed by another: no.
    - unclaimed, selecting this set's pods (a Service switched before claims existed): yes.
    - unclaimed, selecting another set's pods: no, that set owns it.
    - unclaimed, selecting pods the operator did not create: only on this set's first install,
      the documented way to put an existing application under the operator; never later.
    """
    me = owner_key(namespace, name)
    claimed_by = annotations.get(OWNER_ANNOTATION)
    if claimed_by:
        if claimed_by == me:
            return None
        return ServiceRefusal(
            f"Service {service} belongs to ProjectorSet {claimed_by} (annotation {OWNER_ANNOTATION}); "
            f"this set never switches it: name another Service in spec.service.name",
            other=claimed_by,
        )
    selected_set = selector.get(api.NAME_LABEL)
    if selected_set == name:
        return None
    if selected_set:
        other = owner_key(namespace, selected_set)
        return ServiceRefusal(
            f"Service {service} selects the pods of ProjectorSet {other}; this set never switches it: "
            f"name another Service in spec.service.name",
            other=other,
        )
    if first_install:
        return None
    return ServiceRefusal(
        f"Service {service} is not claimed by this set and selects pods the operator did not create; "
        f"it is taken over only on a set's first install: to hand it over, annotate it "
        f"{OWNER_ANNOTATION}={me}"
    )


# ---- projectors on a shared event store -------------------------------------------------------------


@dataclass(frozen=True)
class SetClaim:
    """What one ProjectorSet lists on one event store, as the index knows it.

    ``store`` fingerprints the database target and schema (never the URI, which holds a password);
    ``source`` names the Secret key and schema, which is all the index knows of a set whose pass
    has not run yet: two sets with the same ``source`` share an event store for sure.
    """

    owner: str  # namespace/name
    created: str  # metadata.creationTimestamp (RFC 3339 in UTC: sorts as time)
    source: str
    projectors: frozenset[str]
    store: str | None = None
    required: frozenset[str] = field(default_factory=frozenset)  # requiredProjectors: other sets' own

    def earlier_than(self, other: SetClaim) -> bool:
        return (self.created, self.owner) < (other.created, other.owner)

    def shares_store_with(self, other: SetClaim) -> bool:
        if self.store is not None and other.store is not None:
            return self.store == other.store
        return self.source == other.source


def claim_of(body: Mapping[str, object], store: str | None = None) -> SetClaim | None:
    """A ProjectorSet's claim from its manifest; None when the manifest lacks what one needs."""
    metadata = body.get("metadata")
    spec = body.get("spec")
    if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
        return None
    database = spec.get("database")
    projectors = spec.get("projectors")
    if not isinstance(database, Mapping) or not isinstance(projectors, list):
        return None
    secret = database.get("secretRef")
    secret_ref = secret if isinstance(secret, Mapping) else {}
    namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
    source = "/".join(
        [
            namespace,
            str(secret_ref.get("name", "")),
            str(secret_ref.get("key", "uri")),
            str(database.get("eventStoreSchema", "sequent_schema")),
        ]
    )
    required = spec.get("requiredProjectors")
    return SetClaim(
        owner_key(namespace, name),
        str(metadata.get("creationTimestamp", "")),
        source,
        _names(projectors),
        store,
        _names(required if isinstance(required, list) else []),
    )


def _names(projectors: list[object]) -> frozenset[str]:
    return frozenset(str(p["name"]) for p in projectors if isinstance(p, Mapping) and "name" in p)


class ProjectorIndex:
    """Every ProjectorSet the operator watches and the projectors it lists, per event store."""

    def __init__(self) -> None:
        self._claims: dict[str, SetClaim] = {}
        self._lock = threading.Lock()

    def record(self, claim: SetClaim) -> None:
        with self._lock:
            known = self._claims.get(claim.owner)
            # The watch does not know the store; keep what a pass learnt while the source is the same.
            if claim.store is None and known is not None and known.source == claim.source:
                claim = replace(claim, store=known.store)
            self._claims[claim.owner] = claim

    def forget(self, owner: str) -> None:
        with self._lock:
            self._claims.pop(owner, None)

    def _others_on_store(self, claim: SetClaim) -> list[SetClaim]:
        """The other sets on ``claim``'s event store, the earliest created first."""
        with self._lock:
            others = [c for c in self._claims.values() if c.owner != claim.owner and c.shares_store_with(claim)]
        return sorted(others, key=lambda c: (c.created, c.owner))

    def earlier_overlap(self, claim: SetClaim) -> tuple[SetClaim, frozenset[str]] | None:
        """The earliest set created before ``claim`` on the same store listing one of its projectors."""
        return next(
            (
                (other, other.projectors & claim.projectors)
                for other in self._others_on_store(claim)
                if other.earlier_than(claim) and other.projectors & claim.projectors
            ),
            None,
        )

    def listing(self, claim: SetClaim, projectors: Iterable[str]) -> list[str]:
        """The other sets on ``claim``'s store that list one of ``projectors``."""
        wanted = set(projectors)
        return sorted(other.owner for other in self._others_on_store(claim) if other.projectors & wanted)

    def owners(self, claim: SetClaim, projectors: Iterable[str]) -> dict[str, str]:
        """For each of ``projectors``, the set on ``claim``'s store that owns it (the earliest other
        set listing it in ``projectors``); a projector no other set lists is left out."""
        others = self._others_on_store(claim)
        found: dict[str, str] = {}
        for name in projectors:
            owner = next((other.owner for other in others if name in other.projectors), None)
            if owner is not None:
                found[name] = owner
        return found

    def requiring(self, claim: SetClaim) -> list[str]:
        """The other sets on ``claim``'s store whose ``requiredProjectors`` name one of its projectors:
        the sets that may be waiting for this one's golive."""
        return sorted(other.owner for other in self._others_on_store(claim) if other.required & claim.projectors)
