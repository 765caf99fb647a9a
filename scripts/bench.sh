#!/usr/bin/env bash
# oaknet's benchmarks (docs/benchmarks.md): installs what is missing, then runs them as root.
# Options go to the harness: --smoke, --only GROUP[,GROUP], --out PATH, --repeat N.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $(id -u) -ne 0 ]]; then
    echo "bench: needs root (network namespaces, OVS); try: sudo make bench" >&2
    exit 2
fi
"$repo/scripts/install.sh" nftables
venv="${OAKNET_VENV:-$repo/.venv}"
cd "$repo"
export PYTHONPATH="$repo/scripts:$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m bench "$@"
