"""The pods' network for the harness kubelet (tests/kube/kubelet.py): a network namespace per pod when the
harness may make them, else an address per pod on the host's loopback.

``netns`` (root, or CAP_NET_ADMIN, and ``ip`` installed): the harness makes a bridge ``bbrTAG`` with
``10.244.X.1/24`` (``X`` picked so the /24 overlaps no address or route of the host), and per pod a network
namespace ``berth-POD-N-TAG`` holding ``lo`` (up: the pod's containers share its own ``127.0.0.1``) and
``eth0``, one end of a veth pair whose other end (``bvTAG-N``) is a port of the bridge, with the pod's IP
``10.244.X.N/24``. The pod has no route but that /24: it reaches the other pods and the bridge's address
(where the test's control plane and API server listen), nothing else. Its containers start through
``ip netns exec``; readiness is probed from the host, as a kubelet probes. MLServer bound to the pod's
loopback is then unreachable from the host and from every other pod, as in a cluster.

``loopback`` (the fallback): each pod gets ``127.0.0.N`` (Linux answers all of 127/8 on ``lo``), and since a
pod's ``127.0.0.1`` is then the host's, shared, the kubelet maps every port of a pod to a free one of its own.

Teardown (:meth:`NetnsNetwork.close`) deletes every namespace (its veth pair goes with it), any veth left and
the bridge. A run killed before that leaves them behind: each harness holds an ``flock`` on
``/run/berth-kubelet/TAG.lock`` while it lives, and the next harness to start deletes the namespaces
(``berth-`` prefix) and links (``bbr``/``bv`` prefix) whose TAG no living harness holds, so harnesses running
side by side (several pytest processes) leave each other's alone.

``BERTH_TEST_POD_NETWORK=loopback`` (or ``netns``) forces a mode; the default takes ``netns`` when allowed.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import IO

MODE_ENV = "BERTH_TEST_POD_NETWORK"
LOCKS = Path("/run/berth-kubelet")
NETNS_PREFIX = "berth-"
_TAG = re.compile(r"[0-9a-f]{6}")
_LINK = re.compile(r"(?:bbr|bv)([0-9a-f]{6})(?:-\d+)?")
CAP_NET_ADMIN = 12


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if not os.path.exists("/proc/self/ns/net"):
        return "no network namespaces in this kernel"
    caps = next((line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("CapEff:")), "0")
    if not int(caps, 16) >> CAP_NET_ADMIN & 1:
        return "not root (no CAP_NET_ADMIN)"
    return None


def chosen_mode() -> tuple[str, str]:
    """(``netns`` or ``loopback``, why) as the environment allows and ``BERTH_TEST_POD_NETWORK`` asks."""
    asked = os.environ.get(MODE_ENV, "").strip().lower()
    if asked not in ("", "netns", "loopback"):
        raise ValueError(f"{MODE_ENV}={asked!r}: use netns or loopback (or leave it unset)")
    missing = netns_unavailable()
    if asked == "loopback":
        return "loopback", f"{MODE_ENV}=loopback"
    if asked == "netns" and missing:
        raise RuntimeError(f"{MODE_ENV}=netns but {missing}: run as root with iproute2, or unset it")
    if missing:
        return "loopback", f"fallback: {missing}"
    return "netns", "root with `ip netns`"


class LoopbackNetwork:
    """Each pod an address ``127.0.0.N`` of the host's loopback; ports are the kubelet's to keep distinct."""

    mode = "loopback"
    shared_loopback = True  # a pod's 127.0.0.1 is the host's: ports must be remapped per pod
    host = "127.0.0.1"  # where the test's services listen for the pods

    def __init__(self) -> None:
        self._last = 1

    def attach(self, namespace: str, pod: str) -> str:
        self._last += 1
        assert self._last < 255, "the harness hands out 253 pod IPs"
        return f"127.0.0.{self._last}"

    def launcher(self, ip: str) -> list[str]:
        return []

    def detach(self, ip: str) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "loopback (127.0.0.N per pod, distinct ports; no network namespaces)"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _held(tag: str) -> bool:
    """Whether a living harness holds TAG's lock."""
    try:
        fd = os.open(LOCKS / f"{tag}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep() -> list[str]:
    """Delete namespaces and links left by harnesses that are no longer running; what was deleted."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    gone: list[str] = []
    dead: dict[str, bool] = {}

    def stale(tag: str) -> bool:
        if tag not in dead:
            dead[tag] = not _held(tag)
        return dead[tag]

    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split(" ")[0]
        tag = name.rsplit("-", 1)[-1]
        if name.startswith(NETNS_PREFIX) and _TAG.fullmatch(tag) and stale(tag):
            _ip("netns", "delete", name, check=False)
            gone.append(name)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        match = _LINK.fullmatch(name)
        if match and stale(match[1]):
            _ip("link", "delete", name, check=False)
            gone.append(name)
    for lock in LOCKS.glob("*.lock"):  # a harness killed before it made anything
        if _TAG.fullmatch(lock.stem):
            stale(lock.stem)
    for tag, is_dead in dead.items():
        if is_dead:
            (LOCKS / f"{tag}.lock").unlink(missing_ok=True)
    return gone


def _taken() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every IPv4 network the host has an address in or a route to (but the default route)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        found = re.search(r"inet (\S+)", line)
        if found:
            nets.append(ipaddress.ip_interface(found[1]).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        first = line.split()[0] if line.split() else "default"
        if first in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "throw"):
            first = line.split()[1]
        if first != "default":
            try:
                nets.append(ipaddress.ip_network(first, strict=False))
            except ValueError:
                continue
    return nets


class NetnsNetwork:
    """A bridge with a private /24, and a network namespace joined to it per pod (module docstring)."""

    mode = "netns"
    shared_loopback = False

    def __init__(self) -> None:
        self.swept = sweep()
        self.tag, self._lock = self._claim()
        self.bridge = f"bbr{self.tag}"
        self.namespaces: dict[str, tuple[str, str]] = {}  # pod IP -> (namespace name, host veth)
        self._last = 1
        try:
            self.subnet = self._make_bridge()
        except BaseException:
            self.close()
            raise
        self.host = str(self.subnet.network_address + 1)

    @staticmethod
    def _claim() -> tuple[str, IO[str]]:
        while True:
            tag = secrets.token_hex(3)
            path = LOCKS / f"{tag}.lock"
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                continue
            lock = os.fdopen(fd, "w")
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists() and os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                lock.write(f"{os.getpid()}\n")
                lock.flush()
                return tag, lock
            lock.close()  # a sweeper took it for a dead one between creation and lock: another tag

    def _make_bridge(self) -> ipaddress.IPv4Network:
        with open(LOCKS / "subnets.lock", "a") as guard:  # two harnesses starting together pick different /24s
            fcntl.flock(guard, fcntl.LOCK_EX)
            taken = _taken()
            subnet = next((net for x in range(256)
                           if not any((net := ipaddress.IPv4Network(f"10.244.{x}.0/24")).overlaps(t) for t in taken)),
                          None)
            if subnet is None:
                raise RuntimeError("no free 10.244.X.0/24 for the pods: delete stale bridges (ip -br link)")
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{subnet.network_address + 1}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        return subnet

    def attach(self, namespace: str, pod: str) -> str:
        """Make the pod's namespace, joined to the bridge; its IP."""
        self._last += 1
        assert self._last < 255, "the harness hands out 253 pod IPs"
        n = self._last
        ip = str(self.subnet.network_address + n)
        name, veth = f"{NETNS_PREFIX}{pod}-{n}-{self.tag}", f"bv{self.tag}-{n}"
        self.namespaces[ip] = (name, veth)
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        return ip

    def launcher(self, ip: str) -> list[str]:
        """The prefix that starts a command inside the pod's namespace."""
        return [shutil.which("ip") or "ip", "netns", "exec", self.namespaces[ip][0]]

    def detach(self, ip: str) -> None:
        name, veth = self.namespaces.pop(ip)
        _ip("netns", "delete", name, check=False)  # its eth0 goes with it, and so the veth pair
        _ip("link", "delete", veth, check=False)

    def close(self) -> None:
        """Delete every namespace, veth and the bridge; then let go of the tag."""
        try:
            for ip in list(self.namespaces):
                self.detach(ip)
            _ip("link", "delete", self.bridge, check=False)
        finally:
            (LOCKS / f"{self.tag}.lock").unlink(missing_ok=True)
            self._lock.close()

    def leftovers(self) -> list[str]:
        """This harness's namespaces and links the host still has (none after :meth:`close`)."""
        names = [line.split(" ")[0] for line in _ip("netns", "list").stdout.splitlines()]
        links = [line.split(":")[1].strip().split("@")[0] for line in _ip("-o", "link", "show").stdout.splitlines()]
        return [n for n in names + links if self.tag in n and (n.startswith(NETNS_PREFIX) or _LINK.fullmatch(n))]

    def describe(self) -> str:
        return f"netns (a network namespace per pod on bridge {self.bridge}, {self.subnet}, host side {self.host})"


PodNetwork = LoopbackNetwork | NetnsNetwork


def pod_network() -> PodNetwork:
    """The network the environment allows and ``BERTH_TEST_POD_NETWORK`` asks for."""
    mode, _ = chosen_mode()
    return NetnsNetwork() if mode == "netns" else LoopbackNetwork()
