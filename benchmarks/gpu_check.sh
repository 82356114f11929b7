#!/usr/bin/env bash
# One short GPU check (about 3-7 minutes on one H200): XceptionBased end-to-end training images/s and
# pipeline efficiency b/a at 256x256, bf16 autocast, channels-last, the decoded uint8 cache on the GPU
# (crop, flip and normalisation there), batch 256. Targets: >= 2,000 images/s end to end, b/a >= 0.90.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on a machine with a GPU
#
# Outputs under $OUT (default out/gpu_check): env.txt (nvidia-smi, versions), data.log, eager.log and
# bench_train_gpu_eager.json (no torch.compile), compile.log and bench_train_gpu_compile.json (with
# torch.compile; skipped if it runs past its time limit), summary.txt (the figures against the
# targets). Uses $PYTHON (default python3) and needs torch, torchvision, numpy, scipy, pillow, tqdm.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DATA=${GPU_CHECK_DATA:-/tmp/gpu_check_data}
export PYTHONUNBUFFERED=1 XCEPTION_NO_DOWNLOAD=1

{
  date -u
  nvidia-smi || echo "nvidia-smi: not available"
  nproc
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
} > "$OUT/env.txt" 2>&1
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: nothing measured" | tee "$OUT/summary.txt"
  exit 1
fi

# 1. Demo data: fakes_dataset at scale 4 (2400 train / 600 val / 600 test images), all CPU cores.
if [ ! -d "$DATA/fakes_dataset/train" ]; then
  timeout 240 $PY make_demo_datasets.py --out "$DATA" --scale 4 --datasets fakes_dataset > "$OUT/data.log" 2>&1 \
    || { echo "demo data generation failed (see data.log)" | tee "$OUT/summary.txt"; exit 1; }
fi

# Whole batches only (2304 = 9 x 256 train images, 512 val + 512 test), so torch.compile never sees a
# second shape; 3 rounds of (a) model only, (b) Trainer end to end, (c) the naive course loop.
COMMON=(benchmarks/bench_train.py --models XceptionBased --data_root "$DATA" --device cuda --amp
        --batch_size 256 --xception_train_images 2304 --xception_eval_images 1024 --repeats 3
        --no_full_size_rss --no_progress)

# 2. Eager (no torch.compile).
timeout 200 $PY "${COMMON[@]}" --out "$OUT/bench_train_gpu_eager.json" > "$OUT/eager.log" 2>&1
echo "eager exit code $?" >> "$OUT/eager.log"

# 3. torch.compile (compiles the train and the eval graph first: minutes), skipped when out of time.
timeout 300 $PY "${COMMON[@]}" --compile --skip_naive --out "$OUT/bench_train_gpu_compile.json" \
  > "$OUT/compile.log" 2>&1
echo "compile exit code $?" >> "$OUT/compile.log"

# 4. The figures against the targets.
$PY - "$OUT" > "$OUT/summary.txt" 2>&1 <<'EOF'
import json, os, sys
out = sys.argv[1]
for variant in ("eager", "compile"):
    path = os.path.join(out, f"bench_train_gpu_{variant}.json")
    if not os.path.exists(path):
        print(f"{variant}: no result (see {variant}.log)")
        continue
    r = json.load(open(path))["XceptionBased"]
    ips, eff = r["end_to_end_train_ips"], r["train_efficiency"]
    print(f"{variant}: XceptionBased 256x256 bf16 channels-last batch 256 on {r['config']['device']}: "
          f"end-to-end train {ips:.0f} images/s (target >= 2000: {'PASS' if ips >= 2000 else 'FAIL'}), "
          f"model-only train {r['model_only_train_ips']:.0f} images/s, b/a train {eff:.3f} "
          f"(target >= 0.90: {'PASS' if eff >= 0.90 else 'FAIL'}); eval: end to end "
          f"{r['end_to_end_eval_ips']:.0f}, model only {r['model_only_eval_ips']:.0f} images/s, "
          f"b/a eval {r['eval_efficiency']:.3f}"
          + (f"; naive train {r['naive_train_ips']:.0f} images/s, b/c epoch {r['epoch_speedup']:.2f}"
             if r.get("naive_train_ips") else ""))
EOF
cat "$OUT/summary.txt"
