#!/usr/bin/env bash
# The GPU figures issue 6 asks for, as one prepared command for a lent GPU machine (device tool):
#   bash benchmarks/gpu_checks.sh            # writes the figures to ${OUT:-/tmp}/gpu_checks.txt
# SD1.5-shaped UNet with random weights at 512 px: plain vs Pick-and-Draw time per image, ratio, peak memory.
set -euo pipefail
out="${OUT:-/tmp}/gpu_checks.txt"
python -m pip install -q -e . 2>&1 | tail -1 || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out"
for batch in 1 4 8; do
  python benchmarks/guidance_overhead.py --arch sd15 --device cuda --dtype fp16 --batch "$batch" --steps 30 --repeats 2 2>&1 \
    | grep -v Loading | tee -a "$out"
done
