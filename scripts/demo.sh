#!/usr/bin/env bash
# The oaknet demo on the namespace testbed: installs what is missing, then runs it as root.
# Options go to the demo: --keep leaves the testbed up (`oaknet testbed down` removes it).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $(id -u) -ne 0 ]]; then
    echo "demo: needs root (network namespaces, OVS); try: sudo make demo" >&2
    exit 2
fi
"$repo/scripts/install.sh"
venv="${OAKNET_VENV:-$repo/.venv}"
cd "$repo"
export PYTHONPATH="$repo/scripts:$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m demo "$@"
