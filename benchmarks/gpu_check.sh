#!/usr/bin/env bash
# The GPU check, for a machine where TensorFlow sees a GPU: about 8 minutes in all.
#
#     bash benchmarks/gpu_check.sh ../shared/data/chair OUT_DIR
#
# 1. The chair (NeRF-synthetic, 800x800 on white) trained for 5 minutes: steps/s, test PSNR on 16 of the 200
#    test views, seconds per 800x800 frame (3 orbit frames), peak memory: OUT_DIR/chair_5min_gpu.json.
# 2. The default pipeline, `dvc repro` of the built-in scene in a scratch clone: its time and
#    metrics/eval.json: OUT_DIR/repro_gpu.txt.
# The same code as on a CPU: with a GPU visible the native CPU ops stand aside (native/build.cpu_library) and
# XLA compiles whole steps. Nothing here asserts a figure; it prints them.
set -euo pipefail
chair=${1:?the chair folder (NeRF-synthetic layout)}
out=${2:?a folder for the results}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

python - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("TensorFlow", tf.__version__, "sees", [g.name for g in gpus] or "no GPU")
raise SystemExit(0 if gpus else "gpu_check: TensorFlow sees no GPU here (install tensorflow[and-cuda])")
PY

echo "== chair, 5 minutes of training"
python "$repo/benchmarks/bench_train.py" --scene "$chair" --background 1 --budget-s 300 --eval-at-s 300 \
    --curve-views 16 --final-views 16 --render-frames 3 --out "$out/chair_5min_gpu.json"

echo "== the default dvc repro, in a scratch clone"
scratch=$(mktemp -d)
git clone -q "$repo" "$scratch/repo"
start=$(date +%s)
(cd "$scratch/repo" && dvc repro -q) 2>&1 | tail -n 5
end=$(date +%s)
{ echo "dvc repro: $((end - start)) s"; cat "$scratch/repo/metrics/eval.json"; } | tee "$out/repro_gpu.txt"
rm -rf "$scratch"
