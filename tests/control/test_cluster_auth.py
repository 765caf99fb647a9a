"""Every cluster management endpoint needs a bearer token with the right role."""

import pytest
import requests

from oaknet.auth import issue_jwt
from oaknet.client import ClientError
from oaknet.web import view_roles
from tests.control.conftest import app_routes
from tests.control.test_cluster_support import c1_fixture  # noqa: F401  (the c1 fixture)

pytestmark = pytest.mark.control

PUBLIC = {"/api/health", "/metrics", "/api/openapi.json"}
SAMPLE_ARGS = {"job_name": "a_b_c_d", "service_name": "a_b_c_d", "service_ip": "10_30_0_1"}
# A token of the other side for each route's roles: nodes may not act as the orchestrator
# and the orchestrator may not act as a node.
OTHER_SIDE = {"node": "tok-cm-orch", "orchestrator": "tok-a1", "reader": "tok-a1"}


def routes(app):
    return app_routes(app, SAMPLE_ARGS)


def test_every_route_is_protected_unless_listed_public(c1):
    app = c1.app
    seen_public = set()
    checked = 0
    for rule, method, path in routes(app):
        roles = view_roles(app.view_functions[rule.endpoint])
        if roles is None:
            seen_public.add(rule.rule)
            continue
        url = c1.url + path + "?timeout=0"  # the watch route must not long-poll here
        wrong_role = OTHER_SIDE[roles[0]]
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer not-a-known-token"}, 401),
            ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
            ({"Authorization": "Bearer tok-c1"}, 401),  # the root's token means nothing here
            ({"Authorization": f"Bearer {issue_jwt('x' * 40, 'a1', ['node'])}"}, 401),
            ({"Authorization": f"Bearer {wrong_role}"}, 403),
        ):
            resp = requests.request(method, url, headers=headers, json={}, timeout=5)
            assert resp.status_code == status, (method, rule.rule, headers, resp.text)
            assert resp.json()["error"] in ("unauthorized", "forbidden")
            if status == 401:
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        ok = requests.request(
            method, url, headers={"Authorization": "Bearer tok-cm-admin"}, json={}, timeout=5
        )
        assert ok.status_code not in (401, 403), (method, rule.rule, ok.text)
        checked += 1
    assert seen_public == PUBLIC
    assert checked >= 15


def test_a_node_is_its_token(root, c1):
    """Nodes act only as themselves: interests, feeds and reports follow the token's subject."""
    root.orch.post(
        "/api/net/service/deploy",
        {
            "_id": "job1",
            "deployment_descriptor": {
                "app_name": "shop",
                "app_ns": "default",
                "service_name": "web",
                "service_ns": "default",
            },
        },
    )
    a1, a2 = c1.node("a1"), c1.node("a2")
    a1.register()
    a2.register()
    a1.query("shop.default.web.default")
    assert c1.state.cache.interests_of("a1") == {"shop.default.web.default"}
    assert c1.state.cache.interests_of("a2") == set()
    assert a2.api.get("/api/net/node/services")["services"] == []
    assert len(a1.api.get("/api/net/node/services")["services"]) == 1
    # A node cannot register (or re-address) another one.
    with pytest.raises(ClientError) as other:
        a2.api.post("/api/net/node/register", {"node_id": "a1", "host_ip": "192.0.2.99"})
    assert (other.value.status, other.value.field) == (403, "node_id")
    assert c1.state.nodes.get("a1")["host_ip"] is None
    a2.api.post("/api/net/node/register", {"node_id": "a2", "host_ip": "192.0.2.99"})
    assert c1.state.nodes.get("a2")["host_ip"] == "192.0.2.99"
