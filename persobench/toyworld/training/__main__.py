"""`python -m persobench.toyworld.training --stage vae,t2i --out DIR --work DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .stages import run_stages

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", default="all")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()
    run_stages(args.stage, args.out, args.work, smoke=args.smoke, max_steps=args.max_steps)
