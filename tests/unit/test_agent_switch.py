"""The switch side without a switch: what a reconcile sends, and what a refused bundle does."""

import struct
import threading
import time
from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as parser

from sdn import ofcodec, ofmsg, spec
from sdn.delta import Delta
from sdn.switch import OFPGC_ADD_OR_MOD, Switch

pytestmark = pytest.mark.unit


def flow(owner: str, n: int) -> spec.Flow:
    return spec.Flow.make(1, 100, {"ipv4_dst": f"10.30.0.{n}"}, [spec.Output(n)], owner)


def group(gid: int, port: int, owner: str = "service:a") -> spec.GroupSpec:
    return spec.GroupSpec(gid, "select", (spec.Bucket((spec.Output(port),)),), owner, "dp_hash")


class FakeAgent:
    """Desired state only."""

    def __init__(self, flows, groups):
        self.flows, self.groups = flows, groups
        self.sink = None
        self.cfg = SimpleNamespace(audit_interval_s=0)  # no idle audits

    def desired(self):
        """What the switch should hold."""
        return list(self.flows), list(self.groups)


class FakeDatapath:
    """Records what is sent and answers like OVS: stats from ``have``, bundle commits (refused
    when they hold a flow of a ``bad`` owner)."""

    ofproto = ofp
    ofproto_parser = parser

    def __init__(self, switch, have_flows, have_groups, bad_owner=None):
        self.switch = switch
        self.have_flows, self.have_groups = have_flows, have_groups
        self.bad_owner = bad_owner
        self.xid = 0
        self.id = 1
        self.sent = []
        self.bundles = {}

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg):
        if msg.xid is None:
            self.set_xid(msg)
        msg.serialize()  # every message must encode
        self.sent.append(msg)
        reply = SimpleNamespace(xid=msg.xid, flags=0)
        if isinstance(msg, parser.OFPFlowDescStatsRequest):
            reply.body = [
                ofcodec.RawFlowDesc(0, f.table, f.priority, f.cookie) for f in self.have_flows
            ]
            self.switch.on_reply(reply)
        elif isinstance(msg, parser.OFPGroupDescStatsRequest):
            reply.body = [SimpleNamespace(image=ofmsg.group_image(g)) for g in self.have_groups]
            self.switch.on_reply(reply)
        elif isinstance(msg, parser.OFPBundleAddMsg):
            self.bundles.setdefault(msg.bundle_id, []).append(msg.message)
        elif isinstance(msg, parser.OFPBundleCtrlMsg) and msg.type == ofp.OFPBCT_COMMIT_REQUEST:
            inner = self.bundles.get(msg.bundle_id, [])
            bad = self.bad_owner and any(
                isinstance(m, parser.OFPFlowMod)
                and m.cookie >> 32 == spec.owner_id(self.bad_owner)
                and m.command == ofp.OFPFC_ADD
                for m in inner
            )
            if bad:
                self.switch.on_error(SimpleNamespace(xid=msg.xid, type=17, code=13))
            else:
                self.switch.on_reply(reply)
        return True

    def send(self, buf):
        """Encoded messages (how the agent sends bundles): decoded, then as ``send_msg``."""
        pos = 0
        while pos < len(buf):
            version, msg_type, length, xid = struct.unpack_from("!BBHI", buf, pos)
            data = bytes(buf[pos : pos + length])
            pos += length
            if msg_type == ofp.OFPT_BUNDLE_ADD_MESSAGE:
                (bundle_id,) = struct.unpack_from("!I", data, 8)
                inner = data[16:]
                v, t, n, inner_xid = ofproto_parser.header(inner)
                assert inner_xid == xid
                msg = ofproto_parser.msg(self, v, t, n, inner_xid, inner)
                self.bundles.setdefault(bundle_id, []).append(msg)
            else:
                self.send_msg(ofproto_parser.msg(self, version, msg_type, length, xid, data))
        return True

    def committed(self):
        """The inner messages of every bundle, in order, per bundle."""
        return list(self.bundles.values())


def connect(agent, have_flows=(), have_groups=(), bad_owner=None):
    switch = Switch(agent)
    dp = FakeDatapath(switch, list(have_flows), list(have_groups), bad_owner)
    switch.on_connect(dp, 1)
    deadline = time.monotonic() + 5
    while not switch.connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert switch.connected()
    return switch, dp


def test_reconcile_sends_only_the_difference_in_order():
    keep, new, stale = flow("service:a", 1), flow("service:a", 2), flow("service:b", 3)
    same, changed, extra = group(1, 1), group(2, 2), group(3, 3)
    agent = FakeAgent([keep, new], [same, changed])
    switch, dp = connect(agent, [keep, stale], [same, group(2, 9), extra])
    [bundle] = dp.committed()
    kinds = [(type(m).__name__, getattr(m, "command", None)) for m in bundle]
    assert kinds == [
        ("OFPGroupMod", OFPGC_ADD_OR_MOD),  # group 2 replaced, complete
        ("OFPFlowMod", ofp.OFPFC_DELETE),  # the stale flow, by cookie
        ("OFPFlowMod", ofp.OFPFC_ADD),  # the missing flow
        ("OFPGroupMod", ofp.OFPGC_DELETE),  # the unwanted group, last
    ]
    assert bundle[0].group_id == 2 and bundle[3].group_id == 3
    assert bundle[1].cookie == stale.cookie and bundle[2].cookie == new.cookie
    assert switch.last_sync["set_groups"] == 1 and switch.last_sync["deleted_flows"] == 1
    switch.stop()


def test_nothing_changed_sends_no_bundle():
    agent = FakeAgent([flow("node", 1)], [group(1, 1)])
    switch, dp = connect(agent, [flow("node", 1)], [group(1, 1)])
    assert dp.committed() == []
    assert set(switch.last_sync.values()) - {0} == {1}  # only the had_* counts
    switch.stop()


def test_refused_bundle_is_retried_owner_by_owner():
    agent = FakeAgent([], [])
    switch, dp = connect(agent)
    dp.bad_owner = "service:bad"
    delta = Delta(add_flows=[flow("service:good", 1), flow("service:bad", 2)])
    done = switch.submit(delta)
    assert done.wait(5)
    bundles = dp.committed()
    assert len(bundles) == 3  # all together (refused), then good alone, then bad alone
    good = [b for b in bundles[1:] if b[0].cookie == flow("service:good", 1).cookie]
    assert len(good) == 1 and "type=17" in switch.last_error
    switch.stop()


def test_deltas_queued_before_a_reconcile_are_covered_by_it():
    agent = FakeAgent([flow("node", 1)], [])
    switch = Switch(agent)
    early = switch.submit(Delta(add_flows=[flow("node", 1)]))
    dp = FakeDatapath(switch, [], [])
    switch.on_connect(dp, 1)
    assert early.wait(5)
    deadline = time.monotonic() + 5
    while not switch.connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(dp.committed()) == 1  # the reconcile's bundle only
    switch.stop()
    assert not [t for t in threading.enumerate() if t.name == "switch-worker" and t.is_alive()]
