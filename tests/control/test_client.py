"""The HTTP client: bearer token, retries on 502/503/504 and dead servers, clear errors."""

import pytest
from flask import Flask, jsonify

from oaknet.client import Client, ClientError, Unavailable
from oaknet.config import ServerConfig
from oaknet.serving import ServerThread
from tests.control.test_root_push import free_port

pytestmark = pytest.mark.control


@pytest.fixture
def flaky():
    app = Flask("flaky")
    calls = {"n": 0}

    @app.route("/flaky", methods=["GET", "POST"])
    def flaky_route():
        calls["n"] += 1
        if calls["n"] < 3:
            return jsonify(error="busy", detail="try again", field=None), 503
        return jsonify(ok=calls["n"])

    @app.get("/bad")
    def bad():
        return jsonify(error="invalid input", detail="x is wrong", field="x"), 400

    @app.get("/plain")
    def plain():
        return "teapot", 418

    srv = ServerThread(app, ServerConfig(host="127.0.0.1", port=0, threads=4)).start()
    yield f"http://127.0.0.1:{srv.port}", calls
    srv.stop()


def test_retries_idempotent_calls_only(flaky):
    url, calls = flaky
    client = Client(url, token="t", retries=3, backoff=0.01)
    assert client.get("/flaky") == {"ok": 3}
    calls["n"] = 0
    with pytest.raises(ClientError) as once:
        client.post("/flaky", {})  # a POST is not repeated unless it says it is idempotent
    assert once.value.status == 503 and calls["n"] == 1
    calls["n"] = 0
    assert client.post("/flaky", {}, idempotent=True) == {"ok": 3}


def test_errors_carry_the_server_fields(flaky):
    url, _ = flaky
    client = Client(url, retries=0)
    with pytest.raises(ClientError) as bad:
        client.get("/bad")
    assert (bad.value.status, bad.value.error, bad.value.detail, bad.value.field) == (
        400,
        "invalid input",
        "x is wrong",
        "x",
    )
    assert "GET" in str(bad.value) and "/bad -> 400" in str(bad.value)
    with pytest.raises(ClientError) as plain:
        client.get("/plain")
    assert plain.value.status == 418 and plain.value.detail == "teapot"


def test_a_dead_server_is_unavailable_after_the_retries():
    client = Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    with pytest.raises(Unavailable, match="after 3 attempts"):
        client.get("/api/health")
