#!/usr/bin/env bash
# The GPU run, prepared (issue 15), as one command for a lent GPU machine (the device tool), under 10 minutes:
#   bash benchmarks/gpu_checks.sh      # writes ${OUT:-benchmarks}/gpu_checks.json (+ the guidance overhead table as text)
# Random-weight twins of SD 1.5, BLIP-Diffusion, DINO ViT-S/16 and CLIP ViT-B/32 at their real shapes, 512 px fp16:
# every method without / with Pick-and-Draw at batch 1 / 4 / 8 (images/s, guided/plain, peak memory), TI and LoRA
# fit steps/s at the paper presets, inversion time per subject, metric images/s; `unit_costs` feeds the estimates.
set -euo pipefail
out="${OUT:-benchmarks}"
mkdir -p "$out"
python -m pip install -q -e . 2>&1 | tail -1 || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu_checks.txt"
python benchmarks/gpu_checks.py --device cuda --dtype fp16 --arch sd15 --batches 1,4,8 --steps 30 --out "$out/gpu_checks.json" 2>&1 \
  | grep -v Loading | tee -a "$out/gpu_checks.txt"
python benchmarks/guidance_overhead.py --arch sd15 --device cuda --dtype fp16 --batch 4 --steps 30 --repeats 2 2>&1 \
  | grep -v Loading | tee -a "$out/gpu_checks.txt"
