#!/usr/bin/env bash
# README's test command: on a fresh Debian machine, as root, install everything the tests need and
# run the whole suite: lint, types, unit tests and the real local-cluster tests (SLURM + sshd + vLLM).
# Usage: sudo scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "error: scripts/test.sh needs root: the local cluster installs packages and makes network namespaces" >&2
    exit 2
fi
t0=$SECONDS
need=()
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
HPCSERVE_EXTRAS=dev source scripts/bootstrap.sh
echo "== ruff, mypy"
ruff check hpcserve tests bench
ruff format --check hpcserve tests bench
mypy hpcserve
echo "== pytest (the cluster tests bring the local lab up themselves and take it down after)"
export HPCSERVE_REQUIRE_CLUSTER=1
set +e
python -m pytest -p no:cacheprovider -ra "$@"
rc=$?
set -e
echo "== scripts/test.sh finished in $((SECONDS - t0)) s with exit code $rc"
exit $rc
