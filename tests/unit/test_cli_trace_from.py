"""``oaknet trace --from SERVICE#N``: the full service name or a short form of it."""

from __future__ import annotations

import pytest

from oaknet.cli_trace import _match_port
from oaknet.cli_trace_text import Port
from oaknet.cli_util import USAGE, CliError

pytestmark = pytest.mark.unit


def _port(ofport: int, service: str, number: int) -> Port:
    ids = {"oaknet-service": service, "oaknet-instance": str(number)}
    return Port(f"okc{ofport:08x}", ofport, "", ids)


PORTS = {
    1: _port(1, "shop.prod.web.default", 0),
    2: _port(2, "shop.prod.web.default", 1),
    3: _port(3, "shop.prod.client.default", 0),
    4: _port(4, "blog.prod.client.default", 0),
}


@pytest.mark.parametrize(
    ("spec", "ofport"),
    [
        ("shop.prod.web.default#1", 2),  # the full name
        ("web#0", 1),  # the service part, as the demo and docs call it
        ("web#1", 2),
        ("shop.prod.web#0", 1),  # a leading part of the name
        ("shop.prod.client#0", 3),
        ("blog#0", 4),
    ],
)
def test_from_takes_the_full_name_or_a_short_form(spec, ofport):
    port, addr = _match_port(PORTS, [], spec, 4)
    assert (port.ofport, addr) == (ofport, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "client#0",
            (
                "--from: 'client' is ambiguous here: blog.prod.client.default, "
                "shop.prod.client.default; give the full service name"
            ),
        ),
        ("web#2", "--from: no container of web instance 2 here"),
        ("shop.pro#0", "--from: no container of shop.pro instance 0 here"),
        ("#0", "--from: no container of  instance 0 here"),
    ],
)
def test_from_names_what_it_cannot_choose(spec, message):
    with pytest.raises(CliError) as err:
        _match_port(PORTS, [], spec, 4)
    assert (err.value.code, err.value.message) == (USAGE, message)
