#!/bin/bash
# `hpcserve bench` against `vllm bench serve` on the same running vLLM, same load, alternating
# (two rounds; concurrency 1 with 8 prompts and 8 with 32; 32 input / 64 output tokens, ignore_eos).
# Usage: bench/compare_vllm_bench.sh URL KEY_FILE MODEL_DIR SERVED_NAME VLLM_BIN [OUT_DIR]
# e.g.   bench/compare_vllm_bench.sh http://127.0.0.1:8000 key /var/cache/hpcserve-lab/models/tiny-llama \
#            tiny /var/cache/hpcserve-lab/vllm-venv/bin/vllm /tmp/cmp
set -eu
URL=$1 KEY_FILE=$2 MODEL_DIR=$3 NAME=$4 VLLM=$5 OUT=${6:-/tmp/hpcserve-vs-vllm}
mkdir -p "$OUT"
export OPENAI_API_KEY=$(cat "$KEY_FILE")  # vllm bench serve reads the key from here
export VLLM_TARGET_DEVICE=${VLLM_TARGET_DEVICE:-cpu}
cd "$(dirname "$0")/.."
for round in 1 2; do for C in 1 8; do N=$([ "$C" = 1 ] && echo 8 || echo 32)
  "$VLLM" bench serve --backend openai-chat --endpoint /v1/chat/completions --base-url "$URL" \
    --model "$NAME" --tokenizer "$MODEL_DIR" --dataset-name random --random-input-len 32 \
    --random-output-len 64 --num-prompts "$N" --max-concurrency "$C" --ignore-eos \
    --percentile-metrics ttft,tpot,itl,e2el --save-result --save-detailed --result-dir "$OUT" \
    --result-filename "vllm-r$round-c$C.json" > "$OUT/vllm-r$round-c$C.txt" 2>&1
  python -m hpcserve bench --url "$URL" --api-key-file "$KEY_FILE" --concurrency "$C" \
    --num-prompts "$N" --input-len 32 --output-len 64 --json > "$OUT/hpc-r$round-c$C.json" 2>/dev/null
done; done
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
keys = ["completed", "total_input_tokens", "total_output_tokens", "request_throughput",
        "output_throughput", "total_token_throughput", "mean_ttft_ms", "median_ttft_ms",
        "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms",
        "median_itl_ms", "p99_itl_ms"]
for c in (1, 8):
    print(f"\nconcurrency {c}\n| metric | vllm r1 | hpcserve r1 | vllm r2 | hpcserve r2 | hpcserve/vllm |")
    print("|---|---|---|---|---|---|")
    for k in keys:
        v = [json.load(open(f"{out}/vllm-r{r}-c{c}.json"))[k] for r in (1, 2)]
        h = [json.load(open(f"{out}/hpc-r{r}-c{c}.json"))[k] for r in (1, 2)]
        cells = " | ".join(f"{a:.2f} | {b:.2f}" for a, b in zip(v, h))
        print(f"| {k} | {cells} | {sum(h) / sum(v):.3f} |")
PY
