#!/usr/bin/env bash
# The GPU machine side of the vLLM test (device tool; see tests/gpu/README.md).
# Runs from the repo root there, with this directory carried as .gpu/scripts and the bundle
# pieces made by prepare_vllm_bundle.py carried as .gpu/vllm/bundle.partNN, one call each.
#
#   bash .gpu/scripts/run_vllm_gpu.sh recv                 move carried pieces to /tmp/pieces
#   bash .gpu/scripts/run_vllm_gpu.sh setup                reassemble, install, wrapper, model
#   bash .gpu/scripts/run_vllm_gpu.sh case NAME [VAR=VAL...]   head + headless worker, measure
#
# `case` runs THE rendered launcher (.gpu/scripts/launcher.sbatch) as srun would on each node:
# `bash launcher.sbatch node` with SLURM_NODEID=0 (head) on the first half of the GPUs and
# SLURM_NODEID=1 (--headless worker) on the second half. Without a rendered launcher it starts
# the same `vllm serve` commands directly (DIRECT=1 in the results).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${ROOT:-/opt/hpcserve-gpu}
MODEL=${MODEL:-/tmp/tiny-llama}
MAKE_MODEL=${MAKE_MODEL:-$PWD/hpcserve/lab/scripts/make_model.py}
API_PORT=${API_PORT:-8000}
MASTER_PORT=${MASTER_PORT:-29500}
# NVLink multicast stays off on the device machines; flashinfer is not carried.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export PATH=$ROOT/bin:$PATH
: "${OUT:=/tmp/out}"
mkdir -p "$OUT"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

recv() {
    mkdir -p /tmp/pieces
    for p in .gpu/vllm/bundle.part*; do
        [[ -f $p ]] && mv -f "$p" /tmp/pieces/
    done
    ls -la /tmp/pieces
}

setup() {
    local t0=$SECONDS
    recv
    cat /tmp/pieces/bundle.part* >/tmp/vllm-bundle.tar || return 1
    (cd /tmp && sha256sum -c "$HERE/bundle.sha256") || { log "bundle checksum mismatch"; return 1; }
    rm -rf /tmp/vb && mkdir -p /tmp/vb && tar -xf /tmp/vllm-bundle.tar -C /tmp/vb && rm -f /tmp/vllm-bundle.tar
    rm -rf "$ROOT" && mkdir -p "$ROOT/site" "$ROOT/deps" "$ROOT/bin"
    python3 -m zipfile -e /tmp/vb/vllm-stripped.zip "$ROOT/site" || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$ROOT/deps" /tmp/vb/wheels/*.whl || return 1
    local py
    py=$(command -v python3)
    cat >"$ROOT/bin/vllm" <<WRAP
#!/bin/bash
export PYTHONPATH=$ROOT/site:$ROOT/deps\${PYTHONPATH:+:\$PYTHONPATH}
export VLLM_USE_FLASHINFER_SAMPLER=\${VLLM_USE_FLASHINFER_SAMPLER:-0}
exec $py -m vllm.entrypoints.cli.main "\$@"
WRAP
    chmod +x "$ROOT/bin/vllm"
    PYTHONPATH=$ROOT/site:$ROOT/deps python3 -c \
        'import importlib.metadata as m, torch, vllm; print("vllm", m.version("vllm"), "torch", torch.__version__, "nccl", torch.cuda.nccl.version())' \
        || return 1
    # the lab's tiny-model maker (carried with the checkout's hpcserve/), TP=2 x PP=2 shape
    python3 "$MAKE_MODEL" "$MODEL" --hidden-size 512 --intermediate-size 1408 --layers 4 \
        --heads 8 --kv-heads 4 --max-positions 4096 --dtype bfloat16 --vocab-multiple 64 \
        --seed 0 || return 1
    cp "$MODEL/config.json" "$OUT/tiny-model-config.json"
    log "setup done in $((SECONDS - t0)) s"
}

# GPUs per "node": half of the machine's GPUs each.
ngpu() { nvidia-smi -L | wc -l; }

start_node() {  # start_node K GPUS LOGFILE [VAR=VAL...] -> prints pid
    local k=$1 gpus=$2 logf=$3; shift 3
    local -a base=(env "$@" CUDA_VISIBLE_DEVICES="$gpus" SLURM_NODEID="$k" SLURM_PROCID="$k"
        SLURM_NNODES=2 SLURM_JOB_NUM_NODES=2 SLURM_JOB_ID=4242 NCCL_DEBUG=INFO
        HPCSERVE_HEAD_ADDR=127.0.0.1 HPCSERVE_API_PORT="$API_PORT"
        HPCSERVE_MASTER_PORT="$MASTER_PORT")
    if [[ -f $HERE/launcher.sbatch ]]; then
        setsid "${base[@]}" bash "$HERE/launcher.sbatch" node >"$logf.launcher" 2>&1 &
    else
        local -a argv=(vllm serve "$MODEL" --tensor-parallel-size "$TP" --pipeline-parallel-size 2
            --nnodes 2 --node-rank "$k" --master-addr 127.0.0.1 --master-port "$MASTER_PORT")
        if ((k == 0)); then argv+=(--host 0.0.0.0 --port "$API_PORT"); else argv+=(--headless); fi
        mkdir -p "$JOBDIR/nccl"
        setsid "${base[@]}" NCCL_DEBUG_FILE="$JOBDIR/nccl/node-$k.%h.%p.log" "${argv[@]}" \
            >"$JOBDIR/node-$k.log" 2>&1 &
    fi
    echo $!
}

stop_nodes() {
    local pid
    for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null; done
    for _ in $(seq 40); do
        local alive=0
        for pid in "$@"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.5
    done
    for pid in "$@"; do kill -KILL -- "-$pid" 2>/dev/null; done
    sleep 2
    # anything of ours still holding a GPU (started by this script on a machine we hold)
    nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | xargs -r kill -9
    sleep 1
}

run_case() {
    local name=$1; shift
    local n half g0 g1
    n=$(ngpu); half=$((n / 2))
    TP=$half
    g0=$(seq -s, 0 $((half - 1))); g1=$(seq -s, "$half" $((n - 1)))
    if [[ -f $HERE/launcher.sbatch ]]; then
        JOBDIR=$(sed -n 's/^JOBDIR=//p' "$HERE/launcher.sbatch" | head -1)
        JOBDIR=$(eval "printf '%s' $JOBDIR")
        DIRECT=0
    else
        JOBDIR=/tmp/hpcserve-jobs/direct
        DIRECT=1
    fi
    rm -rf "$JOBDIR" && mkdir -p "$JOBDIR"
    log "case $name: $n GPUs, TP=$TP PP=2, head GPUs $g0, worker GPUs $g1, direct=$DIRECT, env: $*"
    # Cold caches for every case, so that time to ready compares like with like.
    export VLLM_CACHE_ROOT=/tmp/cache-$name/vllm TRITON_CACHE_DIR=/tmp/cache-$name/triton
    local t0 p0 p1 rc
    t0=$(date +%s.%N)
    p0=$(start_node 0 "$g0" "$OUT/$name-node-0" "$@")
    p1=$(start_node 1 "$g1" "$OUT/$name-node-1" "$@")
    python3 "$HERE/vllm_client.py" --url "http://127.0.0.1:$API_PORT" --since "$t0" \
        --pids "$p0,$p1" --timeout "${READY_TIMEOUT:-300}" --out "$OUT/$name-result.json"
    rc=$?
    if ((rc == 0)) && [[ -d $HERE/hpcserve-net/hpcserve ]]; then
        log "case $name: hpcserve bench (net helper's CLI)"
        # from inside that tree: run from the repo root, `-m hpcserve` would find the
        # checkout's own (older) package first
        (cd "$HERE/hpcserve-net" && timeout 240 python3 -m hpcserve bench \
            --url "http://127.0.0.1:$API_PORT" --concurrency 1 --concurrency 16 \
            --num-prompts 64 --input-len 128 --output-len 128 --json \
            >"$OUT/$name-hpcserve-bench.json" 2>"$JOBDIR/hpcserve-bench.err")
        log "case $name: hpcserve bench rc=$?"
        cp "$OUT/$name-hpcserve-bench.json" "$JOBDIR/"
    fi
    nvidia-smi --query-gpu=index,memory.used --format=csv >"$JOBDIR/nvidia-smi-at-end.csv" 2>&1
    stop_nodes "$p0" "$p1"
    cp "$OUT/$name-node-"*.launcher "$JOBDIR/" 2>/dev/null
    rm -f "$OUT/$name-node-"*.launcher
    printf '{"case": "%s", "env": "%s", "direct": %d, "tp": %d, "pp": 2, "gpus": %d}\n' \
        "$name" "$*" "$DIRECT" "$TP" "$n" >"$JOBDIR/case.json"
    tar -czf "$OUT/$name-jobdir.tar.gz" -C "$(dirname "$JOBDIR")" "$(basename "$JOBDIR")"
    log "case $name: client rc=$rc; node logs:"
    grep -hE 'KV cache|Available KV|ERROR|Error|Traceback' "$JOBDIR"/node-*.log | head -20
    tail -n 5 "$JOBDIR"/node-*.log
    cat "$OUT/$name-result.json"
    return $rc
}

cmd=${1:-}; shift || true
case $cmd in
    recv) recv ;;
    setup) setup ;;
    case) run_case "$@" ;;
    *) echo "usage: $0 recv | setup | case NAME [VAR=VAL...]" >&2; exit 2 ;;
esac
