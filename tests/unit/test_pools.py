"""Address pools hand out the lowest free address, reuse released ones and fail clearly."""

import pytest

from oaknet.config import ConfigError, PoolsConfig
from oaknet.pools import AddressPool, AddressTaken, OutOfRange, PoolExhausted, Pools
from oaknet.store import open_store

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/pools.db")
    yield s
    s.close()


def test_defaults_follow_the_reference(store):
    pools = Pools.from_config(PoolsConfig())
    with store.transaction() as tx:
        assert pools.service_v4.allocate(tx, "a") == "10.30.0.1"
        assert pools.round_robin_v6.allocate(tx, "a") == "fdff:2000::1"
        assert pools.closest_v6.allocate(tx, "a") == "fdff:1000::1"
        assert pools.instance_v6.allocate(tx, "a") == "fdff::1"
        assert [pools.subnet_v4.allocate(tx, n) for n in "ab"] == ["10.18.0.0", "10.18.0.64"]
        assert [pools.subnet_v6.allocate(tx, n) for n in "ab"] == ["fc00::", "fc00::100"]
    assert pools.subnet_v4.size == 2 ** (26 - 15)


def test_release_makes_the_address_the_next_one_handed_out(store):
    pool = AddressPool("svc", "10.30.0.0/24")
    with store.transaction() as tx:
        got = [pool.allocate(tx, f"o{i}") for i in range(4)]
        assert got == ["10.30.0.1", "10.30.0.2", "10.30.0.3", "10.30.0.4"]
        assert not pool.release(tx, "10.30.0.2", owner="somebody-else")
        assert pool.release(tx, "10.30.0.2", owner="o1")
        assert pool.allocate(tx, "new") == "10.30.0.2"
        assert pool.allocate(tx, "next") == "10.30.0.5"
    assert pool.owner(store, "10.30.0.2") == "new"


def test_exhaustion_is_a_clear_error_and_release_recovers(store):
    pool = AddressPool("tiny", "10.30.0.0/29")  # .1 .. .6
    with store.transaction() as tx:
        got = [pool.allocate(tx, f"o{i}") for i in range(6)]
        assert got[-1] == "10.30.0.6"
        with pytest.raises(PoolExhausted, match="no free address left in pool tiny"):
            pool.allocate(tx, "one-too-many", field="RR_ip")
        pool.release(tx, "10.30.0.4")
        assert pool.allocate(tx, "again") == "10.30.0.4"


def test_chosen_address_is_validated(store):
    pool = AddressPool("rr6", "fdff:2000::/21")
    with store.transaction() as tx:
        assert pool.claim(tx, "fdff:2000:0::0:7", "a", field="RR_ip_v6") == "fdff:2000::7"
        assert pool.claim(tx, "fdff:2000::7", "a") == "fdff:2000::7"  # same owner: idempotent
        with pytest.raises(AddressTaken) as taken:
            pool.claim(tx, "fdff:2000::7", "b", field="RR_ip_v6")
        assert taken.value.field == "RR_ip_v6"
        for bad in ["fdff:3000::1", "10.30.0.1", "not-an-ip", "fdff:2000::"]:
            with pytest.raises(OutOfRange):
                pool.claim(tx, bad, "a")
        assert pool.allocate(tx, "c") == "fdff:2000::1"  # lowest free, skipping the claimed ::7


def test_subnet_blocks_must_be_aligned(store):
    pool = AddressPool("sub", "10.18.0.0/24", 26)
    with store.transaction() as tx:
        assert pool.claim(tx, "10.18.0.128", "n1") == "10.18.0.128"
        with pytest.raises(OutOfRange, match="start of a /26"):
            pool.claim(tx, "10.18.0.65", "n2")
        assert [pool.allocate(tx, f"n{i}") for i in range(3)] == [
            "10.18.0.0",
            "10.18.0.64",
            "10.18.0.192",
        ]
        with pytest.raises(PoolExhausted):
            pool.allocate(tx, "n9")


def test_preview_does_not_claim(store):
    pool = AddressPool("svc", "10.30.0.0/16")
    with store.transaction() as tx:
        pool.allocate(tx, "a")
    assert pool.preview(store, 3) == ["10.30.0.2", "10.30.0.3", "10.30.0.4"]
    assert pool.used(store) == 1


def test_pool_config_is_validated():
    with pytest.raises(ConfigError, match="pools.closest_v6: overlaps"):
        PoolsConfig(closest_v6="fdff:2000::/24").validate()
    with pytest.raises(ConfigError, match="IPv4"):
        PoolsConfig(service_v4="fd00::/64").validate()
    with pytest.raises(ConfigError, match="subnet_v4_prefix"):
        PoolsConfig(subnet_v4_prefix=31).validate()
