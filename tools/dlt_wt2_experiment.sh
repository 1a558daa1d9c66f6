#!/usr/bin/env bash
# Dynamic Layer Tying vs conventional training on WikiText-2, same token budget, paired seeds.
# One process at a time, one thread (the machine is shared). Usage:
#   tools/dlt_wt2_experiment.sh OUT_DIR [STEPS] [SEEDS...]
# then: python tools/dlt_summary.py OUT_DIR
set -euo pipefail
out=${1:?OUT_DIR}; steps=${2:-240}; shift 2 || true
seeds=${*:-"1 2 3"}
data=${SKIPXL_WT2:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/wikitext-2}
for seed in $seeds; do
  for variant in baseline dlt; do
    dir="$out/$variant-seed$seed"
    [ -f "$dir/results.json" ] && continue
    rm -rf "$dir"
    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu SKIPXL_NO_PROGRESS=1 "${PYTHON:-python}" recipes/wt2.py --preset small --n_layer 8 \
      --variant "$variant" --data_dir "$data" --out "$dir" --seed "$seed" --max_steps "$steps" \
      --log_interval 20 --eval_interval 0 --save_interval 0 --progress False > "$dir.log" 2>&1
  done
done
