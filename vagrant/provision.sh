#!/usr/bin/env bash
# Set up one VM of the Vagrant testbed as ROLE (root, cluster or worker): write its config from
# the examples in vagrant/config with the shared tokens, then install and start its systemd unit.
# The cluster manager registers at the root; a worker's agent runs in cluster mode against the
# cluster manager with its own node token (no static table, no configured subnets).
# Run after scripts/install.sh. With --configs-only it only writes the configs (no root needed).
#
# Settings (environment; the Vagrantfile passes them):
#   OAKNET_ROOT_IP, OAKNET_CLUSTER_IP   underlay addresses of the root and cluster VMs
#   OAKNET_WORKER_IPS                   the workers' addresses, space-separated, w1 first
#   OAKNET_NODE_IP                      this worker's address (role worker)
#   OAKNET_CLUSTER_ID                   the cluster's id at the root (default c1)
#   OAKNET_SECRETS                      the shared tokens (default vagrant/.secrets/tokens.env)
#   OAKNET_ETC                          where configs go (default /etc/oaknet)
#   OAKNET_VENV                         the project venv (default /opt/oaknet/venv)
set -euo pipefail

usage() { echo "usage: $0 root|cluster|worker [--configs-only]" >&2; exit 2; }
say() { printf '[provision] %s\n' "$*"; }

role="${1:-}"
[[ "$role" =~ ^(root|cluster|worker)$ ]] || usage
configs_only=0
if [[ "${2:-}" == "--configs-only" ]]; then configs_only=1; elif [[ -n "${2:-}" ]]; then usage; fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
examples="$here/config"
etc="${OAKNET_ETC:-/etc/oaknet}"
venv="${OAKNET_VENV:-/opt/oaknet/venv}"
python="$venv/bin/python"
secrets="${OAKNET_SECRETS:-$here/.secrets/tokens.env}"
root_ip="${OAKNET_ROOT_IP:-192.0.2.10}"
cluster_ip="${OAKNET_CLUSTER_IP:-192.0.2.11}"
read -r -a worker_ips <<<"${OAKNET_WORKER_IPS:-192.0.2.21 192.0.2.22}"
cluster_id="${OAKNET_CLUSTER_ID:-c1}"
service_user=oaknet

[[ -x "$python" ]] || { echo "no Python at $python: run scripts/install.sh first" >&2; exit 1; }

# -- tokens: one file shared by every VM (the Vagrantfile makes it once on the host) ----------
if [[ ! -f "$secrets" ]]; then
    # Only when run by hand without the Vagrantfile: the other VMs need this same file.
    say "no $secrets: generating one (copy it to the other VMs)"
    mkdir -p "$(dirname "$secrets")"
    new_token() { "$python" -c 'import secrets; print(secrets.token_hex(24))'; }
    (
        echo "OAKNET_ADMIN_TOKEN=$(new_token)"
        echo "OAKNET_CLUSTER_TOKEN=$(new_token)"
        for i in "${!worker_ips[@]}"; do
            echo "OAKNET_NODE_TOKEN_W$((i + 1))=$(new_token)"
        done
    ) >"$secrets.tmp"
    chmod 600 "$secrets.tmp"
    mv "$secrets.tmp" "$secrets"
fi
token() {
    # The value of KEY in the secrets file; only plain KEY=hex lines count (nothing is sourced).
    local value
    value="$(grep -E "^$1=[A-Za-z0-9_-]+$" "$secrets" | tail -n 1 | cut -d= -f2)"
    [[ -n "$value" ]] || { echo "$secrets has no $1" >&2; exit 1; }
    printf '%s' "$value"
}

# -- configs ------------------------------------------------------------------------------
# render EXAMPLE OUT JSON: the example YAML with dotted keys set from a JSON object.
render() {
    "$python" - "$1" "$2" "$3" <<'PY'
import json, os, sys
import yaml

src, dst, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = yaml.safe_load(open(src, encoding="utf-8"))
for dotted, value in overrides.items():
    node = data
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
fd = os.open(dst + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
with os.fdopen(fd, "w", encoding="utf-8") as out:
    out.write(f"# Written by vagrant/provision.sh from {os.path.basename(src)}.\n")
    yaml.safe_dump(data, out, sort_keys=False)
os.replace(dst + ".tmp", dst)
PY
}

mkdir -p "$etc"
admin_token="$(token OAKNET_ADMIN_TOKEN)"
cluster_token="$(token OAKNET_CLUSTER_TOKEN)"
case "$role" in
root)
    config="$etc/root.yaml"
    render "$examples/root.example.yaml" "$config" "$(cat <<JSON
{"auth.tokens": {"$admin_token": {"subject": "admin", "roles": ["admin"]},
                 "$cluster_token": {"subject": "$cluster_id", "roles": ["cluster"]}}}
JSON
)"
    unit=oaknet-root
    ;;
cluster)
    config="$etc/cluster.yaml"
    nodes=""
    for i in "${!worker_ips[@]}"; do
        n=$((i + 1))
        nodes+=", \"$(token "OAKNET_NODE_TOKEN_W$n")\":"
        nodes+=" {\"subject\": \"w$n\", \"roles\": [\"node\"]}"
    done
    render "$examples/cluster.example.yaml" "$config" "$(cat <<JSON
{"cluster_id": "$cluster_id",
 "auth.tokens": {"$admin_token": {"subject": "admin", "roles": ["admin"]}$nodes},
 "root.url": "http://$root_ip:10099", "root.token": "$cluster_token",
 "root.advertise_address": "$cluster_ip", "root.advertise_port": 10110}
JSON
)"
    unit=oaknet-cluster
    ;;
worker)
    node_ip="${OAKNET_NODE_IP:?set OAKNET_NODE_IP to the address of this worker}"
    index=-1
    for i in "${!worker_ips[@]}"; do
        if [[ "${worker_ips[$i]}" == "$node_ip" ]]; then
            index=$i
        fi
    done
    ((index >= 0)) || { echo "OAKNET_NODE_IP $node_ip is not in OAKNET_WORKER_IPS" >&2; exit 2; }
    node_id="w$((index + 1))"
    # The node's token at the cluster manager (which maps it to this node id): only root
    # (the agent) reads it. Cluster mode: the cluster hands out the subnets and the table.
    token_file="$etc/node.token"
    (umask 077; token "OAKNET_NODE_TOKEN_W$((index + 1))" >"$token_file.tmp")
    printf '\n' >>"$token_file.tmp"
    mv "$token_file.tmp" "$token_file"
    config="$etc/agent.yaml"
    render "$examples/agent.example.yaml" "$config" "$(cat <<JSON
{"node_id": "$node_id", "node_ip": "$node_ip", "cluster_url": "http://$cluster_ip:10110",
 "node_token_file": "$token_file"}
JSON
)"
    unit=oaknet-agent
    ;;
esac
say "wrote $config"
if ((configs_only)); then
    exit 0
fi

# -- system: service user, CLI, unit --------------------------------------------------------
if ! getent passwd "$service_user" >/dev/null; then
    useradd --system --no-create-home --home-dir /var/lib/oaknet --shell /usr/sbin/nologin \
        "$service_user"
fi
chgrp "$service_user" "$config"
umask 077
printf '%s\n' "$admin_token" >"$etc/admin.token"
umask 022
ln -sf "$venv/bin/oaknet" /usr/local/bin/oaknet
case "$role" in
root) url="http://127.0.0.1:10099" ;;
cluster) url="http://127.0.0.1:10110" ;;
worker) url="http://$root_ip:10099" ;;
esac
printf 'export OAKNET_URL=%s\n' "$url" >/etc/profile.d/oaknet.sh

if [[ "$role" == worker ]]; then
    # The agent programs this VM's own Open vSwitch (the distribution's service).
    systemctl enable --now openvswitch-switch.service
fi
install -m 0644 "$here/systemd/$unit.service" "/etc/systemd/system/$unit.service"
systemctl daemon-reload
systemctl enable "$unit.service"
systemctl restart "$unit.service"
sleep 2
if ! systemctl is-active --quiet "$unit.service"; then
    journalctl -u "$unit.service" -n 30 --no-pager >&2 || true
    echo "$unit did not start" >&2
    exit 1
fi
say "$unit running; try: sudo OAKNET_TOKEN=\$(sudo cat $etc/admin.token) oaknet ..."
