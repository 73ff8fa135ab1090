#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repo root holding .gpu/nccl_probe.py.
# Three runs of the probe with NCCL_DEBUG=INFO, one process per GPU: default (P2P),
# NCCL_P2P_DISABLE=1 (SHM), and P2P+SHM+IB disabled (NET/Socket). Full output -> $OUT/<name>.log.
set -u
: "${OUT:?OUT must be set}"
PROBE=${PROBE:-.gpu/nccl_probe.py}
# NVLink multicast stays off (device tool rule).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
NGPU=$(nvidia-smi -L | wc -l)
{
  date -u; uname -r; nvidia-smi; nvidia-smi topo -m
  python3 -c 'import torch, sys; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version())'
  python3 -m pip show nvidia-nccl-cu13 2>/dev/null | head -3
} >"$OUT/machine.txt" 2>&1
python3 -m pip list --format=freeze >"$OUT/pip-freeze.txt" 2>&1

probe() {
  local name=$1; shift
  local t0=$SECONDS
  env "$@" NCCL_DEBUG=INFO python3 -m torch.distributed.run --standalone --nproc-per-node "$NGPU" "$PROBE" \
    >"$OUT/$name.log" 2>&1
  echo "$name: rc=$? ${NGPU} ranks $((SECONDS - t0)) s; $(grep -h '^probe:' "$OUT/$name.log" | tr '\n' ' ')"
}
probe p2p
probe shm NCCL_P2P_DISABLE=1
probe socket NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1
ls -la "$OUT"
