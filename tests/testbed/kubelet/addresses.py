"""Pod IPs: the /24 routed to ``lo`` that they come from (``PodNetwork``) and who holds which (``IPAllocator``)."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from testbed.kubelet.common import log


class IPAllocator:
    """Pod IPs from one /24 (.2 to .254); the lowest free address is handed out first."""

    def __init__(self, network: str = "127.0.0.0/24", first: int = 2, last: int = 254) -> None:
        self.network = ipaddress.ip_network(network)
        self._base = int(self.network.network_address)
        self._free = list(range(first, min(last, self.network.num_addresses - 2) + 1))
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()

    def _address(self, host: int) -> str:
        return str(ipaddress.ip_address(self._base + host))

    def allocate(self, owner: str, preferred: str | None = None) -> str:
        with self._lock:
            if owner in self._owners:
                return self._address(self._owners[owner])
            wanted = None
            with contextlib.suppress(ValueError):
                if preferred and ipaddress.ip_address(preferred) in self.network:
                    wanted = int(ipaddress.ip_address(preferred)) - self._base
            if wanted is None or wanted not in self._free:
                if not self._free:
                    raise RuntimeError(f"no free pod IP left in {self.network}")
                wanted = min(self._free)
            self._free.remove(wanted)
            self._owners[owner] = wanted
            return self._address(wanted)

    def release(self, owner: str) -> None:
        with self._lock:
            number = self._owners.pop(owner, None)
            if number is not None:
                self._free.append(number)

    def in_use(self) -> dict[str, str]:
        with self._lock:
            return {owner: self._address(n) for owner, n in self._owners.items()}


class PodNetwork:
    """Where pod IPs come from: a /24 routed to ``lo``, or loopback addresses as a fallback.

    Linux delivers all of 127/8 locally, but the API rejects loopback addresses in EndpointSlices,
    so Services would have no endpoints. A ``local`` route (``ip route add local NET dev lo``)
    makes a whole non-loopback range local the same way, without any interface or namespace.
    The default range is a free /24 of 198.18.0.0/15 (RFC 2544, reserved for tests and never on a
    real network); the route is removed on exit. Without CAP_NET_ADMIN the kubelet falls back to
    127.0.0.N: pods still run and are reachable, but their Services get no endpoints.

    Several clusters may run at once (a test run and the demo): each kubelet holds an flock on
    its range's lock file for as long as it lives, so ranges are never shared, and the range of a
    kubelet that was killed (its route left behind) is taken over by the next one.
    """

    AUTO_RANGE = ipaddress.ip_network("198.18.0.0/15")

    def __init__(
        self,
        cidr: str | None = None,
        run: Callable[[list[str]], tuple[int, str]] | None = None,
        lock_dir: Path | None = None,
    ) -> None:
        self.cidr = cidr
        self.run = run or self._ip
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / "testbed-pod-networks"
        self.added: str | None = None
        self._lock_file: IO[str] | None = None

    @staticmethod
    def _ip(argv: list[str]) -> tuple[int, str]:
        try:
            result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return 127, "the ip command (iproute2) is not installed"
        return result.returncode, result.stderr.strip()

    def _claim(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """Lock the range for this process's lifetime; the kernel drops the lock when it dies."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.lock_dir / f"{network.network_address}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            return False
        self._lock_file = lock_file
        return True

    def _unclaim(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def setup(self) -> IPAllocator:
        if self.cidr == "loopback":
            return IPAllocator("127.0.0.0/24")
        if self.cidr:
            code, error = self.run(["route", "add", "local", self.cidr, "dev", "lo"])
            if code == 0:
                self.added = self.cidr
            elif "File exists" not in error:  # an existing route is someone's deliberate setup
                raise RuntimeError(f"cannot route pod network {self.cidr} to lo: {error}")
            return IPAllocator(self.cidr)
        for candidate in self.AUTO_RANGE.subnets(new_prefix=24):
            if not self._claim(candidate):
                continue  # a live kubelet uses it
            code, error = self.run(["route", "add", "local", str(candidate), "dev", "lo"])
            if code == 0 or "File exists" in error:  # "exists": left by a kubelet that was killed
                self.added = str(candidate)
                return IPAllocator(self.added)
            self._unclaim()
            log.warning(
                "cannot route a pod network to lo (%s): pods get 127.0.0.N addresses, which "
                "EndpointSlices reject, so Services will have no endpoints",
                error,
            )
            break
        return IPAllocator("127.0.0.0/24")

    def teardown(self) -> None:
        if self.added:
            self.run(["route", "del", "local", self.added, "dev", "lo"])
            self.added = None
        self._unclaim()
