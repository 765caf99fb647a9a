#!/usr/bin/env bash
# Install what oaknet needs on a Debian 12 machine: system packages and a project venv (.venv).
# Usage: install.sh [EXTRA_APT_PACKAGE...]   (the test run adds the tools only tests use)
# Safe to run again: it only installs what is missing. Needs root for the apt step.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OAKNET_VENV:-$repo/.venv}"
apt_packages=(openvswitch-switch iproute2 ethtool iperf3 iputils-ping python3-venv curl "$@")

say() { printf '[install] %s\n' "$*"; }

missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "system packages present"
fi

# The distribution starts a system-wide OVS on install; oaknet runs one OVS per node with its own
# run directory, so the system one is not needed (and the kernel module may not exist).
python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
    say "creating venv $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.oaknet-installed"
if [[ ! -f "$stamp" || "$repo/pyproject.toml" -nt "$stamp" ]]; then
    say "installing oaknet and its Python dependencies into $venv"
    log="$venv/pip-install.log"
    if ! "$venv/bin/pip" install -e "${repo}[test]" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        say "pip install failed; full log: $log"
        exit 1
    fi
    touch "$stamp"
else
    say "python packages present"
fi
say "ready: $venv/bin/oaknet"
