#!/usr/bin/env bash
# README's main command: on a fresh Debian machine, as root, install what is missing, bring up the
# local SLURM lab and serve a model across two nodes with real vLLM, then query it through an SSH
# tunnel via the login node. Prints each step and the time of each phase.
# Usage: sudo scripts/demo.sh [--nodes N] [--prompt TEXT] [--down]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "error: scripts/demo.sh needs root: the local cluster installs packages and makes network namespaces" >&2
    exit 2
fi
source scripts/bootstrap.sh
exec python scripts/demo.py "$@"
