#!/usr/bin/env bash
# Run the default test suite (unit, control, dataplane, e2e) after installing what is missing.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/install.sh" shellcheck nftables
venv="${OAKNET_VENV:-$repo/.venv}"
echo "[test] running pytest $*"
cd "$repo"
exec "$venv/bin/python" -m pytest "$@"
