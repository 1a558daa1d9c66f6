#!/usr/bin/env bash
# The one prepared GPU check of issue 12 (fast path: fused attention, torch.compile, bf16).
#
#   tools/gpu_check.sh             on one CUDA GPU (H100/H200): writes docs/results/gpu.md, < 8 minutes
#   tools/gpu_check.sh --cpu-dry   the same steps, tiny and on the CPU (DS_ACCELERATOR=cpu), to prove
#                                  the script works before GPU time is spent: docs/results/gpu_cpu_dry.md
#
# Steps (each under its own time limit, so the whole script stays under 8 minutes; a step that fails
# or times out is reported as such in the file and the script goes on):
#   1. environment (GPU, driver, torch, git hash)
#   2. the CUDA tests: pytest -m cuda (fused kernels vs eager forward+backward, FlexAttention backward,
#      Inductor-compiled layers vs eager, bf16 autocast vs fp32)
#   3. 50-step runs through the deepspeed launcher on the built-in corpus: zero2_bf16, zero2_fp16
#      (dynamic loss scale), zero3_bf16, zero3_offload_bf16 (attn_impl sdpa)
#   4. skipxl memory on CUDA for the four variants
#   5. throughput / peak memory / MFU on NVIDIA's Transformer-XL base shape, eager vs the fused paths
#   6. the adaptive softmax's host sync, measured
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
[[ "${1:-}" == "--cpu-dry" ]] && MODE=cpu
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python
DS="$(dirname "$(command -v "$PY")")/deepspeed"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SKIPXL_NO_PROGRESS=1 PYTHONUNBUFFERED=1
RUNS=$(mktemp -d /tmp/skipxl_gpu_check.XXXXXX)
PORT=$((29600 + RANDOM % 1000))

if [[ $MODE == gpu ]]; then
    OUT=${OUT:-docs/results/gpu.md}
    DS_CONFIGS="zero2_bf16 zero2_fp16 zero3_bf16 zero3_offload_bf16"
    DS_STEPS=50 DS_LIMIT=45
    MEMORY_ARGS="--preset tiny --steps 8 --batch 8 --device cuda --ds_config zero0_fp32"
    BENCH_ARGS="--shapes nvidia_base --device cuda --steps 10 --warmup 4 --repeats 1
        --cells eager:none:bf16,sdpa:none:bf16,flex:none:bf16,sdpa:layers:bf16,eager:none:fp32,sdpa:none:fp32"
    SYNC_ARGS="--device cuda --tokens 6144 --d-model 512 --dtype bf16 --repeats 20"
    TEST_LIMIT=110 MEMORY_LIMIT=50 BENCH_LIMIT=150 SYNC_LIMIT=20
else
    OUT=${OUT:-docs/results/gpu_cpu_dry.md}
    export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
    # DeepSpeed's CPU accelerator has no fp16 ("Type fp16 is not supported on your device"): zero2_fp16
    # is run anyway and reported as failing. ZeRO-3 (and its offload) on the CPU: cpu_zero3. Each launch
    # costs 1-3 minutes on the shared 2-core machine; DS_CONFIGS="..." runs others.
    DS_CONFIGS=${DS_CONFIGS:-"zero2_bf16 zero2_fp16 cpu_zero3"}
    DS_STEPS=6 DS_LIMIT=200
    MEMORY_ARGS="--preset tiny --steps 3 --batch 2 --device cpu --ds_config cpu --n_layer 2"
    BENCH_ARGS="--shapes tiny --device cpu --steps 2 --warmup 2 --repeats 1 --threads 1
        --cells eager:none:fp32,sdpa:none:fp32,eager:none:bf16,sdpa:none:bf16"
    SYNC_ARGS="--device cpu --tokens 300 --repeats 3 --threads 1"
    TEST_LIMIT=600 MEMORY_LIMIT=600 BENCH_LIMIT=600 SYNC_LIMIT=300
fi
mkdir -p "$(dirname "$OUT")"
START=$(date +%s)

section() {  # section TITLE LIMIT CMD... : run, time, append status and the output's tail to $OUT
    local title=$1 limit=$2
    shift 2
    local t0 log status
    t0=$(date +%s)
    log="$RUNS/$(echo "$title" | tr -c 'a-zA-Z0-9' '_').log"
    echo ">>> $title" >&2
    # bash -c: the step may be one of this script's functions (exported below)
    timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >"$log" 2>&1
    status=$?
    local took=$(($(date +%s) - t0))
    local verdict="ok"
    [[ $status -ne 0 ]] && verdict="FAILED (exit $status)"
    [[ $status -eq 124 || $status -eq 137 ]] && verdict="TIMED OUT after ${limit}s"
    {
        echo "### $title: $verdict (${took}s)"
        echo
        echo '```'
        echo "\$ $*"
        tail -n "${TAIL:-40}" "$log"
        echo '```'
        echo
    } >>"$OUT"
    echo "    $verdict (${took}s)" >&2
    return 0
}

{
    echo "# GPU check (issue 12): mode $MODE"
    echo
    echo "Written by \`tools/gpu_check.sh${1:+ $1}\` on $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD 2>/dev/null)."
    echo
} >"$OUT"

env_report() {
    [[ $MODE == gpu ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'deepspeed', deepspeed.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
}
export -f env_report
export MODE PY
section "1. environment" 60 env_report

section "2. CUDA tests (pytest -m cuda)" "$TEST_LIMIT" \
    "$PY" -m pytest -m cuda tests/test_model_attention_impl.py tests/test_model_compile.py -q -rs -p no:cacheprovider

ds_runs() {
    local cfg rc
    printf "| ds_config | exit | step | train loss | tokens/s | loss scale |\n|---|---|---|---|---|---|\n" \
        >"$RUNS/ds_table.md"
    for cfg in $DS_CONFIGS; do
        PORT=$((PORT + 1))
        timeout --kill-after=10 "$DS_LIMIT" "$DS" --num_gpus 1 --master_port "$PORT" recipes/wt2.py \
            --corpus builtin --preset tiny --max_steps "$DS_STEPS" --ds_config "$cfg" --attn_impl sdpa \
            --log_interval 10 --eval_interval 0 --save_interval 0 --out "$RUNS/ds_$cfg" \
            >"$RUNS/ds_$cfg.log" 2>&1
        rc=$?
        "$PY" - "$RUNS/ds_$cfg" "$cfg" "$rc" >>"$RUNS/ds_table.md" <<'EOF'
import json, sys
from pathlib import Path
run, cfg, rc = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = []
if (run / "metrics.jsonl").exists():
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
train = [r for r in rows if "train/loss" in r]
last = train[-1] if train else {}
tps = f"{last['tokens_per_s']:.0f}" if "tokens_per_s" in last else "-"
scale = last.get("loss_scale", "-")
print(f"| {cfg} | {rc} | {last.get('step', '-')} | {last.get('train/loss', '-')} | {tps} | {scale} |")
EOF
        [[ $rc -ne 0 ]] && tail -n 5 "$RUNS/ds_$cfg.log"
    done
    cat "$RUNS/ds_table.md"
}
export -f ds_runs
export MODE PY DS RUNS PORT DS_CONFIGS DS_STEPS DS_LIMIT
section "3. deepspeed launcher, $DS_STEPS steps, built-in corpus" $((DS_LIMIT * 7)) ds_runs

section "4. skipxl memory, four variants" "$MEMORY_LIMIT" \
    "$PY" -m skipxl.cli memory $MEMORY_ARGS --out "$RUNS/memory"

# shellcheck disable=SC2086
section "5. throughput, peak memory and MFU" "$BENCH_LIMIT" "$PY" tools/bench_fast.py $BENCH_ARGS

# shellcheck disable=SC2086
section "6. adaptive softmax host sync" "$SYNC_LIMIT" "$PY" tools/bench_adaptive_sync.py $SYNC_ARGS

echo "Total: $(($(date +%s) - START)) s. Logs and runs: $RUNS" >>"$OUT"
echo "wrote $OUT (total $(($(date +%s) - START)) s)" >&2
