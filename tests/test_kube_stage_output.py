"""A failed stage's cause is read from its pod's log, where it sits above a backtrace longer than
the termination message keeps (the kubelet keeps the last 80 lines or 2 KiB); the termination
message serves when the log cannot be read. Each failed Job's pods and log are read once."""

from __future__ import annotations

from typing import Any, cast

from projectorset.adapters.kube import KubernetesCluster
from projectorset.adapters.kubejson import ApiError, KubeJson
from projectorset.domain.cluster import Owner

OWNER = Owner("accounts", "shop", "uid-1")
BACKTRACE = "\n".join(f"/app/gems/sequent/lib/replayer.rb:{n}:in 'block in replay'" for n in range(120))
LOG = f"I, [t #1]  INFO -- : replaying\nrake aborted!\nRuntimeError: AccountProjector v2: bad iban\n{BACKTRACE}\n"
# What the kubelet keeps: the log's last 80 lines, all backtrace.
TERMINATION_MESSAGE = "\n".join(LOG.splitlines()[-80:])


def failed_job(name: str, uid: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": uid},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
    }


def failed_pod(job: str, pod: str) -> dict[str, Any]:
    terminated = {"exitCode": 1, "finishedAt": "2026-12-07T10:00:00Z", "message": TERMINATION_MESSAGE}
    return {
        "metadata": {"name": pod, "labels": {"job-name": job}},
        "status": {"containerStatuses": [{"name": "app", "state": {"terminated": terminated}}]},
    }


class StagePods:
    """Stands in for ``KubeJson``: the failed stage's pods, and its log unless refused."""

    def __init__(self, log_refused: bool = False) -> None:
        self.log_refused = log_refused
        self.lists = 0
        self.log_reads: list[tuple[str, dict[str, Any]]] = []

    def list_items(self, path: str, label_selector: str | None = None, **_: Any) -> list[dict[str, Any]]:
        assert path == "/api/v1/namespaces/shop/pods", path
        self.lists += 1
        return [failed_pod("accounts-v2-a1-replay", "accounts-v2-a1-replay-x7")]

    def text(self, path: str, **query: Any) -> str:
        self.log_reads.append((path, query))
        if self.log_refused:
            raise ApiError(403, "Forbidden", '{"reason": "Forbidden"}')
        return LOG


def test_the_cause_above_a_long_backtrace_comes_from_the_log_read_once() -> None:
    pods = StagePods()
    adapter = KubernetesCluster(cast(KubeJson, pods))
    jobs = [failed_job("accounts-v2-a1-replay", "job-uid-1")]
    for _ in range(3):
        output = adapter._failed_stage_output(OWNER, jobs)
    assert output == {"accounts-v2-a1-replay": "RuntimeError: AccountProjector v2: bad iban"}
    assert pods.lists == 1
    assert pods.log_reads == [
        ("/api/v1/namespaces/shop/pods/accounts-v2-a1-replay-x7/log", {"container": "app", "tailLines": 1000})
    ]


def test_without_the_log_the_termination_message_serves() -> None:
    pods = StagePods(log_refused=True)
    adapter = KubernetesCluster(cast(KubeJson, pods))
    output = adapter._failed_stage_output(OWNER, [failed_job("accounts-v2-a1-replay", "job-uid-1")])
    # Only backtrace frames were kept by the kubelet: no cause to quote, and nothing made up.
    assert output == {"accounts-v2-a1-replay": ""}
