"""An in-process stand-in for the Kubernetes API, for fast controller tests.

It keeps the manifests the operator builds, makes Deployments available at once, and runs
each Job's container command as a real local process (so replay stages really run against
the test's PostgreSQL). The same flows run against a real kube-apiserver in tests/cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectorset import api
from projectorset.api.conditions import Reason
from projectorset.domain.cluster import ClusterError, Owner
from projectorset.domain.observation import (
    ClusterAction,
    ClusterView,
    DeleteDeployment,
    DeleteJob,
    DeploymentView,
    EnsureDeployment,
    Event,
    JobState,
    JobView,
    RunStageJob,
    ScaleDeployment,
    SwitchService,
)
from projectorset.domain.resources import (
    ATTEMPT_LABEL,
    ROUND_LABEL,
    build_deployment,
    build_stage_job,
    deployment_name,
    deployment_view,
)

TESTS = Path(__file__).resolve().parent


@dataclass
class FakeJob:
    manifest: dict[str, Any]
    process: subprocess.Popen[bytes] | None
    log: Path
    state: JobState = JobState.RUNNING
    message: str = ""


@dataclass
class FakeCluster:
    workdir: Path
    services: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    api_down: bool = False
    created_jobs: list[str] = field(default_factory=list)
    uris_forgotten: int = 0

    # -- the Cluster protocol --

    def forget_database_uri(self, owner: Owner, spec: api.ProjectorSetSpec) -> None:
        # observe() reads the Secret every time; counted to show the reconciler asks for it.
        self.uris_forgotten += 1

    def observe(self, owner: Owner, spec: api.ProjectorSetSpec) -> tuple[ClusterView, str | None]:
        if self.api_down:
            raise ClusterError("listing Deployments and Jobs: 503 unavailable", Reason.KUBERNETES_API_ERROR)
        for job in self.jobs.values():
            self._poll(job)
        selector = self.services.get(spec.service.name)
        ref = spec.database.secret_ref
        secret = self.secrets.get(ref.name)
        uri = secret.get(ref.key) if secret else None
        problem = (
            None
            if uri
            else (f"Secret {ref.name} not found" if secret is None else f"Secret {ref.name} has no key {ref.key}")
        )
        deployments = {}
        for manifest in self.deployments.values():
            version = manifest["metadata"]["labels"][api.VERSION_LABEL]
            replicas = manifest["spec"]["replicas"]
            # The release annotation too: what the set owns (rollout.owned_projectors).
            projectors = deployment_view(manifest).projectors
            deployments[version] = DeploymentView(
                version, replicas, replicas, replicas > 0, projectors=projectors, current_replicas=replicas
            )
        jobs = tuple(
            JobView(
                name=name,
                version=job.manifest["metadata"]["labels"][api.VERSION_LABEL],
                attempt=int(job.manifest["metadata"]["labels"][ATTEMPT_LABEL]),
                stage=job.manifest["metadata"]["labels"][api.STAGE_LABEL],
                round=int(job.manifest["metadata"]["labels"][ROUND_LABEL]),
                state=job.state,
                message=job.message,
            )
            for name, job in self.jobs.items()
        )
        service_version = None
        if selector is not None and selector.get(api.NAME_LABEL) == owner.name:
            service_version = selector.get(api.VERSION_LABEL)
        return (
            ClusterView(
                service_found=selector is not None,
                service_version=service_version,
                secret_problem=problem,
                deployments=deployments,
                jobs=jobs,
            ),
            uri,
        )

    def apply(self, owner: Owner, spec: api.ProjectorSetSpec, action: ClusterAction) -> None:
        if self.api_down:
            raise ClusterError(f"{type(action).__name__}: 503 unavailable", Reason.KUBERNETES_API_ERROR)
        match action:
            case EnsureDeployment(version=version, replicas=replicas):
                name = deployment_name(owner, version)
                if name not in self.deployments:
                    self.deployments[name] = build_deployment(owner, spec, version)
                self.deployments[name]["spec"]["replicas"] = replicas
            case ScaleDeployment(version=version, replicas=replicas):
                self.deployments[deployment_name(owner, version)]["spec"]["replicas"] = replicas
            case DeleteDeployment(version=version):
                self.deployments.pop(deployment_name(owner, version), None)
            case RunStageJob(version=version, attempt=attempt, stage=stage, round=round_, projectors=projectors):
                manifest = build_stage_job(owner, spec, version, attempt, stage, round_, list(projectors))
                name = manifest["metadata"]["name"]
                if name not in self.jobs:
                    self.created_jobs.append(name)
                    self.jobs[name] = self._start(manifest)
            case DeleteJob(name=name):
                job = self.jobs.pop(name, None)
                if job is not None and job.process is not None and job.process.poll() is None:
                    job.process.kill()
                    job.process.wait()
            case SwitchService(version=version):
                self.services[spec.service.name] = {api.NAME_LABEL: owner.name, api.VERSION_LABEL: version}
            case _:
                raise AssertionError(f"unexpected action {action!r}")

    def patch_status(self, owner: Owner, status: dict[str, Any]) -> None:
        self.status = status

    def emit(self, owner: Owner, event: Event) -> None:
        self.events.append(event)

    # -- running Jobs as processes --

    def _start(self, manifest: dict[str, Any]) -> FakeJob:
        pod_spec = manifest["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent / "operator")]),
        }
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            elif "secretKeyRef" in (variable.get("valueFrom") or {}):
                ref = variable["valueFrom"]["secretKeyRef"]
                env[variable["name"]] = self.secrets[ref["name"]][ref["key"]]
            else:
                env[variable["name"]] = "127.0.0.1"
        log = self.workdir / f"{manifest['metadata']['name']}.log"
        with log.open("wb") as output:
            # As a kubelet does: the pod's init containers (the sample app's db:migrate) run first.
            for init in pod_spec.get("initContainers") or []:
                if subprocess.run(init["command"], env=env, stdout=output, stderr=subprocess.STDOUT).returncode:
                    return FakeJob(manifest, subprocess.Popen(["false"]), log)
            process = subprocess.Popen(container["command"], env=env, stdout=output, stderr=subprocess.STDOUT)
        return FakeJob(manifest, process, log)

    def _poll(self, job: FakeJob) -> None:
        if job.state is not JobState.RUNNING or job.process is None:
            return
        code = job.process.poll()
        if code is None:
            return
        if code == 0:
            job.state = JobState.SUCCEEDED
        else:
            job.state = JobState.FAILED
            job.message = f"BackoffLimitExceeded: exit code {code}: {job.log.read_text()[-300:]}"

    def wait_for_jobs(self, timeout: float = 120) -> None:
        for job in self.jobs.values():
            if job.process is not None and job.process.poll() is None:
                job.process.wait(timeout)

    def stop(self) -> None:
        for job in self.jobs.values():
            if job.process is not None and job.process.poll() is None:
                job.process.kill()
                job.process.wait()


PYTHON = sys.executable
