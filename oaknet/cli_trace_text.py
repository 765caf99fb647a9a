"""The text side of ``oaknet trace``: OVS's trace with table and port names, and verdicts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Port:
    """One interface of the integration bridge as OVSDB holds it."""

    name: str
    ofport: int | None
    type: str
    external_ids: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        """``name`` plus what it is: a container (service#n) or a tunnel (to which node)."""
        ids = self.external_ids
        if "oaknet-service" in ids:
            return f"{self.name} (container {ids['oaknet-service']}#{ids.get('oaknet-instance')})"
        if self.type in ("vxlan", "geneve"):
            return f"{self.name} ({self.type} tunnel to {self.options.get('remote_ip', '?')})"
        if self.type == "patch":
            return f"{self.name} (patch to {self.options.get('peer', '?')})"
        return self.name


def annotate(text: str, ports: dict[int, Port], bridge: str, full: bool = False) -> str:
    """OVS's trace with table names and port descriptions; without ``full``, only the steps."""
    from sdn.pipeline import TABLE_BY_ID

    out = []
    current = None
    for line in text.splitlines():
        m = re.match(r'^bridge\("([^"]+)"\)', line)
        if m:
            current = m.group(1)
        ours = current == bridge
        if not full and _noise(line):
            continue
        m = re.match(r"^(\s*)(\d+)\. (.*)$", line)
        if m and ours and int(m.group(2)) in TABLE_BY_ID:
            line = f"{m.group(1)}{m.group(2)}. [{TABLE_BY_ID[int(m.group(2))].name}] {m.group(3)}"
        m = re.match(r"^(\s*Resuming from table )(\d+)$", line)
        if m and int(m.group(2)) in TABLE_BY_ID:
            line += f" ({TABLE_BY_ID[int(m.group(2))].name})"
        m = re.match(r"^\s*output:(\d+)$", line)
        if m and ours and int(m.group(1)) in ports:
            line += f"  -> {ports[int(m.group(1))].describe()}"
        if not full and line.startswith(" Modified flow:"):
            line = " NAT applied:" + line[len(" Modified flow:") :]
        out.append(line)
    # Blank lines come in runs once the noise is gone.
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")
    return text


def verdict(text: str, ports: dict[int, Port]) -> str:
    """One line saying where the packet ends: a port, a tunnel, the agent, or dropped."""
    actions = last(re.findall(r"^Datapath actions: (.*)$", text, re.MULTILINE)) or ""
    final = last(re.findall(r"^Final flow: (.*)$", text, re.MULTILINE)) or ""
    if final == "unchanged":
        final = last(re.findall(r"^Flow: (.*)$", text, re.MULTILINE)) or ""
    addresses = _addresses(final)
    if "Translation failed" in text or actions == "drop":
        return f"dropped{addresses}"
    if "userspace(" in actions:
        return f"sent to the node agent: {_punt(text)}{addresses}"
    tunnel = last(re.findall(r"-> tunneling to (\S+)", text))
    if tunnel:
        return f"into the tunnel to node {tunnel}{addresses}"
    section = text.rsplit("bridge(", 1)[-1]
    outs = re.findall(r"^\s*output:(\d+)$", section, re.MULTILINE)
    if outs:
        named = [ports[int(o)].describe() if int(o) in ports else f"ofport {o}" for o in outs]
        return f"out of {', '.join(named)}{addresses}"
    if re.search(r"^\s*IN_PORT$", section, re.MULTILINE):
        return f"back out of the port it came in on (hairpin){addresses}"
    return f"datapath actions {actions}{addresses}"


def _punt(text: str) -> str:
    """Why the pipeline hands the packet to the agent, from the cookie of the flow that did."""
    from sdn.spec import owner_id, punt_owner

    steps = re.findall(r"cookie (0x[0-9a-f]+)\n(?:\s+[^\n]*\n)*?\s+CONTROLLER", text + "\n")
    kinds = {owner_id(punt_owner(k)): k for k in ("reject", "unknown")}
    kind = kinds.get(int(steps[-1], 16) >> 32) if steps else None
    if kind == "reject":
        return "no live instance, it answers with a TCP reset or ICMP unreachable"
    if kind == "unknown":
        return "an address of a semantic range this node does not know"
    return "packet-in"


def _noise(line: str) -> bool:
    """Lines that only matter to someone debugging OVS itself."""
    text = line.strip()
    return (
        line.startswith(
            (
                "Flow:",
                "Final flow:",
                "Megaflow:",
                "Datapath actions:",
                " Initial flow:",
                "Replacing src/dst",
                "====",
                "---",
                "recirc(",
            )
        )
        or text in ("thaw", "Resuming from table 0", "NAT applied:", "Modified flow:")
        or text.startswith(
            (
                "Restoring actions:",
                "unroll_xlate(",
                "restored state:",
                "-> A clone of the packet is forked",
                "-> Sets the packet to an untracked state",
            )
        )
    )


def _addresses(flow: str) -> str:
    values = dict(f.split("=", 1) for f in flow.split(",") if "=" in f)
    src = values.get("nw_src") or values.get("ipv6_src")
    dst = values.get("nw_dst") or values.get("ipv6_dst")
    if not (src and dst):
        return ""
    sport, dport = values.get("tp_src"), values.get("tp_dst")
    return (
        f", as {endpoint(src, sport, 'tcp' if sport else 'icmp')} -> "
        f"{endpoint(dst, dport, 'tcp' if dport else 'icmp')}"
    )


def endpoint(ip: str, port: object, proto: str) -> str:
    """``ip:port`` (``[ip]:port`` for IPv6), or the bare address for ICMP."""
    if proto == "icmp" or port in (None, ""):
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def last(items: list):
    """The last item of ``items``, or None when it is empty."""
    return items[-1] if items else None
