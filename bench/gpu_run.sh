#!/usr/bin/env bash
# The GPU measurements of issues 17 and 18 in one call of the device tool (about 7 minutes):
#   run(command="bash bench/gpu_run.sh", carry=[".whl"], timeout_s=590)
# .whl holds torch_pruning-1.6.1-py3-none-any.whl (pip download torch-pruning==1.6.1 --no-deps -d .whl),
# the one dependency the GPU image lacks. Logs and JSON go to $OUT (committed under docs/gpu/).
# PARTS picks what runs: score (ResNet-50 scoring, placements), train (the full training bench),
# compile (the training bench's large-batch compiled variants alone, one process each).
set -uo pipefail
OUT=${OUT:-bench-out/gpu}
PARTS=${PARTS:-score train}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD/src:$PWD/bench:/tmp/site" PYTHONUNBUFFERED=1 CHIPPRUNE_CACHE_DIR=/tmp/chipprune-cache
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'magma', torch.cuda.has_magma, 'threads', torch.get_num_threads())" | tee -a "$OUT/gpu.txt"
if [[ $PARTS == *score* ]]; then
  timeout 260 python3 bench/score_speed_resnet50.py --device cuda --images 640 --batch-size 64 --official-channels 8 \
      --exact-below 300 --out "$OUT/score_speed_resnet50_gpu.json" 2>&1 | grep -v "it/s\]\|Warning\|warn" | tee "$OUT/score_speed_resnet50_gpu.txt"
  cp /tmp/chipprune-cache/decompositions/*.json "$OUT/decompositions_table.json" 2>/dev/null
fi
if [[ $PARTS == *train* ]]; then
  timeout 250 python3 bench/train_speed_gpu.py --images 25000 --epochs 3 --out "$OUT" 2>&1 | tee "$OUT/train_speed_gpu.txt"
fi
if [[ $PARTS == *compile* ]]; then
  for v in 1024:reduce-overhead 512:reduce-overhead; do
    d="$OUT/compile-${v//:/-}"; mkdir -p "$d"
    timeout 90 python3 bench/train_speed_gpu.py --images 25000 --epochs 3 --official-steps 0 --skip-jpeg --variants "$v" --out "$d" 2>&1 \
        | grep -v "W1\|dynamo" | tee "$d/train_speed_gpu.txt"
  done
fi
