"""``oaknet trace``: where a packet from a container goes through a node's OVS pipeline.

Runs ``ovs-appctl ofproto/trace`` on the node's integration bridge with a packet built from the
container's OVS port (in_port, its MAC, its namespace address) to the gateway MAC, and prints
the steps with the table names of ``sdn.pipeline``. A dp_hash select group (round robin) picks
its bucket in the datapath from a packet hash that a trace cannot know, so each bucket is
traced on by replaying the recirculation with the hash values that lead to it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
from dataclasses import dataclass

from oaknet.cli_node import NodeTarget, add_target_options, resolve_target
from oaknet.cli_trace_text import Port, annotate, endpoint, last, verdict
from oaknet.cli_util import OK, USAGE, CliError, run_tool, unix_get

DEFAULT_SPORT = 40000
FALLBACK_MAC = "02:00:00:00:00:01"  # a port without a recorded container MAC
MAX_HASHES = 256  # OVS gives a dp_hash select group at most this many hash values
_RECIRC_GONE = "Recirculation context not found"
_PROTOCOLS = {"ip", "ipv6", "tcp", "tcp6", "udp", "udp6", "icmp", "icmp6", "sctp", "sctp6", "arp"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``oaknet trace``."""
    p = sub.add_parser(
        "trace",
        help="where a packet from a container goes through the pipeline",
        description=__doc__.splitlines()[0],
    )
    add_target_options(p)
    p.add_argument(
        "--from",
        dest="src_port",
        required=True,
        metavar="CONTAINER_PORT_OR_IP",
        help="the sending container: its OVS port name or ofport, SERVICE#N (SERVICE: the "
        "full name or its service part, e.g. web#0), its namespace IP or its instance IP",
    )
    p.add_argument("--to", required=True, metavar="ADDR", help="destination IPv4/IPv6 address")
    p.add_argument("--proto", choices=["tcp", "udp", "icmp"], default="tcp")
    p.add_argument("--dport", type=int, default=80, help="destination port (tcp/udp)")
    p.add_argument("--sport", type=int, default=DEFAULT_SPORT, help="source port (tcp/udp)")
    p.add_argument("--src", help="source address (default: the port's namespace address)")
    p.add_argument("--full", action="store_true", help="every line of OVS's trace")
    p.set_defaults(func=cmd_trace)


@dataclass
class Source:
    """The sending side of the traced packet."""

    port: Port
    ip: str
    mac: str


def cmd_trace(args: argparse.Namespace) -> int:
    """Trace one new connection from a container to an address and print the path."""
    try:
        dst = ipaddress.ip_address(args.to)
    except ValueError:
        raise CliError(f"--to {args.to!r} is not an IP address", USAGE) from None
    for name in ("dport", "sport"):
        if not 0 <= getattr(args, name) <= 65535:
            raise CliError(f"--{name} must be within 0..65535", USAGE)
    target = resolve_target(args)
    target.vswitchd_ctl()  # says plainly when the node's OVS is not there
    ports = read_ports(target)
    src = find_source(target, ports, args.src_port, dst.version, args.src)
    gateway = gateway_mac(target)
    flow = packet_flow(src, gateway, dst, args.proto, args.sport, args.dport)

    tracer = Tracer(target)
    head = tracer.trace(flow)
    branches = tracer.follow_hash(head)
    print(
        f"trace on {target.bridge} ({target.run_dir}): {args.proto} "
        f"{endpoint(src.ip, args.sport, args.proto)} -> "
        f"{endpoint(str(dst), args.dport, args.proto)} from {src.port.describe()}"
    )
    print(f"packet: {flow}")
    print()
    if branches and not args.full:
        # OVS cannot know the datapath's hash, so it says no bucket; the buckets follow.
        head = head.replace("-> no live bucket", "-> bucket picked in the datapath by a hash")
    print(annotate(head, ports, target.bridge, args.full))
    print()
    if not branches:
        print("result: " + verdict(head, ports))
        return OK
    group = last(re.findall(r"group:(\d+)", head)) or "?"
    print(f"select group {group} picks a bucket by a hash of the packet; each bucket, traced on:")
    for bucket, (hashes, text) in sorted(branches.items()):
        print()
        print(f"=== bucket {bucket} (dp_hash {','.join(str(h) for h in sorted(hashes))})")
        print(annotate(text, ports, target.bridge, args.full))
        print(f"result (bucket {bucket}): " + verdict(text, ports))
    return OK


# -- the packet ----------------------------------------------------------------------------


def read_ports(target: NodeTarget) -> dict[int, Port]:
    """The integration bridge's interfaces by ofport, from the node's OVSDB."""
    db = f"--db={target.db_url}"
    names = set(run_tool(["ovs-vsctl", db, "--timeout=5", "list-ifaces", target.bridge]).split())
    raw = run_tool(
        [
            "ovs-vsctl",
            db,
            "--timeout=5",
            "--format=json",
            "--data=json",
            "--columns=name,ofport,type,external_ids,options",
            "list",
            "Interface",
        ]
    )
    out: dict[int, Port] = {}
    for name, ofport, kind, ids, options in json.loads(raw)["data"]:
        if name not in names or not isinstance(ofport, int) or ofport < 0:
            continue
        out[ofport] = Port(name, ofport, kind, _ovs_map(ids), _ovs_map(options))
    return out


def find_source(
    target: NodeTarget, ports: dict[int, Port], spec: str, version: int, src_ip: str | None
) -> Source:
    """The sending port, address and MAC named by ``--from`` (and ``--src``)."""
    containers = _agent_containers(target)
    port, ip = _match_port(ports, containers, spec, version)
    by_port = next((c for c in containers if c.get("port_name") == port.name), {})
    ids = port.external_ids
    if ip and ipaddress.ip_address(ip).version != version:
        ip = None  # the container's address of the destination's family is wanted
    if src_ip is None:
        key = "oaknet-ipv4" if version == 4 else "oaknet-ipv6"
        field_name = "namespace_ip" if version == 4 else "namespace_ip_v6"
        src_ip = ip or ids.get(key) or by_port.get(field_name)
    if not src_ip:
        raise CliError(
            f"port {port.name} has no IPv{version} address known to OVS or the agent; give --src",
            USAGE,
        )
    try:
        if ipaddress.ip_address(src_ip).version != version:
            raise CliError(f"--src {src_ip} and --to are of different IP versions", USAGE)
    except ValueError:
        raise CliError(f"--src {src_ip!r} is not an IP address", USAGE) from None
    mac = ids.get("oaknet-mac") or by_port.get("mac") or FALLBACK_MAC
    return Source(port, src_ip, mac)


def gateway_mac(target: NodeTarget) -> str:
    """The MAC containers send to: the agent config's, else the ARP responder's on the bridge."""
    mac = getattr(target.config, "gateway_mac", None)
    if mac:
        return mac
    flows = target.ofctl("dump-flows", "table=0")
    match = re.search(r"set_field:([0-9a-f]{2}(?::[0-9a-f]{2}){5})->eth_src", flows)
    if not match:
        raise CliError(
            f"no gateway MAC: {target.bridge} has no responder flow and no agent "
            "config was found (give --config)"
        )
    return match.group(1)


def packet_flow(src: Source, gateway: str, dst, proto: str, sport: int, dport: int) -> str:
    """The ofproto/trace flow of the first packet of a new connection."""
    v6 = dst.version == 6
    parts = [f"in_port={src.port.ofport}", f"dl_src={src.mac}", f"dl_dst={gateway}"]
    if src.port.type in ("vxlan", "geneve"):
        remote = src.port.options.get("remote_ip")
        parts.append("tun_id=0x10" + (f",tun_src={remote}" if remote else ""))
    if proto == "icmp":
        parts.append("icmp6,icmp_type=128,icmp_code=0" if v6 else "icmp,icmp_type=8,icmp_code=0")
    else:
        parts.append(f"{proto}6" if v6 else proto)
    if v6:
        parts += [f"ipv6_src={src.ip}", f"ipv6_dst={dst}", "nw_ttl=64"]
    else:
        parts += [f"nw_src={src.ip}", f"nw_dst={dst}", "nw_ttl=64"]
    if proto != "icmp":
        # OVS 3.1 takes tp_src only for TCP; udp_src/tcp_src always work.
        parts += [f"{proto}_src={sport}", f"{proto}_dst={dport}"]
    if proto == "tcp":
        parts.append("tcp_flags=syn")
    return ",".join(parts)


def _match_port(
    ports: dict[int, Port], containers: list[dict], spec: str, version: int
) -> tuple[Port, str | None]:
    by_name = {p.name: p for p in ports.values()}
    if spec.isdigit():
        if int(spec) in ports:
            return ports[int(spec)], None
        raise CliError(f"--from: no port with ofport {spec} on the bridge", USAGE)
    if spec in by_name:
        return by_name[spec], None
    if "#" in spec:
        return _match_instance(ports, spec), None
    try:
        addr = str(ipaddress.ip_address(spec))
    except ValueError:
        raise CliError(
            f"--from: {spec!r} is no port name, ofport, SERVICE#N or IP address on this node",
            USAGE,
        ) from None
    for p in ports.values():
        if addr in (p.external_ids.get("oaknet-ipv4"), p.external_ids.get("oaknet-ipv6")):
            return p, addr
    for c in containers:
        if (
            addr in (c.get("namespace_ip"), c.get("namespace_ip_v6"))
            and c.get("port_name") in by_name
        ):
            return by_name[c["port_name"]], addr
        if (
            addr in (c.get("instance_ip"), c.get("instance_ip_v6"))
            and c.get("port_name") in by_name
        ):
            # An instance IP is how others see the container; it sends from its namespace IP.
            field_name = "namespace_ip" if version == 4 else "namespace_ip_v6"
            return by_name[c["port_name"]], c.get(field_name)
    raise CliError(f"--from: no local container has the address {addr}", USAGE)


def _match_instance(ports: dict[int, Port], spec: str) -> Port:
    """The port of ``SERVICE#N``; SERVICE is the full name or any unambiguous short form:
    its service part (``web`` of ``shop.prod.web.default``) or a leading part of it
    (``shop.prod.web``)."""
    service, _, number = spec.rpartition("#")
    found: dict[str, Port] = {}
    for p in ports.values():
        ids = p.external_ids
        name = ids.get("oaknet-service", "")
        if ids.get("oaknet-instance") == number and _names(name, service):
            found[name] = p
    if service in found:
        return found[service]
    if len(found) == 1:
        return next(iter(found.values()))
    if found:
        raise CliError(
            f"--from: {service!r} is ambiguous here: {', '.join(sorted(found))}; "
            "give the full service name",
            USAGE,
        )
    raise CliError(f"--from: no container of {service} instance {number} here", USAGE)


def _names(full: str, short: str) -> bool:
    """True when ``short`` names the service ``full`` (app.appns.service.servicens)."""
    if not short:
        return False
    parts = full.split(".")
    return full == short or full.startswith(short + ".") or (len(parts) == 4 and parts[2] == short)


def _agent_containers(target: NodeTarget) -> list[dict]:
    """The agent's view of its containers; empty when no agent answers (OVS alone suffices)."""
    try:
        status, body = unix_get(target.socket, "/api/v1/containers", 5.0)
    except (OSError, ValueError):
        return []
    if status != 200 or not isinstance(body, dict):
        return []
    return [c for c in body.get("containers", []) if isinstance(c, dict)]


def _ovs_map(value: object) -> dict:
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {str(k): str(v) for k, v in value[1]}
    return {}


# -- tracing -------------------------------------------------------------------------------


class Tracer:
    """Runs ofproto/trace on one bridge and follows dp_hash select groups bucket by bucket."""

    def __init__(self, target: NodeTarget):
        self.target = target
        self.flow = ""

    def trace(self, flow: str) -> str:
        """The text of ``ofproto/trace`` for ``flow``."""
        self.flow = flow
        return self.target.appctl("ofproto/trace", self.target.bridge, flow)

    def follow_hash(self, head: str) -> dict[int, tuple[list[int], str]]:
        """Bucket -> (hash values, trace after the hash) when ``head`` stops at a dp_hash
        group; empty otherwise."""
        if _hash_recirc(head) is None:
            return {}
        branches: dict[int, tuple[list[int], str]] = {}
        limit = MAX_HASHES
        # A dp_hash of 0 reads as "not hashed yet" to OVS, so hash 0 is traced as mask + 1,
        # which selects the same bucket.
        value = 1
        while value <= limit:
            text = self._after_hash(value)
            match = re.search(r"using bucket (\d+)", text)
            if match is None:
                break
            mask = re.search(r"dp_hash=0x[0-9a-f]+/(0x[0-9a-f]+)", text)
            if mask:
                limit = min(limit, int(mask.group(1), 16) + 1)
            bucket = int(match.group(1))
            hashed = value % limit
            if bucket in branches:
                branches[bucket][0].append(hashed)
            else:
                branches[bucket] = ([hashed], text)
            value += 1
        return branches

    def _after_hash(self, dp_hash: int) -> str:
        # The recirculation context of a trace lives only for moments: trace again each time.
        for _ in range(2):
            head = self.target.appctl("ofproto/trace", self.target.bridge, self.flow)
            recirc = _hash_recirc(head)
            final = last(re.findall(r"^Final flow: (.*)$", head, re.MULTILINE))
            if recirc is None or final is None:
                return ""
            # The final flow is in the datapath's words; OpenFlow syntax has no bare "eth".
            fields = [
                f
                for f in final.split(",")
                if not f.startswith("recirc_id=") and ("=" in f or f in _PROTOCOLS)
            ]
            udp = any(f in ("udp", "udp6") for f in fields)
            if udp:  # OVS 3.1 parses tp_src/tp_dst only for TCP
                fields = [re.sub(r"^tp_(src|dst)=", r"udp_\1=", f) for f in fields]
            flow = ",".join([f"recirc_id={recirc}", f"dp_hash={dp_hash:#x}", *fields])
            text = self.target.appctl("ofproto/trace", self.target.bridge, flow)
            if _RECIRC_GONE not in text:
                return text
        return ""


def _hash_recirc(text: str) -> str | None:
    """The recirculation id after a datapath ``hash()`` action at the end of a trace."""
    actions = last(re.findall(r"^Datapath actions: (.*)$", text, re.MULTILINE))
    match = re.search(r"hash\([^)]*\)\),recirc\((0x[0-9a-f]+)\)$", actions or "")
    return match.group(1) if match else None
