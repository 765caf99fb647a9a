"""The root manager's config: defaults < file < env < flags, checked at start."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from oaknet import config
from oaknet.client import Client
from oaknet.config import ConfigError
from root_manager.config import RootConfig
from tests.control.conftest import REPO, TOKENS, deploy_body
from tests.control.test_root_push import free_port

pytestmark = pytest.mark.control


def write(tmp_path, data, name="root.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_layers_override_in_order(tmp_path):
    path = write(
        tmp_path,
        {
            "server": {"threads": 10, "port": 12000},
            "auth": {"tokens": {"t": {"subject": "x", "roles": ["admin"]}}},
            "pools": {"service_v4": "10.40.0.0/16"},
        },
    )
    cfg = config.load(
        RootConfig,
        path,
        env={
            "OAKNET_SERVER_PORT": "13000",
            "OAKNET_STORE_URL": "sqlite:///tmp/x.db",
            "OAKNET_FEED_KEEP": "50",
        },
    )
    assert (cfg.server.port, cfg.server.threads, cfg.server.host) == (13000, 10, "::")
    assert (cfg.store.url, cfg.feed.keep, cfg.pools.service_v4) == (
        "sqlite:///tmp/x.db",
        50,
        "10.40.0.0/16",
    )
    cfg = config.load(
        RootConfig, path, env={"OAKNET_SERVER_PORT": "13000"}, overrides={"server.port": 14000}
    )
    assert cfg.server.port == 14000
    # A section given in the file keeps the root's own defaults for what it does not set.
    cfg = config.load(
        RootConfig,
        write(
            tmp_path,
            {"server": {"threads": 8}, "auth": {"tokens": {"secret-token-xyz": "admin-subject"}}},
        ),
        env={},
    )
    assert cfg.server.port == 10099
    assert "secret-token-xyz" not in str(config.to_dict(cfg))


@pytest.mark.parametrize(
    "data,env,message",
    [
        ({"server": {"prot": 1}}, {}, "config server.prot: unknown setting"),
        ({}, {"OAKNET_SERVER_PORT": "abc"}, "config server.port: 'abc' is not an integer"),
        ({"server": {"port": 70000}}, {}, "config server.port: 70000 is outside 0..65535"),
        ({"store": {"url": "postgres://x"}}, {}, "config store.url: must start with"),
        ({"pools": {"closest_v6": "fdff:2000::/24"}}, {}, "config pools.closest_v6: overlaps"),
        ({"auth": {"jwt_algorithm": "ES256"}}, {}, "config auth.jwt_algorithm: must be HS256"),
        ({"feed": {"max_timeout": 300}}, {}, "config feed.max_timeout"),
        ({"log_level": "LOUD"}, {}, "config log_level"),
        ({"push": {"retries": -1}}, {}, "config push.retries"),
    ],
)
def test_bad_settings_are_named(tmp_path, data, env, message):
    data = {"auth": {"tokens": {"t": "x"}}, **data} if "auth" not in data else data
    with pytest.raises(ConfigError) as err:
        config.load(RootConfig, write(tmp_path, data), env=env)
    assert str(err.value).startswith(message), str(err.value)


def test_the_process_refuses_a_bad_config_with_a_clear_message(tmp_path):
    path = write(tmp_path, {"server": {"port": 0}})  # no credentials at all
    out = subprocess.run(
        [sys.executable, "-m", "root_manager", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "root_manager: config auth: no credentials configured" in out.stderr


def test_gunicorn_with_two_workers_on_one_store(tmp_path):
    port = free_port()
    path = write(
        tmp_path,
        {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "server": "gunicorn",
                "workers": 2,
                "threads": 8,
                "port_file": str(tmp_path / "port"),
            },
            "store": {"url": f"sqlite:///{tmp_path}/root.db"},
            "auth": {"tokens": TOKENS},
            "log_level": "WARNING",
        },
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "root_manager", "--config", str(path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import time

        deadline = time.monotonic() + 20
        while not (tmp_path / "port").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        client = Client(
            f"http://127.0.0.1:{port}", token="tok-orchestrator", timeout=20, retries=3
        )
        with ThreadPoolExecutor(10) as pool:
            jobs = list(
                pool.map(
                    lambda i: client.post(
                        "/api/net/service/deploy", deploy_body(f"g{i}", app=f"g{i}")
                    ),
                    range(20),
                )
            )
        ips = [s["Address"] for j in jobs for s in j["service_ip_list"]]
        assert len(set(ips)) == 40
        assert client.get("/api/health")["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(15)
