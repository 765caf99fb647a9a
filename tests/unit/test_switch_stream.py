"""Bundles encoded while they are sent: a record without an encoding costs only its owner."""

import gc
import itertools
import struct
import time

import pytest
from os_ken.ofproto import ofproto_v1_5 as ofp
from test_agent_switch import FakeAgent, connect

from sdn import spec
from sdn.agent import paused_gc
from sdn.delta import Delta

pytestmark = pytest.mark.unit


def flows(owner: str, count: int) -> list[spec.Flow]:
    """``count`` distinct routes of ``owner``."""
    return [
        spec.Flow.make(5, 100, {"ipv4_dst": f"10.30.{n >> 8}.{n & 255}"}, [spec.Output(n)], owner)
        for n in range(1, count + 1)
    ]


def test_unencodable_record_discards_the_bundle_and_spares_the_other_owners():
    switch, dp = connect(FakeAgent([], []))
    try:
        _check_unencodable(switch, dp)
    finally:
        switch.stop()


def _check_unencodable(switch, dp) -> None:
    sent = []
    real_send = dp.send

    def send(buf):
        sent.append(bytes(buf))
        return real_send(buf)

    dp.send = send
    bad = spec.Flow.make(1, 100, {"tcp_dst": 80}, [spec.Output(1)], "service:bad")  # no eth_type
    good = flows("service:good", 4000)  # more than one chunk
    done = switch.submit(Delta(add_flows=[*good, bad]))
    assert done.wait(10)

    controls = [
        struct.unpack_from("!IH", chunk, pos + 8)
        for chunk in sent
        for pos in _offsets(chunk)
        if chunk[pos + 1] == ofp.OFPT_BUNDLE_CONTROL
    ]
    kinds = [kind for _, kind in controls]
    # The whole delta: opened, then discarded at the bad record (its first chunks were out);
    # then owner by owner: good committed, bad never opened (it fails before a chunk is full).
    assert kinds.count(ofp.OFPBCT_DISCARD_REQUEST) == 1
    assert kinds.count(ofp.OFPBCT_COMMIT_REQUEST) == 1
    # The fake keeps every bundle's adds; the committed one is the last.
    assert [m.cookie for m in dp.committed()[-1]] == [f.cookie for f in good]
    assert "not encodable" in switch.last_error and "needs eth_type" in switch.last_error


def test_large_bundle_goes_out_in_chunks_with_consecutive_xids():
    switch, dp = connect(FakeAgent([], []))
    try:
        _check_chunks(switch, dp)
    finally:
        switch.stop()


def _check_chunks(switch, dp) -> None:
    chunks = []
    real_send = dp.send

    def send(buf):
        chunks.append(bytes(buf))
        return real_send(buf)

    dp.send = send
    started = time.monotonic()
    many = flows("service:many", 6000)
    assert switch.submit(Delta(add_flows=many)).wait(20)
    assert time.monotonic() - started < 20
    assert len(chunks) > 1
    xids = [struct.unpack_from("!I", c, pos + 4)[0] for c in chunks for pos in _offsets(c)]
    assert len(xids) == len(many) + 2
    assert all((b - a) % 2**32 == 1 for a, b in itertools.pairwise(xids))
    assert [m.cookie for m in dp.committed()[0]] == [f.cookie for f in many]


def _offsets(buf: bytes) -> list[int]:
    """Where each OpenFlow message of ``buf`` starts."""
    out, pos = [], 0
    while pos < len(buf):
        out.append(pos)
        pos += struct.unpack_from("!H", buf, pos + 2)[0]
    return out


def test_paused_gc_restores_the_collector_and_leaves_a_disabled_one_alone():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with paused_gc(False):
        assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
