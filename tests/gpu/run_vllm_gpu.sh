#!/usr/bin/env bash
# The GPU machine side of the vLLM test (device tool; see tests/gpu/README.md).
# Runs from the repo root there, with this directory carried as .gpu/scripts and the bundle
# pieces made by prepare_vllm_bundle.py carried as .gpu/vllm/bundle.partNN, one call each.
#
#   bash .gpu/scripts/run_vllm_gpu.sh recv                 move carried pieces to /tmp/pieces
#   bash .gpu/scripts/run_vllm_gpu.sh setup                reassemble, install, wrapper, model
#   bash .gpu/scripts/run_vllm_gpu.sh case NAME [VAR=VAL...]   head + headless worker, measure
#
# `case` renders THE launcher with the carried hpcserve (.gpu/scripts/pkg: hpcserve/,
# templates/, site_configs/) and runs it as srun would on each node: `bash launcher.sbatch node`
# with SLURM_NODEID=0 (head) on the first half of the GPUs and SLURM_NODEID=1 (--headless
# worker) on the second half; waits with hpcserve's own wait loop (wait_ready.py), sends a chat
# (vllm_client.py) and runs `hpcserve bench --url`. Without pkg/ it uses a launcher.sbatch put
# next to this script, or else starts the same `vllm serve` commands directly (DIRECT=1).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${ROOT:-/opt/hpcserve-gpu}
MODEL=${MODEL:-/tmp/tiny-llama}
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
    # optional loaders carried beside the scripts (fastsafetensors, runai-model-streamer, ...)
    if compgen -G "$HERE/extra/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target "$ROOT/deps" "$HERE"/extra/*.whl || return 1
        log "extra wheels: $(cd "$HERE/extra" && echo *.whl)"
    fi
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
    python3 "$HERE/make_tiny_model.py" "$MODEL" || return 1
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

# The carried hpcserve checkout (hpcserve/, templates/, site_configs/): run from inside it, so
# that the repo root's own package (whatever /work/main held) never shadows it.
PKG=$HERE/pkg
hpcserve_pkg() { (cd "$PKG" && python3 -m hpcserve "$@"); }

# THE launcher, rendered there by the carried (current) hpcserve for site.yaml.
render_launcher() {
    [[ -d $PKG/hpcserve ]] || return 0
    local n half
    n=$(ngpu); half=$((n / 2))
    sed "s/^  gpus: [0-9]*/  gpus: $half/" "$HERE/site.yaml" >/tmp/gpu-site.yaml
    hpcserve_pkg render --site /tmp/gpu-site.yaml --nodes 2 --model "$MODEL" \
        --job-dir /tmp/hpcserve-jobs/gpu-test --name gpu-test --no-api-key \
        >"$HERE/launcher.sbatch" || return 1
    log "rendered launcher.sbatch with the carried hpcserve (node.gpus $half)"
}

run_case() {
    local name=$1; shift
    local n half g0 g1
    n=$(ngpu); half=$((n / 2))
    TP=$half
    g0=$(seq -s, 0 $((half - 1))); g1=$(seq -s, "$half" $((n - 1)))
    render_launcher || { log "hpcserve render failed"; return 1; }
    if [[ -f $HERE/launcher.sbatch ]]; then
        JOBDIR=$(sed -n 's/^JOBDIR=//p' "$HERE/launcher.sbatch" | head -1)
        JOBDIR=$(eval "printf '%s' $JOBDIR")
        DIRECT=0
    else
        JOBDIR=/tmp/hpcserve-jobs/direct
        DIRECT=1
    fi
    rm -rf "$JOBDIR" && mkdir -p "$JOBDIR"
    [[ -f $HERE/launcher.sbatch ]] && cp "$HERE/launcher.sbatch" "$JOBDIR/"
    log "case $name: $n GPUs, TP=$TP PP=2, head GPUs $g0, worker GPUs $g1, direct=$DIRECT, env: $*"
    # Cold caches for every case, so that time to ready compares like with like.
    export VLLM_CACHE_ROOT=/tmp/cache-$name/vllm TRITON_CACHE_DIR=/tmp/cache-$name/triton
    local t0 p0 p1 rc
    t0=$(date +%s.%N)
    p0=$(start_node 0 "$g0" "$OUT/$name-node-0" "$@")
    p1=$(start_node 1 "$g1" "$OUT/$name-node-1" "$@")
    if [[ -d $PKG/hpcserve ]]; then
        # readiness as `hpcserve wait` does it: hpcserve's own loop, phases, /health every 0.25 s
        PYTHONPATH=$PKG python3 "$HERE/wait_ready.py" --job-dir "$JOBDIR" \
            --url "http://127.0.0.1:$API_PORT" --since "$t0" --pids "$p0,$p1" --model "$MODEL" \
            --tp "$TP" --timeout "${READY_TIMEOUT:-300}" --out "$JOBDIR/wait.json"
        rc=$?
        log "case $name: wait rc=$rc"
    else
        rc=0
    fi
    if ((rc == 0)); then
        # one chat + idle first-token latency (stdlib client); throughput is hpcserve bench's
        python3 "$HERE/vllm_client.py" --url "http://127.0.0.1:$API_PORT" --since "$t0" \
            --pids "$p0,$p1" --timeout "${READY_TIMEOUT:-300}" --requests "${CLIENT_REQUESTS:-0}" \
            --out "$JOBDIR/client.json"
        rc=$?
    fi
    if ((rc == 0)) && [[ -d $PKG/hpcserve ]]; then
        log "case $name: hpcserve bench --url"
        # a bench that hangs must not eat the call (timeout, not a background sleep: a
        # leftover sleep would hold the caller's output pipe open until it ends)
        local brc
        (cd "$PKG" && timeout "${BENCH_TIMEOUT:-180}" python3 -m hpcserve bench \
            --url "http://127.0.0.1:$API_PORT" --concurrency 1 --concurrency 16 \
            --num-prompts 64 --input-len 128 --output-len 128 --json \
            >"$JOBDIR/bench.json" 2>"$JOBDIR/bench.err")
        brc=$?
        log "case $name: hpcserve bench rc=$brc"
        tr '\r' '\n' <"$JOBDIR/bench.err" | grep -v '^c=[0-9]* \[' | tail -n 20
        python3 - "$JOBDIR/bench.json" <<'PY' || true
import json, sys
data = json.load(open(sys.argv[1]))
for r in data if isinstance(data, list) else [data]:
    keys = ("max_concurrency", "completed", "output_throughput", "request_throughput",
            "median_ttft_ms", "median_tpot_ms", "median_itl_ms")
    print("bench:", {k: r.get(k) for k in keys})
PY
    fi
    nvidia-smi --query-gpu=index,memory.used --format=csv >"$JOBDIR/nvidia-smi-at-end.csv" 2>&1
    stop_nodes "$p0" "$p1"
    cp "$OUT/$name-node-"*.launcher "$JOBDIR/" 2>/dev/null
    rm -f "$OUT/$name-node-"*.launcher
    printf '{"case": "%s", "env": "%s", "direct": %d, "tp": %d, "pp": 2, "gpus": %d, "started": %s}\n' \
        "$name" "$*" "$DIRECT" "$TP" "$n" "$t0" >"$JOBDIR/case.json"
    tar -czf "$OUT/$name-jobdir.tar.gz" -C "$(dirname "$JOBDIR")" "$(basename "$JOBDIR")"
    log "case $name: rc=$rc; node logs:"
    grep -hE 'KV cache|Available KV|ERROR|Error|Traceback' "$JOBDIR"/node-*.log | head -20
    tail -n 3 "$JOBDIR"/node-*.log
    cat "$JOBDIR/client.json" 2>/dev/null
    return $rc
}

cmd=${1:-}; shift || true
case $cmd in
    recv) recv ;;
    setup) setup ;;
    case) run_case "$@" ;;
    *) echo "usage: $0 recv | setup | case NAME [VAR=VAL...]" >&2; exit 2 ;;
esac
