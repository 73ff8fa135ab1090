#!/usr/bin/env bash
# Runs on the GPU machine (device tool) from the repo root: doctor's probe through THE launcher,
# one "node" per call argument's count (default 1: NCCL on the one GPU). See doctor_probe.py.
set -u
: "${OUT:?OUT must be set}"
export FAKE_RECORD_DIR=/tmp/hpcserve-fake-record PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$FAKE_RECORD_DIR"
export PATH=$PWD/tests/fake_bin:$PATH
{ nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version())'; } >"$OUT/machine.txt" 2>&1
python3 tests/gpu/doctor_probe.py "${1:-1}" 2>&1 | tee "$OUT/doctor-probe.txt"
