#!/usr/bin/env bash
# GPU side of issue 5's check: ONE vllm serve (TP=1, PP=1) on GPU 0, then `vllm bench serve` and
# `hpcserve bench` alternating on it, as bench/compare_vllm_bench.sh does. Run after
# `run_vllm_gpu.sh setup`. Results: $OUT/results.tar.gz (JSONs, txt, serve.log), $OUT/table.md.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=/opt/hpcserve-gpu MODEL=/tmp/tiny-llama URL=http://127.0.0.1:8000 VLLM=/opt/hpcserve-gpu/bin/vllm
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
: "${OUT:=/tmp/out}"
R=/tmp/cmp; rm -rf "$R"; mkdir -p "$R"
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
(umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >/tmp/key)
t0=$SECONDS
# key from the environment only (not in argv)
VLLM_API_KEY=$(cat /tmp/key) CUDA_VISIBLE_DEVICES=0 setsid "$VLLM" serve "$MODEL" \
  --served-model-name tiny --tensor-parallel-size 1 --pipeline-parallel-size 1 \
  --host 127.0.0.1 --port 8000 >"$R/serve.log" 2>&1 </dev/null &
SP=$!
ok=0
for _ in $(seq 480); do
  kill -0 "$SP" 2>/dev/null || break
  if python3 -c "import urllib.request as u; u.urlopen('$URL/health', timeout=1)" 2>/dev/null; then ok=1; break; fi
  sleep 0.5
done
log "server ready=$ok after $((SECONDS - t0)) s"
if ((ok)); then
  export OPENAI_API_KEY=$(cat /tmp/key)
  (cd "$HERE/pkg" && timeout 120 python3 -m hpcserve bench --url "$URL" --api-key-file /tmp/key \
     --concurrency 8 --num-prompts 16 --input-len 32 --output-len 64 --json >"$R/warmup.json" 2>"$R/warmup.err")
  log "warmup rc=$?"
  for round in 1 2; do for C in 1 8; do N=$([ "$C" = 1 ] && echo 8 || echo 32)
    timeout 150 "$VLLM" bench serve --backend openai-chat --endpoint /v1/chat/completions --base-url "$URL" \
      --model tiny --tokenizer "$MODEL" --dataset-name random --random-input-len 32 \
      --random-output-len 64 --num-prompts "$N" --max-concurrency "$C" --ignore-eos \
      --percentile-metrics ttft,tpot,itl,e2el --save-result --save-detailed --result-dir "$R" \
      --result-filename "vllm-r$round-c$C.json" >"$R/vllm-r$round-c$C.txt" 2>&1
    log "vllm r$round c$C rc=$?"; tail -n 3 "$R/vllm-r$round-c$C.txt"
    (cd "$HERE/pkg" && timeout 120 python3 -m hpcserve bench --url "$URL" --api-key-file /tmp/key \
      --concurrency "$C" --num-prompts "$N" --input-len 32 --output-len 64 --json \
      >"$R/hpc-r$round-c$C.json" 2>"$R/hpc-r$round-c$C.err")
    log "hpcserve r$round c$C rc=$?"
  done; done
fi
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv >"$R/nvidia-smi.csv" 2>&1
cat /proc/loadavg >"$R/loadavg.txt"; nproc >>"$R/loadavg.txt"
kill -TERM -- "-$SP" 2>/dev/null; sleep 3; kill -KILL -- "-$SP" 2>/dev/null
grep -hE 'ERROR|Traceback|Error' "$R/serve.log" | head -10
python3 - "$R" <<'PY' | tee "$OUT/table.md"
import json, sys
out = sys.argv[1]
keys = ["completed", "total_input_tokens", "total_output_tokens", "request_throughput",
        "output_throughput", "total_token_throughput", "mean_ttft_ms", "median_ttft_ms",
        "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms",
        "median_itl_ms", "p99_itl_ms"]
for c in (1, 8):
    try:
        v = [json.load(open(f"{out}/vllm-r{r}-c{c}.json")) for r in (1, 2)]
        h = [json.load(open(f"{out}/hpc-r{r}-c{c}.json")) for r in (1, 2)]
    except Exception as e:
        print(f"c={c}: missing results: {e}"); continue
    print(f"\nconcurrency {c}\n| metric | vllm r1 | hpcserve r1 | vllm r2 | hpcserve r2 | hpcserve/vllm |")
    print("|---|---|---|---|---|---|")
    for k in keys:
        a = [x[k] for x in v]; b = [x[k] for x in h]
        cells = " | ".join(f"{p:.2f} | {q:.2f}" for p, q in zip(a, b))
        print(f"| {k} | {cells} | {sum(b) / sum(a):.3f} |")
PY
tar -czf "$OUT/results.tar.gz" -C /tmp cmp
log "done in $((SECONDS - t0)) s"
