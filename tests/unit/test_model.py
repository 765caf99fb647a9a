"""The service table records reject what the rest of the system could not use."""

import pytest

from oaknet.model import (
    CLOSEST,
    ROUND_ROBIN,
    Instance,
    ModelError,
    Service,
    ServiceIP,
    parse_job_name,
)

pytestmark = pytest.mark.unit


def test_job_name_has_four_alphanumeric_parts():
    assert parse_job_name("shop.prod.web.default") == ("shop", "prod", "web", "default")
    for bad in ["shop.prod.web", "shop.prod.web.default.x", "shop.pr-od.web.default", "", 42]:
        with pytest.raises(ModelError):
            parse_job_name(bad)


def test_service_round_trips_through_dict():
    svc = Service(
        name="shop.prod.web.default",
        job_id="64b7f0c2a1b2c3d4e5f60718",
        service_ips=[
            ServiceIP(ROUND_ROBIN, "10.30.0.1", "fdff:2000::1"),
            ServiceIP(CLOSEST, "10.30.0.2"),
        ],
        instances=[Instance(0, "10.30.0.3", node_ip="192.0.2.11", namespace_ip="10.18.0.2")],
    )
    svc.validate()
    again = Service.from_dict(svc.to_dict())
    assert again == svc
    assert again.service_ip(CLOSEST).ipv4 == "10.30.0.2"
    assert again.instance(0).placed


@pytest.mark.parametrize(
    "svc, culprit",
    [
        (Service("a.b.c.d", service_ips=[ServiceIP("random", "10.30.0.1")]), "policy"),
        (Service("a.b.c.d", service_ips=[ServiceIP(ROUND_ROBIN, "fdff::1")]), "ipv4"),
        (Service("a.b.c.d", instances=[Instance(-1)]), "instance_number"),
        (Service("a.b.c.d", instances=[Instance(1), Instance(1)]), "instances"),
        (Service("a.b.c.d", instances=[Instance(1, instance_ip="10.30.0.300")]), "instance_ip"),
    ],
)
def test_invalid_records_name_the_field(svc, culprit):
    with pytest.raises(ModelError) as err:
        svc.validate()
    assert err.value.field == culprit


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ModelError):
        Service.from_dict({"name": "a.b.c.d", "instances": [{"number": 1, "bogus": 2}]})
