"""The Kubernetes control plane, etcd, kubectl and helm, built from Go modules.

Nothing can be downloaded from release sites here, but the Go module proxy is
reachable, so the binaries are built from the small modules in ``toolchain/``:

- ``toolchain/kubernetes``: kube-apiserver, kube-controller-manager, kube-scheduler
  and kubectl from k8s.io/kubernetes (with a replace line per staging module);
- ``toolchain/etcd``: etcd from go.etcd.io/etcd/server/v3;
- ``toolchain/helm``: helm from helm.sh/helm/v3;
- ``toolchain/promtool``: promtool from github.com/prometheus/prometheus (the chart's
  alert rules are checked and unit-tested with it).

They are separate modules so that each keeps exactly the dependency versions its
upstream release was tested with. The binaries go to a cache outside the work tree,
``${XDG_CACHE_HOME:-~/.cache}/projectorset-testbed/<key>/bin``, one directory per
toolset: the cluster's (etcd, the control plane, kubectl, helm) and promtool's. A
toolset's key is a hash of its own modules' files and the Go version, so a changed pin
rebuilds only its toolset (pinning promtool never rebuilds the control plane), and an
unchanged one is found at once. A file lock keeps two processes (two pytest runs, a
test run and the demo) from building the same thing twice.

``python -m testbed.toolchain`` builds the cluster's toolset if needed and prints its bin
directory; ``python -m testbed.toolchain path`` prints it without building (scripts
prepend it to PATH); a last argument ``promtool`` does the same for promtool's toolset.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed import stopping

MODULES_DIR = Path(__file__).resolve().parent / "toolchain"

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.22.0"
# github.com/prometheus/prometheus v0.316.0 is Prometheus 3.16.0 (the Go module drops the major).
PROMETHEUS_VERSION = "3.16.0"
# Reported by `kubectl version`; a fixed date keeps the builds reproducible.
BUILD_DATE = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class _Module:
    directory: str
    packages: tuple[str, ...]
    ldflags: tuple[str, ...]


def _kubernetes_ldflags() -> tuple[str, ...]:
    # The same variables the upstream release build sets, so the server reports its real version.
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    prefix = "k8s.io/component-base/version"
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": KUBERNETES_VERSION,
        "gitTreeState": "clean",
        "buildDate": BUILD_DATE,
    }
    flags = tuple(f"-X {prefix}.{name}={value}" for name, value in values.items())
    # client-go keeps its own copy for the User-Agent header.
    return flags + tuple(f"-X k8s.io/client-go/pkg/version.{n}={v}" for n, v in values.items())


CLUSTER_MODULES = (
    _Module(
        "kubernetes",
        (
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-scheduler",
            "k8s.io/kubernetes/cmd/kubectl",
        ),
        _kubernetes_ldflags(),
    ),
    # etcd's version is a constant in its api module, so it needs no flags.
    _Module("etcd", (".",), ()),
    _Module(
        "helm",
        ("helm.sh/helm/v3/cmd/helm",),
        (
            f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        ),
    ),
)


@dataclass(frozen=True)
class Toolset:
    """Modules built together into one cached bin directory, under a key of their own."""

    name: str
    key_prefix: str
    modules: tuple[_Module, ...]
    binaries: tuple[str, ...]


CLUSTER = Toolset(
    "cluster",
    f"k8s-{KUBERNETES_VERSION}",
    CLUSTER_MODULES,
    ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "helm"),
)
PROMTOOL = Toolset(
    "promtool",
    f"promtool-v{PROMETHEUS_VERSION}",
    (
        _Module(
            "promtool",
            ("github.com/prometheus/prometheus/cmd/promtool",),
            (
                f"-X github.com/prometheus/common/version.Version={PROMETHEUS_VERSION}",
                f"-X github.com/prometheus/common/version.BuildDate={BUILD_DATE}",
            ),
        ),
    ),
    ("promtool",),
)
TOOLSETS = (CLUSTER, PROMTOOL)


# Output name of each package; etcd's main is this repository's own one-line wrapper.
def _output_name(module: _Module, package: str) -> str:
    return "etcd" if module.directory == "etcd" else package.rsplit("/", 1)[-1]


def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise RuntimeError("Go is needed to build the test cluster's binaries, and `go` is not on PATH")
    return found


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Builds must use exactly the pinned go.sum and never fetch another toolchain.
    env["GOFLAGS"] = "-mod=readonly"
    env["GOTOOLCHAIN"] = "local"
    return env


def _go_version() -> str:
    out = subprocess.run([go_binary(), "env", "GOVERSION"], env=_go_env(), check=True, capture_output=True, text=True)
    return out.stdout.strip()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "projectorset-testbed"


def cache_key(toolset: Toolset = CLUSTER) -> str:
    # The cluster's key is the one it had before toolsets existed: its binaries are not rebuilt.
    digest = hashlib.sha256()
    for module in toolset.modules:
        directory = MODULES_DIR / module.directory
        for path in sorted(directory.iterdir()):
            if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
                digest.update(f"{module.directory}/{path.name}\0".encode())
                digest.update(path.read_bytes())
        digest.update("\0".join(module.ldflags).encode())
    digest.update(_go_version().encode())
    return f"{toolset.key_prefix}-{digest.hexdigest()[:16]}"


def bin_dir(toolset: Toolset = CLUSTER) -> Path:
    """Where the binaries of the toolset's current pins live (built or not)."""
    return cache_root() / cache_key(toolset) / "bin"


def _complete(toolset: Toolset, directory: Path) -> bool:
    return all((directory / name).is_file() for name in toolset.binaries)


def _build(toolset: Toolset, target: Path) -> None:
    staging = target.with_name(f"bin.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    go = go_binary()
    env = _go_env()
    total = time.monotonic()
    for module in toolset.modules:
        started = time.monotonic()
        names = ", ".join(_output_name(module, p) for p in module.packages)
        print(f"testbed.toolchain: building {names} (a cold build takes many minutes)", file=sys.stderr)
        ldflags = " ".join(("-s", "-w", *module.ldflags))
        # etcd's main is this module's own package; the others build into the directory, one per main.
        out = str(staging / "etcd") if module.directory == "etcd" else str(staging) + "/"
        cmd = [go, "build", "-trimpath", f"-ldflags={ldflags}", "-o", out, *module.packages]
        result = subprocess.run(cmd, cwd=MODULES_DIR / module.directory, env=env)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"building {names} failed (exit {result.returncode}): {' '.join(cmd)}")
        print(f"testbed.toolchain: built {names} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    missing = [name for name in toolset.binaries if not (staging / name).is_file()]
    if missing:
        raise RuntimeError(f"the build produced no {', '.join(missing)} in {staging}")
    # A rename is atomic: other processes see either no bin/ or a complete one.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"testbed.toolchain: all {toolset.name} binaries built in {time.monotonic() - total:.0f} s", file=sys.stderr)


def ensure_binaries(toolset: Toolset = CLUSTER) -> dict[str, Path]:
    """Paths of the toolset's binaries, building them first if its key has none yet."""
    target = bin_dir(toolset)
    if not _complete(toolset, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first; then we find its result
            if not _complete(toolset, target):
                _build(toolset, target)
    return {name: target / name for name in toolset.binaries}


def binary(name: str) -> Path:
    """One binary, building only the toolset that holds it."""
    for toolset in TOOLSETS:
        if name in toolset.binaries:
            return ensure_binaries(toolset)[name]
    known = ", ".join(name for toolset in TOOLSETS for name in toolset.binaries)
    raise KeyError(f"unknown binary {name!r}; known: {known}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    by_name = {toolset.name: toolset for toolset in TOOLSETS}
    toolset = CLUSTER
    if args and args[-1] in by_name:
        toolset = by_name[args[-1]]
        args = args[:-1]
    if args == ["path"]:
        print(bin_dir(toolset))
        return 0
    if args not in ([], ["build"]):
        print(f"usage: python -m testbed.toolchain [build|path] [{'|'.join(by_name)}]", file=sys.stderr)
        return 2
    ensure_binaries(toolset)
    print(bin_dir(toolset))
    return 0


if __name__ == "__main__":
    sys.exit(stopping.run(main))
