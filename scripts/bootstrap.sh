# Sourced by scripts/demo.sh and scripts/test.sh: makes .venv with hpcserve installed from this
# checkout (a real `pip install .`, not editable) and puts it first on PATH.
# Installs the Debian packages the Python side needs when they are missing (python3-venv).
set -euo pipefail
HPCSERVE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$HPCSERVE_ROOT/.venv"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "== installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
echo "== installing hpcserve into $VENV ${HPCSERVE_EXTRAS:+(with $HPCSERVE_EXTRAS)}"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "$HPCSERVE_ROOT${HPCSERVE_EXTRAS:+[$HPCSERVE_EXTRAS]}" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
    "$HPCSERVE_ROOT" 2>&1 | grep -v '^WARNING: Location' || true
export PATH="$VENV/bin:$PATH"
