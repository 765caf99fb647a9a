"""Every management endpoint needs a bearer token with the right role; callers are tokens."""

import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from oaknet.auth import Authenticator, AuthError, issue_jwt
from oaknet.config import AuthConfig, ConfigError
from oaknet.web import view_roles
from tests.control.conftest import JWT_SECRET, app_routes, deploy_body

pytestmark = pytest.mark.control

PUBLIC = {"/api/health", "/metrics", "/api/openapi.json"}
SAMPLE_ARGS = {
    "job_id": "abc",
    "instance_number": "0",
    "job_name": "a_b_c_d",
    "service_name": "a_b_c_d",
    "service_ip": "10_30_0_1",
    "address": "10_18_0_0",
    "count": "1",
}


def routes(app):
    return app_routes(app, SAMPLE_ARGS)


def test_every_route_is_protected_unless_listed_public(root):
    app = root.app
    seen_public = set()
    checked = 0
    for rule, method, path in routes(app):
        roles = view_roles(app.view_functions[rule.endpoint])
        if roles is None:
            seen_public.add(rule.rule)
            continue
        url = root.url + path + "?timeout=0"  # the watch route must not long-poll here
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer not-a-known-token"}, 401),
            ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
            ({"Authorization": f"Bearer {issue_jwt('x' * 40, 'c1', ['admin'])}"}, 401),
            ({"Authorization": "Bearer tok-node"}, 403),  # a node token has no root role
        ):
            resp = requests.request(method, url, headers=headers, json={}, timeout=5)
            assert resp.status_code == status, (method, rule.rule, headers, resp.text)
            assert resp.json()["error"] in ("unauthorized", "forbidden")
            if status == 401:
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        ok = requests.request(
            method, url, headers={"Authorization": "Bearer tok-admin"}, json={}, timeout=5
        )
        assert ok.status_code not in (401, 403), (method, rule.rule, ok.text)
        checked += 1
    assert seen_public == PUBLIC
    assert checked >= 16


def test_roles_separate_orchestrator_and_clusters(root):
    denied = [
        (root.c1, "POST", "/api/net/service/deploy"),
        (root.c1, "POST", "/api/net/instance/deploy"),
        (root.c1, "DELETE", "/api/net/abc/0"),
        (root.reader, "GET", "/api/net/watch"),
        (root.orch, "GET", "/api/net/subnet"),
        (root.reader, "GET", "/api/net/service/a_b_c_d/instances"),
    ]
    for client, method, path in denied:
        resp = requests.request(
            method,
            root.url + path,
            json={},
            timeout=5,
            headers={"Authorization": f"Bearer {client._token}"},
        )
        assert resp.status_code == 403, (method, path)


def test_jwt_identifies_the_cluster(root):
    root.orch.post("/api/net/service/deploy", deploy_body("job1"))
    url = f"{root.url}/api/net/service/shop_default_web_default/instances"

    def get(token):
        return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)

    good = issue_jwt(JWT_SECRET, "c2", ["cluster"], ttl=60)
    assert get(good).status_code == 200
    assert root.state.clusters.interests("c2") == {"shop.default.web.default"}
    expired = issue_jwt(JWT_SECRET, "c2", ["cluster"], ttl=-120)
    assert get(expired).json()["detail"] == "token expired"
    forged = issue_jwt("another-secret-that-is-long-enough-xx", "c2", ["cluster"])
    assert get(forged).status_code == 401
    no_sub = jwt.encode({"exp": int(time.time()) + 60, "roles": ["cluster"]}, JWT_SECRET)
    assert get(no_sub).status_code == 401
    unregistered = issue_jwt(JWT_SECRET, "c77", ["cluster"])
    resp = get(unregistered)
    assert resp.status_code == 404 and resp.json()["field"] == "cluster_id"
    none_alg = jwt.encode(
        {"sub": "c2", "exp": int(time.time()) + 60, "roles": ["admin"]}, None, algorithm="none"
    )
    assert get(none_alg).status_code == 401


def test_rs256_tokens(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = tmp_path / "pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cfg = AuthConfig(
        jwt_algorithm="RS256",
        jwt_public_key_file=str(public),
        jwt_audience="oaknet",
        jwt_default_roles=["reader"],
    )
    cfg.validate()
    auth = Authenticator(cfg)
    token = issue_jwt(private, "sm", ["orchestrator"], algorithm="RS256", aud="oaknet")
    who = auth.authenticate(f"Bearer {token}")
    assert (who.subject, who.roles, who.method) == ("sm", frozenset({"orchestrator"}), "jwt")
    plain = jwt.encode(
        {"sub": "dash", "exp": int(time.time()) + 60, "aud": "oaknet"}, private, algorithm="RS256"
    )
    assert auth.authenticate(f"Bearer {plain}").roles == frozenset({"reader"})
    with pytest.raises(AuthError) as wrong_aud:
        auth.authenticate("Bearer " + issue_jwt(private, "sm", [], algorithm="RS256", aud="x"))
    assert wrong_aud.value.status == 401
    # An HS256 token signed with the public key must not pass as RS256 (algorithm confusion).
    with pytest.raises(AuthError):
        auth.authenticate(
            "Bearer "
            + jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "aud": "oaknet"}, "k" * 40)
        )


def test_auth_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="no credentials configured"):
        AuthConfig().validate()
    with pytest.raises(ConfigError, match="needs jwt_secret"):
        AuthConfig(jwt_algorithm="HS256").validate()
    with pytest.raises(ConfigError, match="a JWT key is set: say HS256 or RS256"):
        AuthConfig(
            tokens={"t": {"subject": "x", "roles": ["admin"]}}, jwt_secret="k" * 40
        ).validate()
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Authenticator(AuthConfig(jwt_algorithm="HS256", jwt_secret="short"))
    with pytest.raises(ConfigError, match="unknown role"):
        Authenticator(AuthConfig(tokens={"t": {"subject": "x", "roles": ["god"]}}))
