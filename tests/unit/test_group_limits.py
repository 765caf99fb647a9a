"""Groups stay encodable: at most MAX_GROUP_BUCKETS buckets, bucket ids within 32 bits."""

from __future__ import annotations

import ipaddress

import pytest

from oaknet.model import CLOSEST, ROUND_ROBIN, Instance
from sdn import ofwire, spec
from sdn.logic_service import MAX_BUCKET_ID, MAX_GROUP_BUCKETS, Target, _group

pytestmark = pytest.mark.unit

OWNER = "service:app.ns.big.ns"


def targets(count: int, first_number: int = 0, v6: bool = False) -> list[Target]:
    """``count`` remote instances behind one tunnel (ofport 100), numbered from ``first``."""
    base = ipaddress.ip_address("fdff::1:0" if v6 else "10.30.64.0")
    out = []
    for k in range(count):
        addr = str(base + k)
        inst = Instance(first_number + k, addr, node_ip="192.0.2.2")
        out.append(Target(inst, False, addr, 100, 1.0))
    return out


@pytest.mark.parametrize("policy", [ROUND_ROBIN, CLOSEST])
def test_a_big_service_gets_a_group_that_fits_one_message(policy, caplog):
    group = _group(policy, 7, targets(1000, v6=True), OWNER)
    assert len(group.buckets) == MAX_GROUP_BUCKETS
    assert [b.bucket_id for b in group.buckets] == list(range(MAX_GROUP_BUCKETS))
    assert len(ofwire.group_mod(group)) <= ofwire.MAX_BUNDLED_MESSAGE
    assert f"1000 instances, only the first {MAX_GROUP_BUCKETS}" in caplog.text


def test_instance_numbers_beyond_32_bits_get_free_bucket_ids():
    numbers = [2, MAX_BUCKET_ID + 5, 0, 10**12 - 1]
    group = _group(
        ROUND_ROBIN,
        7,
        [
            Target(Instance(n, f"10.30.64.{i}"), False, f"10.30.64.{i}", 100, 1.0)
            for i, n in enumerate(numbers)
        ],
        OWNER,
    )
    ids = [b.bucket_id for b in group.buckets]  # in instance-number order: 0, 2, big, bigger
    assert ids == [0, 2, 1, 3]
    ofwire.group_mod(group)  # encodes


def test_an_oversized_group_is_refused_by_the_encoder_not_truncated():
    group = _group(ROUND_ROBIN, 7, targets(400), OWNER)
    doubled = spec.GroupSpec(
        group.group_id,
        group.type,
        tuple(b for b in group.buckets) * 4,
        group.owner,
        selection_method=group.selection_method,
    )
    with pytest.raises(ValueError, match="more than one OpenFlow message"):
        ofwire.group_mod(doubled)
