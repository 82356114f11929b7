#!/usr/bin/env bash
# One short GPU check (at most about 9 minutes on one H200: the time limits are data 1.5, eager 2,
# naive 2 and compile 3.5 minutes; typically less): XceptionBased end-to-end training images/s and
# pipeline efficiency b/a at 256x256, bf16 autocast, channels-last, the decoded uint8 cache on the GPU
# (crop, flip and normalisation there), batch 256. Targets: >= 2,000 images/s end to end, b/a >= 0.90.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on a machine with a GPU
#
# Outputs under $OUT (default out/gpu_check): env.txt (nvidia-smi, versions), data.log, eager.log and
# bench_train_gpu_eager.json ((a) and (b) without torch.compile: the target figures), naive.log and
# bench_train_gpu_naive.json (the same plus (c), the naive course loop, in a run of its own so a slow
# naive loop cannot cost the target figures), compile.log and bench_train_gpu_compile.json (with
# torch.compile), summary.txt (the figures against the targets; a run that failed or ran past its
# time limit is reported as having no result). Earlier results in $OUT are removed first, never
# reported as this run's. Uses $PYTHON (default .venv/bin/python when it exists, else python3) and
# needs torch, torchvision, numpy, scipy, pillow, tqdm.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
rm -f "$OUT"/bench_train_gpu_{eager,naive,compile}.json "$OUT"/{eager,naive,compile}.log "$OUT/summary.txt"
PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the environment run_me.sh / run_tests.sh made, where torch is
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
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
  timeout 90 $PY make_demo_datasets.py --out "$DATA" --scale 4 --datasets fakes_dataset > "$OUT/data.log" 2>&1 \
    || { echo "demo data generation failed (see data.log)" | tee "$OUT/summary.txt"; exit 1; }
fi

# Whole batches only (2304 = 9 x 256 train images, 512 val + 512 test), so torch.compile never sees a
# second shape; 3 rounds of (a) model only and (b) Trainer end to end, and in the naive run also (c).
COMMON=(benchmarks/bench_train.py --models XceptionBased --data_root "$DATA" --device cuda --amp
        --batch_size 256 --xception_train_images 2304 --xception_eval_images 1024 --repeats 3
        --no_full_size_rss --no_progress)

# 2. Eager (no torch.compile), without the naive loop: the target figures.
timeout 120 $PY "${COMMON[@]}" --skip_naive --out "$OUT/bench_train_gpu_eager.json" > "$OUT/eager.log" 2>&1
echo "eager exit code $?" >> "$OUT/eager.log"

# 3. Eager again with (c), the naive course loop (PIL decoding on one core), for b/c.
timeout 120 $PY "${COMMON[@]}" --out "$OUT/bench_train_gpu_naive.json" > "$OUT/naive.log" 2>&1
echo "naive exit code $?" >> "$OUT/naive.log"

# 4. torch.compile (compiles the train and the eval graph first: minutes).
timeout 210 $PY "${COMMON[@]}" --compile --skip_naive --out "$OUT/bench_train_gpu_compile.json" \
  > "$OUT/compile.log" 2>&1
echo "compile exit code $?" >> "$OUT/compile.log"

# 5. The figures against the targets; a run whose exit code is not 0 (124: past its time limit) has
# no result, whatever its JSON holds.
$PY - "$OUT" > "$OUT/summary.txt" 2>&1 <<'EOF'
import json, os, re, sys
out = sys.argv[1]
for variant in ("eager", "naive", "compile"):
    path = os.path.join(out, f"bench_train_gpu_{variant}.json")
    log = os.path.join(out, f"{variant}.log")
    codes = re.findall(rf"^{variant} exit code (\d+)$", open(log, errors="replace").read(),
                       re.MULTILINE) if os.path.exists(log) else []
    code = int(codes[-1]) if codes else None
    if code != 0 or not os.path.exists(path):
        why = "no exit code" if code is None else "timed out" if code == 124 else f"exit code {code}"
        print(f"{variant}: no result ({why}; see {variant}.log)")
        continue
    r = json.load(open(path))["XceptionBased"]
    on = f"XceptionBased 256x256 bf16 channels-last batch 256 on {r['config']['device']}"
    if variant == "naive":
        print(f"naive: {on}: naive course loop (fp32 NCHW, PIL, num_workers=0) train "
              f"{r['naive_train_ips']:.0f}, eval {r['naive_eval_ips']:.0f} images/s; against this run's "
              f"end to end ({r['end_to_end_train_ips']:.0f} train, {r['end_to_end_eval_ips']:.0f} eval "
              f"images/s): b/c train {r['train_speedup']:.2f}, eval {r['eval_speedup']:.2f}, "
              f"epoch {r['epoch_speedup']:.2f}")
        continue
    ips, eff = r["end_to_end_train_ips"], r["train_efficiency"]
    print(f"{variant}: {on}: "
          f"end-to-end train {ips:.0f} images/s (target >= 2000: {'PASS' if ips >= 2000 else 'FAIL'}), "
          f"model-only train {r['model_only_train_ips']:.0f} images/s, b/a train {eff:.3f} "
          f"(target >= 0.90: {'PASS' if eff >= 0.90 else 'FAIL'}); eval: end to end "
          f"{r['end_to_end_eval_ips']:.0f}, model only {r['model_only_eval_ips']:.0f} images/s, "
          f"b/a eval {r['eval_efficiency']:.3f}")
EOF
cat "$OUT/summary.txt"
