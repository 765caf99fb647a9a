"""The Vagrant testbed's files: Vagrantfile, provisioning scripts, systemd units, configs."""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_manager.config import ClusterConfig
from oaknet import config as oaknet_config
from root_manager.config import RootConfig
from sdn import config as agent_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
SCRIPTS = [VAGRANT / "provision.sh", REPO / "scripts" / "install.sh"]
UNITS = {
    "oaknet-root.service": ("root_manager", "/etc/oaknet/root.yaml"),
    "oaknet-cluster.service": ("cluster_manager", "/etc/oaknet/cluster.yaml"),
    "oaknet-agent.service": ("sdn", "/etc/oaknet/agent.yaml"),
}
VENV = Path(sys.executable).parent.parent  # the venv running the tests has bin/python


# -- Vagrantfile ---------------------------------------------------------------------------


def test_vagrantfile_has_the_testbed_shape():
    text = (VAGRANT / "Vagrantfile").read_text()
    assert 'Vagrant.configure("2") do |config|' in text
    assert 'ENV.fetch("OAKNET_BOX", "debian/bookworm64")' in text
    # Every block opened is closed (a check that needs no Ruby).
    opened = len(re.findall(r"\bdo\b(\s*\|[^|]*\|)?\s*$", text, re.MULTILINE))
    opened += len(re.findall(r"^\s*(unless|if|def|class|module)\b", text, re.MULTILINE))
    closed = len(re.findall(r"^\s*end\s*$", text, re.MULTILINE))
    assert opened == closed
    # Addresses are settings with documentation-range defaults.
    net = re.search(r'ENV.fetch\("OAKNET_NET", "([\d.]+)"\)', text).group(1)
    assert ipaddress.ip_address(f"{net}.10") in ipaddress.ip_network("192.0.2.0/24")
    for role in ("root", "cluster", "worker"):
        assert f'"{role}"' in text
    # The provisioners run scripts that exist, from the copied tree.
    for path in re.findall(r"#\{REPO_IN_VM\}/([\w./-]+\.sh)", text):
        assert (REPO / path).is_file(), path
    assert "scripts/install.sh" in text and "vagrant/provision.sh" in text


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_vagrantfile_is_valid_ruby():
    out = subprocess.run(
        ["ruby", "-c", str(VAGRANT / "Vagrantfile")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "Syntax OK" in out.stdout, out.stderr


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrant_loads_the_vagrantfile_and_lists_the_machines(tmp_path):
    # A copy: loading the Vagrantfile makes the shared tokens next to it.
    work = tmp_path / "vagrant"
    shutil.copytree(VAGRANT, work, ignore=shutil.ignore_patterns(".secrets", ".vagrant"))
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "VAGRANT_HOME": str(tmp_path / ".vagrant.d"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "OAKNET_WORKERS": "3",
    }
    out = subprocess.run(
        ["vagrant", "validate"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        ["vagrant", "status"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    machines = re.findall(r"^(oaknet-\S+)\s+not created", out.stdout, re.MULTILINE)
    assert machines == ["oaknet-root", "oaknet-cluster", "oaknet-w1", "oaknet-w2", "oaknet-w3"], (
        out.stdout + out.stderr
    )
    secrets = (work / ".secrets" / "tokens.env").read_text().split()
    assert [s.split("=")[0] for s in secrets] == [
        "OAKNET_ADMIN_TOKEN",
        "OAKNET_CLUSTER_TOKEN",
        "OAKNET_NODE_TOKEN_W1",
        "OAKNET_NODE_TOKEN_W2",
        "OAKNET_NODE_TOKEN_W3",
    ]
    assert oct((work / ".secrets" / "tokens.env").stat().st_mode & 0o777) == "0o600"


# -- scripts -------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert os.access(script, os.X_OK)


SHELLCHECKED = [
    VAGRANT / "provision.sh",
    *sorted((REPO / "scripts").glob("*.sh")),
    REPO / ".ci" / "run",
]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SHELLCHECKED, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    out = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout


# -- systemd units -------------------------------------------------------------------------


@pytest.mark.parametrize(("unit", "expected"), list(UNITS.items()))
def test_units_run_the_real_services(unit, expected):
    module, config = expected
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(VAGRANT / "systemd" / unit)
    assert parser["Unit"]["Description"]
    assert "network-online.target" in parser["Unit"]["After"]
    service = parser["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/oaknet/venv/bin/python"
    assert argv[1:3] == ["-m", module]
    assert (REPO / module / "__main__.py").is_file()
    assert argv[3:] == ["--config", config]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a config error: no restart loop
    assert service["StateDirectory"] == "oaknet"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    if module == "sdn":
        # The agent needs the node's OVS and root; its socket lives in /run/oaknet.
        assert "openvswitch-switch.service" in parser["Unit"]["Requires"]
        assert "User" not in service
        assert service["RuntimeDirectory"] == "oaknet"
    else:
        assert (service["User"], service["Group"]) == ("oaknet", "oaknet")


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
@pytest.mark.parametrize("unit", list(UNITS))
def test_units_pass_systemd_analyze(unit):
    out = subprocess.run(
        ["systemd-analyze", "verify", str(VAGRANT / "systemd" / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The venv and the service user exist only on a provisioned VM.
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.strip() and "/opt/oaknet/venv/bin/python" not in line
    ]
    assert problems == []


# -- configs -------------------------------------------------------------------------------


def test_example_configs_load_through_the_services_loaders(tmp_path):
    examples = VAGRANT / "config"
    root = oaknet_config.load(RootConfig, examples / "root.example.yaml", env={})
    cluster = oaknet_config.load(ClusterConfig, examples / "cluster.example.yaml", env={})
    token = tmp_path / "node.token"
    token.write_text("example-node-token-w1\n")
    agent = agent_config.load(
        str(examples / "agent.example.yaml"), {"node_token_file": str(token)}, env={}
    )
    agent.validate()
    assert (root.server.port, cluster.server.port) == (10099, 10110)
    assert cluster.root.url == "http://192.0.2.10:10099"
    assert root.auth.tokens[cluster.root.token]["subject"] == cluster.cluster_id
    # The agent follows the cluster manager (cluster mode) as the node its token names there.
    assert agent.cluster_mode and agent.cluster_url == "http://192.0.2.11:10110"
    assert agent.cluster_url.endswith(f":{cluster.server.port}")
    assert cluster.auth.tokens[agent.read_token()] == {"subject": agent.node_id, "roles": ["node"]}
    assert (agent.subnet_v4, agent.service_table, agent.peers) == (None, None, ())
    assert agent.node_ip == "192.0.2.21" and agent.datapath_type == "system"
    assert not (examples / "services.example.yaml").exists()  # no static table any more


def provision(tmp_path: Path, role: str, **env: str) -> subprocess.CompletedProcess:
    """``vagrant/provision.sh ROLE --configs-only`` writing into ``tmp_path``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OAKNET_")}
    environ.update(
        OAKNET_ETC=str(tmp_path / "etc" / env.pop("subdir", "")),
        OAKNET_VENV=str(VENV),
        OAKNET_SECRETS=str(tmp_path / "tokens.env"),
        OAKNET_WORKER_IPS="192.0.2.21 192.0.2.22 192.0.2.23",
        **env,
    )
    return subprocess.run(
        ["bash", str(VAGRANT / "provision.sh"), role, "--configs-only"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_provision_writes_configs_that_fit_together(tmp_path):
    (tmp_path / "tokens.env").write_text(
        "OAKNET_ADMIN_TOKEN=adm1n\nOAKNET_CLUSTER_TOKEN=c1tok\n"
        "OAKNET_NODE_TOKEN_W1=n1tok\nOAKNET_NODE_TOKEN_W2=n2tok\nOAKNET_NODE_TOKEN_W3=n3tok\n"
    )
    for role, env in (
        ("root", {}),
        ("cluster", {}),
        ("worker", {"OAKNET_NODE_IP": "192.0.2.21", "subdir": "w1"}),
        ("worker", {"OAKNET_NODE_IP": "192.0.2.23", "subdir": "w3"}),
    ):
        out = provision(tmp_path, role, **env)
        assert out.returncode == 0, out.stderr
    etc = tmp_path / "etc"
    root = oaknet_config.load(RootConfig, etc / "root.yaml", env={})
    cluster = oaknet_config.load(ClusterConfig, etc / "cluster.yaml", env={})
    w1 = agent_config.load(str(etc / "w1" / "agent.yaml"), env={})
    w3 = agent_config.load(str(etc / "w3" / "agent.yaml"), env={})

    assert root.auth.tokens == {
        "adm1n": {"subject": "admin", "roles": ["admin"]},
        "c1tok": {"subject": "c1", "roles": ["cluster"]},
    }
    assert cluster.root.token == "c1tok" and cluster.cluster_id == "c1"
    assert cluster.root.advertise_address == "192.0.2.11"
    assert {t: s["subject"] for t, s in cluster.auth.tokens.items()} == {
        "adm1n": "admin",
        "n1tok": "w1",
        "n2tok": "w2",
        "n3tok": "w3",
    }
    # Each agent: cluster mode against the cluster VM, as the node its token names there.
    for agent, name, ip in ((w1, "w1", "192.0.2.21"), (w3, "w3", "192.0.2.23")):
        agent.validate()
        assert agent.cluster_mode and agent.cluster_url == "http://192.0.2.11:10110"
        assert (agent.node_id, agent.node_name, agent.node_ip) == (name, name, ip)
        assert agent.node_token_file == str(etc / name / "node.token")
        assert cluster.auth.tokens[agent.read_token()]["subject"] == agent.node_id
        assert (agent.subnet_v4, agent.subnet_v6, agent.service_table) == (None, None, None)
        assert os.stat(agent.node_token_file).st_mode & 0o077 == 0
    assert not (etc / "w3" / "services.yaml").exists()
    # Configs hold tokens: not world-readable.
    assert (etc / "root.yaml").stat().st_mode & 0o007 == 0


def test_provision_refuses_what_it_cannot_do(tmp_path):
    (tmp_path / "tokens.env").write_text("OAKNET_ADMIN_TOKEN=x\nOAKNET_CLUSTER_TOKEN=y\n")
    out = provision(tmp_path, "gateway")
    assert out.returncode == 2 and "usage:" in out.stderr
    out = provision(tmp_path, "worker", OAKNET_NODE_IP="192.0.2.99")
    assert out.returncode == 2 and "192.0.2.99 is not in OAKNET_WORKER_IPS" in out.stderr
    out = provision(tmp_path, "cluster")  # the tokens file lacks the nodes' tokens
    assert out.returncode == 1 and "has no OAKNET_NODE_TOKEN_W1" in out.stderr
