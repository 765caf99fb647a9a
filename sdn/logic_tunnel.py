"""Flows of the any-peer tunnel port (``remote_ip=flow``): nodes without their own tunnel here.

Admission keeps the sender's underlay address (reg7, then the connection's ct_label at
commit), and replies of such connections go back to that address. A node that made a tunnel
to this one runs BFD on it; its BFD packets arrive here and go to the agent (owner
``punt:peer``, the sender in reg7), which makes a tunnel back so the session, and the
fast-failover liveness built on it, comes up on both ends.
"""

from __future__ import annotations

from sdn import pipeline as pl
from sdn.spec import Controller, Flow, GotoTable, Move, Output, SetField, punt_owner

OWNER = "peer:any"  # sdn.logic.peer_owner("any")


def any_peer_flows(ofport: int) -> list[Flow]:
    """Admission from the any-peer port ``ofport``, BFD to the agent, replies back into it."""
    owner = OWNER
    bfd = {
        "in_port": ofport,
        "eth_type": pl.ETH_IP,
        "ip_proto": pl.PROTO_UDP,
        "udp_dst": pl.BFD_UDP_PORT,
    }
    learn = (Move("tun_ipv4_src", pl.REG_TUN_SRC, 32), Controller(max_len=128))
    flows = [Flow.make(pl.CLASSIFY.id, pl.PRIO_PEER_LEARN, bfd, learn, punt_owner("peer"))]
    flows += [
        Flow.make(
            pl.CLASSIFY.id,
            pl.PRIO_ADMIT,
            {"eth_type": fam.eth_type, "in_port": ofport, "tunnel_id": pl.VNI},
            (
                SetField(pl.REG_ORIGIN, pl.ORIGIN_TUNNEL),
                SetField(pl.REG_INGRESS, ofport),
                Move("tun_ipv4_src", pl.REG_TUN_SRC, 32),
                GotoTable(pl.UNSNAT.id),
            ),
            owner,
        )
        for fam in pl.FAMILIES
    ]
    flows.append(
        Flow.make(
            pl.ROUTING.id,
            pl.PRIO_TUNNEL_REPLY,
            {
                "ct_state": pl.ST_REPLY,
                "ct_mark": (ofport << pl.MARK_INGRESS_OFS, pl.MARK_INGRESS_MASK),
            },
            (
                Move("ct_label", "tun_ipv4_dst", 32, pl.LABEL_TUN_SRC_OFS, 0),
                SetField("tunnel_id", pl.VNI),
                Output(ofport),
            ),
            owner,
        )
    )
    return flows
