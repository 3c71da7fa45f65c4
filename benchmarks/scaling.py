"""Sharding that shares (issue 17): does a second process halve a comparison run, and how well does the cost
schedule spread `configs/paper/dreambench.yaml` over 8 ranks?

    OMP_NUM_THREADS=1 python benchmarks/scaling.py                # both parts (the measured one takes ~3 min here)
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --simulate     # the 8-rank schedule only (seconds)

Measured: a vanilla SD + Textual Inversion comparison run with Pick-and-Draw on 2 ToyBench subjects, one
process vs `torchrun --nproc-per-node=2`, each into a fresh store, one torch thread per process; the images
of both stores are compared byte for byte. Goal: 2 processes take at most 0.6x one.

Simulated: the work list of the paper config at DreamBench's size (30 subjects x 25 prompts x 4 images; the
data need not be present), fit units and sampling batches weighted by the unit costs the dry run uses
(`harness/worklist.py`), scheduled with `harness/distributed.py::balanced` and, for contrast, with the old
rule (contiguous chunks of the method-major fit list; each (method, subject, guidance) batch list split on
its own). Makespan over the ideal (total / ranks), fits and sampling summed across the barrier between
them. Goal: at most 1.1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ["run", "methods=[vanilla-sd, textual-inversion]", "guidance.name=pick-and-draw", "dataset.subjects=[ball1, cat1]",
       "dataset.max_prompts=4", "dataset.images_per_prompt=2", "sampler.batch_size=2", "metrics.names=[]",
       "report.wandb=disabled", "name=scaling"]


def _images(store: Path) -> dict[str, str]:
    return {p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("images/**/*.png"))}


def measured() -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    out = {}
    stores = {}
    for label, prefix in (("one", [sys.executable, "-m"]),
                          ("two", [shutil.which("torchrun"), "--nproc-per-node=2", "--master-port=29517", "-m"])):
        store = Path(tempfile.mkdtemp(prefix=f"persobench-scaling-{label}-"))
        started = time.perf_counter()
        done = subprocess.run([*prefix, "persobench", *RUN, f"store={store}"], env=env, capture_output=True, text=True)
        out[label] = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        stores[label] = store / "scaling"
        shares = [line for line in done.stderr.splitlines() if line.startswith("rank ")]
        print(f"{label} process(es): {out[label]:.1f} s" + (f"  ({'; '.join(shares)})" if shares else ""))
    same = _images(stores["one"]) == _images(stores["two"])
    print(f"2 processes / 1 process: {out['two'] / out['one']:.2f} (goal <= 0.6); images identical: {same}")
    return {**out, "ratio": out["two"] / out["one"], "identical": same}


def _old_rule(costs: list[float], world: int) -> list[float]:
    """accelerate's split_between_processes: contiguous chunks, the first ranks one item more."""
    loads = [0.0] * world
    n, start = len(costs), 0
    for rank in range(world):
        size = n // world + (1 if rank < n % world else 0)
        loads[rank] += sum(costs[start:start + size])
        start += size
    return loads


def simulated(config: Path, world: int = 8) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from persobench.core.config import load_config
    from persobench.harness.distributed import balanced
    from persobench.harness.worklist import batch_seconds, fit_seconds, guidance_rows

    cfg = load_config(str(config), ["dataset.path=/nonexistent"])
    subjects, prompts, per_prompt = 30, 25, cfg.dataset.images_per_prompt
    fit_costs = [fit_seconds(m, cfg.method_params.get(m, {})) for m in cfg.methods for _ in range(subjects)]
    groups = []  # per (method, subject, guidance): its batches' costs
    for _m in cfg.methods:
        for _s in range(subjects):
            for g in guidance_rows(cfg):
                jobs = prompts * per_prompt
                sizes = [min(cfg.sampler.batch_size, jobs - i) for i in range(0, jobs, cfg.sampler.batch_size)]
                groups.append([batch_seconds(cfg, n, g) for n in sizes])
    batch_costs = [c for group in groups for c in group]

    def load(costs: list[float]) -> list[float]:
        loads = [0.0] * world
        for c, r in zip(costs, balanced(costs, world)):
            loads[r] += c
        return loads

    new = max(load(fit_costs)) + max(load(batch_costs))
    old_sample = [0.0] * world
    for group in groups:
        for r, v in enumerate(_old_rule(group, world)):
            old_sample[r] += v
    old = max(_old_rule(fit_costs, world)) + max(old_sample)
    ideal = sum(fit_costs) / world + sum(batch_costs) / world
    print(f"{config.name} on {world} ranks ({len(fit_costs)} fit units, {len(batch_costs)} batches): "
          f"makespan / ideal = {new / ideal:.3f} by cost (goal <= 1.1); {old / ideal:.3f} with contiguous chunks")
    return {"by_cost": new / ideal, "contiguous": old / ideal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="only the simulated 8-rank schedule")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "paper" / "dreambench.yaml")
    parser.add_argument("--ranks", type=int, default=8)
    args = parser.parse_args()
    simulated(args.config, args.ranks)
    if not args.simulate:
        measured()


if __name__ == "__main__":
    main()
