"""A multi-node testbed from network namespaces: underlay bridge, hosts, OVS workers, containers."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import subprocess
import sys
import time

from ovs_setup import bridge as ovs_bridge
from ovs_setup.container import AttachedPort, attach_container, disable_tx_checksum
from ovs_setup.netns import (
    create_named,
    in_netns,
    iproute,
    list_named,
    netns_path,
    remove_named,
    write_sysctl,
)
from ovs_setup.node import NodeOvs
from testbed import procs
from testbed.cleanup import OWNER_FILE, default_base_dir, kill
from testbed.delay import Delays
from testbed.nodes import Container, Host, TestbedError, Worker

LOG = logging.getLogger(__name__)

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
UNDERLAY_BRIDGE = "br0"
UPLINK = "ul0"  # a host's underlay interface, inside the host's namespace
UNDERLAY_MTU = 1500


class Testbed:
    """Builds hosts, workers and containers in namespaces named ``<prefix>-<name>``.

    Use it as a context manager: leaving it (also by an exception, also in the middle of a
    half-built worker) stops every process it started, every OVS, and removes every namespace
    (and with them every veth and tap) and its temporary directory.
    """

    def __init__(self, prefix: str, base_dir: str | None = None):
        if not PREFIX_RE.match(prefix):
            raise TestbedError(f"prefix: {prefix!r} must match {PREFIX_RE.pattern}")
        self.prefix = prefix
        self.base_dir = base_dir or default_base_dir(prefix)
        self.hosts: dict[str, Host] = {}
        self.containers: dict[str, Container] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._workers: list[Worker] = []
        self._ul: str | None = None
        self._delays: Delays | None = None
        self._entered = False

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Testbed:  # noqa: PYI034 - typing.Self needs Python 3.11
        leftovers = [n for n in list_named() if n.startswith(self.prefix + "-")]
        if leftovers or os.path.exists(self.base_dir):
            raise TestbedError(
                f"leftovers of an earlier run with prefix {self.prefix} "
                f"({', '.join(leftovers) or self.base_dir}); run "
                f"testbed.cleanup({self.prefix!r}) first"
            )
        os.makedirs(self.base_dir, mode=0o750)
        with open(os.path.join(self.base_dir, OWNER_FILE), "w", encoding="ascii") as handle:
            handle.write(str(os.getpid()))
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Remove everything this testbed made; safe to call twice."""
        if self._delays is not None:
            self._delays.close()
        for proc in reversed(self._procs):
            procs.stop(proc)
        self._procs.clear()
        for worker in self._workers:
            try:
                worker.ovs.stop()
            except Exception:
                LOG.exception("stopping OVS of %s failed", worker.name)
        self._workers.clear()
        for name in reversed(self._namespaces):
            # Anything still inside (a server a test started by hand) was started by us.
            for pid in procs.pids_in_netns(name):
                kill(pid)
            remove_named(name)
        self._namespaces.clear()
        if self._entered:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self._entered = False

    # -- topology ---------------------------------------------------------------------------

    def underlay(self) -> str:
        """Create (once) the underlay namespace with its Linux bridge; return its name."""
        if self._ul is None:
            name = self._new_netns("ul")
            with iproute(name) as ipr:
                ipr.link("add", ifname=UNDERLAY_BRIDGE, kind="bridge")
                idx = ipr.link_lookup(ifname=UNDERLAY_BRIDGE)[0]
                ipr.link("set", index=idx, state="up")
            self._ul = name
        return self._ul

    def add_host(
        self, name: str, ip4: str, ip6: str | None = None, mtu: int = UNDERLAY_MTU
    ) -> Host:
        """Create ``<prefix>-<name>`` joined to the underlay by a veth, with its addresses."""
        host = self._join_underlay(name, ip4, ip6, mtu)
        with iproute(host.netns) as ipr:
            idx = ipr.link_lookup(ifname=UPLINK)[0]
            for cidr in (host.ip4_cidr, host.ip6_cidr):
                if cidr:
                    net = ipaddress.ip_interface(cidr)
                    extra = {"flags": 0x02} if net.version == 6 else {}  # nodad
                    ipr.addr(
                        "add",
                        index=idx,
                        address=str(net.ip),
                        prefixlen=net.network.prefixlen,
                        **extra,
                    )
        self.hosts[name] = host
        return host

    def add_worker(
        self,
        name: str,
        ip4: str,
        ip6: str | None = None,
        controller: str | None = "tcp:127.0.0.1:6653",
        bridge_mac: str | None = None,
        mtu: int = UNDERLAY_MTU,
    ) -> Worker:
        """Create a host that runs its own OVS with ``br-phy`` (node IP) and ``br-int``."""
        host = self._join_underlay(name, ip4, ip6, mtu)
        run_dir = os.path.join(self.base_dir, name)
        worker = Worker(**vars(host), ovs=NodeOvs(run_dir, name=name, netns=host.netns))
        self._workers.append(worker)  # registered first: teardown stops a half-started OVS
        worker.ovs.start()
        ovs_bridge.ensure_underlay_bridge(
            worker.db_url,
            worker.underlay_bridge,
            UPLINK,
            [c for c in (host.ip4_cidr, host.ip6_cidr) if c],
            datapath_type=worker.ovs.datapath_type,
            node_netns=host.netns,
        )
        ovs_bridge.ensure_integration_bridge(
            worker.db_url,
            worker.bridge,
            controller=controller,
            datapath_type=worker.ovs.datapath_type,
            bridge_mac=bridge_mac,
        )
        self.hosts[name] = worker
        LOG.info("worker %s up: %s", name, ", ".join(worker.addresses))
        return worker

    def add_workers(
        self, count: int, controller: str | None = "tcp:127.0.0.1:6653", ipv6: bool = True
    ) -> list[Worker]:
        """Add workers ``w1``..``wN`` with node IPs 192.0.2.N (and 2001:db8::N)."""
        return [
            self.add_worker(
                f"w{i}", f"192.0.2.{i}", f"2001:db8::{i}" if ipv6 else None, controller=controller
            )
            for i in range(1, count + 1)
        ]

    def add_namespace(self, name: str) -> str:
        """Create an empty namespace ``<prefix>-<name>`` (lo up), removed at teardown."""
        return self._new_netns(name)

    def add_container(self, worker: Worker, name: str) -> Container:
        """Create an empty namespace ``<prefix>-<name>`` for a container of ``worker``."""
        container = Container(name=name, netns=self._new_netns(name), worker=worker)
        self.containers[name] = container
        return container

    def attach(
        self,
        container: Container,
        ipv4_cidr: str | None,
        ipv6_cidr: str | None = None,
        mtu: int = 1450,
        ofport: int | None = None,
        external_ids: dict | None = None,
        port_name: str | None = None,
        mac: str | None = None,
    ) -> AttachedPort:
        """Attach ``container`` to its worker's br-int directly (tests without an agent).

        The gateways are the first host of each subnet, as the agent allocates them.
        """
        gw4 = _first_host(ipv4_cidr)
        gw6 = _first_host(ipv6_cidr)
        worker = container.worker
        return attach_container(
            worker.db_url,
            worker.bridge,
            container.path,
            port_name or f"v{container.name}",
            ipv4_cidr,
            ipv6_cidr,
            gw4,
            gw6,
            mtu,
            ofport=ofport,
            external_ids=external_ids,
            mac=mac,
            node_netns=worker.netns,
        )

    def set_delay(self, a: Host | str, b: Host | str, ms: float, both_ways: bool = True) -> None:
        """Delay frames from host a to host b by ``ms`` (and b to a with ``both_ways``).

        A one-way delay of ``ms`` in both directions adds ``2 * ms`` to the RTT between them;
        ``ms=0`` removes the delay.
        """
        host_a, host_b = self._host(a), self._host(b)
        if self._delays is None:
            self._delays = Delays(self.underlay(), UNDERLAY_BRIDGE)
        pairs = [(host_a, host_b), (host_b, host_a)] if both_ways else [(host_a, host_b)]
        for src, dst in pairs:
            self._delays.set(_ul_port(src.name), f"d-{src.name}", dst.addresses, ms)
        LOG.info(
            "delay %s %s %s: %s ms", host_a.name, "<->" if both_ways else "->", host_b.name, ms
        )

    def keep_delays(self) -> bool:
        """Let the delays outlive this process (for a testbed left up on purpose); False when
        no delay was ever set."""
        return self._delays is not None and self._delays.keep_after_exit()

    # -- processes --------------------------------------------------------------------------

    def run_in(
        self,
        netns: str | Host | Container,
        argv: list[str],
        background: bool = False,
        timeout: float = 30,
        env: dict | None = None,
        ready_line: str | None = None,
    ):
        """Run ``argv`` inside a namespace: to completion (CompletedProcess), or in the
        background (Popen, tracked and killed at teardown; output in the testbed's dir)."""
        name = _netns_name(netns)
        if not background:
            return procs.run(name, argv, timeout=timeout, env=env)
        log = os.path.join(
            self.base_dir, f"{name}-{os.path.basename(argv[0])}-{len(self._procs)}.log"
        )
        proc = procs.spawn(name, argv, log_path=log, env=env, ready_line=ready_line)
        self._procs.append(proc)
        return proc

    def start_http_server(
        self, where: str | Host | Container, name: str, port: int = 80
    ) -> subprocess.Popen:
        """Start an HTTP server answering ``name`` (and /info) in a namespace; wait for it."""
        return self.run_in(
            where,
            [sys.executable, procs.SERVERS, "http", name, str(port)],
            background=True,
            ready_line="ready",
        )

    def start_udp_echo(
        self, where: str | Host | Container, name: str, port: int = 9000
    ) -> subprocess.Popen:
        """Start a UDP server answering each datagram with its name; wait for it."""
        return self.run_in(
            where,
            [sys.executable, procs.SERVERS, "udp", name, str(port)],
            background=True,
            ready_line="ready",
        )

    def start_iperf3(self, where: str | Host | Container, port: int = 5201) -> subprocess.Popen:
        """Start ``iperf3 -s`` in a namespace."""
        proc = self.run_in(where, ["iperf3", "-s", "-p", str(port)], background=True)
        _wait_listening(_netns_name(where), port)
        return proc

    def stop_process(self, proc: subprocess.Popen) -> None:
        """Stop one tracked background process now."""
        procs.stop(proc)
        if proc in self._procs:
            self._procs.remove(proc)

    # -- helpers ----------------------------------------------------------------------------

    def _host(self, host: Host | str) -> Host:
        if isinstance(host, Host):
            return host
        if host not in self.hosts:
            raise TestbedError(f"no host {host}")
        return self.hosts[host]

    def _new_netns(self, name: str) -> str:
        if not self._entered:
            raise TestbedError("use the Testbed as a context manager (with Testbed(...) as tb)")
        if not NAME_RE.match(name):
            raise TestbedError(f"name: {name!r} must match {NAME_RE.pattern}")
        full = f"{self.prefix}-{name}"
        create_named(full)
        self._namespaces.append(full)
        with iproute(full) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return full

    def _join_underlay(self, name: str, ip4: str, ip6: str | None, mtu: int) -> Host:
        if name in self.hosts:
            raise TestbedError(f"host {name} exists")
        ip4_cidr = _cidr(ip4, 4, 24)
        ip6_cidr = _cidr(ip6, 6, 64) if ip6 else None
        ul = self.underlay()
        netns = self._new_netns(name)
        port = _ul_port(name)
        with iproute(ul) as ipr:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                ipr.link("add", ifname=port, kind="veth", peer={"ifname": UPLINK, "net_ns_fd": fd})
            finally:
                os.close(fd)
            idx = ipr.link_lookup(ifname=port)[0]
            master = ipr.link_lookup(ifname=UNDERLAY_BRIDGE)[0]
            ipr.link("set", index=idx, mtu=mtu, master=master, state="up")
        # Frames cross OVS's userspace datapath on workers: no partial checksums on the wire.
        in_netns(ul, lambda: disable_tx_checksum(port))
        in_netns(netns, lambda: disable_tx_checksum(UPLINK))
        write_sysctl(netns, f"net/ipv6/conf/{UPLINK}/accept_dad", "0")
        with iproute(netns) as ipr:
            idx = ipr.link_lookup(ifname=UPLINK)[0]
            ipr.link("set", index=idx, mtu=mtu, state="up")
        return Host(
            name=name,
            netns=netns,
            ip4=str(ipaddress.ip_interface(ip4_cidr).ip),
            ip6=str(ipaddress.ip_interface(ip6_cidr).ip) if ip6_cidr else None,
            ip4_cidr=ip4_cidr,
            ip6_cidr=ip6_cidr,
        )


def _ul_port(name: str) -> str:
    return f"h-{name}"


def _netns_name(where) -> str:
    return where.netns if isinstance(where, (Host, Container)) else where


def _cidr(address: str, version: int, default_len: int) -> str:
    iface = ipaddress.ip_interface(address if "/" in address else f"{address}/{default_len}")
    if iface.version != version:
        raise TestbedError(f"{address} is not an IPv{version} address")
    return str(iface)


def _first_host(cidr: str | None) -> str | None:
    if cidr is None:
        return None
    return str(next(ipaddress.ip_interface(cidr).network.hosts()))


def _wait_listening(netns: str, port: int, timeout: float = 5.0) -> None:
    """Wait until a TCP socket listens on ``port`` in ``netns`` (read from /proc/net/tcp*)."""
    deadline = time.monotonic() + timeout
    needle = f":{port:04X} "
    while time.monotonic() < deadline:
        out = procs.run(netns, ["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
        if any(
            needle in line and line.split()[3] == "0A"
            for line in out.splitlines()[1:]
            if len(line.split()) > 3
        ):
            return
        time.sleep(0.05)
    raise TestbedError(f"nothing listens on port {port} in {netns}")
