"""Sharding that shares (issue 17): does a second process halve a comparison run, and how well does the cost
schedule spread `configs/paper/dreambench.yaml` over 8 ranks?

    OMP_NUM_THREADS=1 python benchmarks/scaling.py                # both parts (the measured one takes ~3 min here)
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --simulate     # the 8-rank schedule only (seconds)
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --prompts 8    # a longer comparison run (more images per fit)
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --repeats 3    # three interleaved 1-vs-2 pairs, every ratio and the worst

Measured: a vanilla SD + Textual Inversion comparison run with Pick-and-Draw on 2 ToyBench subjects, one
process vs `torchrun --nproc-per-node=2`, each into a fresh store, one torch thread per process; the images
of both stores are compared byte for byte. Goal: 2 processes take at most 0.6x one.

Simulated: the work list of the paper config at DreamBench's size (30 subjects x 25 prompts x 4 images; the
data need not be present), fit units and sampling batches weighted by the unit costs the dry run uses
(`harness/worklist.py`), and each (method, subject)'s group of batches charging its setup (the fit loaded,
the palette inverted: `worklist.setup_seconds`) once on every rank that samples any of it. Scheduled
as the runner does (`distributed.affine`: groups kept whole where balance allows, pieces by LPT) and, for
contrast, with LPT over single batches (which scatters every group) and with the old rule (contiguous chunks
of the method-major fit list; each (method, subject, guidance) batch list split on its own). Makespan over the ideal (all work and
each group's setup once, over the ranks), fits and sampling summed across the barrier between them. Goal: at
most 1.1.
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
       "dataset.images_per_prompt=2", "sampler.batch_size=2", "metrics.names=[]", "report.wandb=disabled", "name=scaling"]


def _images(store: Path) -> dict[str, str]:
    return {p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("images/**/*.png"))}


def measured(prompts: int = 4) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    out = {}
    stores = {}
    for label, prefix in (("one", [sys.executable, "-m"]),
                          ("two", [shutil.which("torchrun"), "--nproc-per-node=2", "--master-port=29517", "-m"])):
        store = Path(tempfile.mkdtemp(prefix=f"persobench-scaling-{label}-"))
        started = time.perf_counter()
        done = subprocess.run([*prefix, "persobench", *RUN, f"dataset.max_prompts={prompts}", f"store={store}"], env=env,
                              capture_output=True, text=True)
        out[label] = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        stores[label] = store / "scaling"
        shares = [line for line in done.stderr.splitlines() if line.startswith("rank ")]
        print(f"{label} process(es): {out[label]:.1f} s" + (f"  ({'; '.join(shares)})" if shares else ""))
    same = _images(stores["one"]) == _images(stores["two"])
    print(f"2 processes / 1 process: {out['two'] / out['one']:.3f} (goal <= 0.6); images identical: {same}")
    return {**out, "ratio": out["two"] / out["one"], "identical": same}


def simulated(config: Path, world: int = 8) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from persobench.core.config import load_config
    from persobench.harness.distributed import affine, balanced, grouped_loads
    from persobench.harness.worklist import batch_seconds, fit_seconds, guidance_rows, setup_seconds

    cfg = load_config(str(config), ["dataset.path=/nonexistent"])
    subjects, prompts, per_prompt = 30, 25, cfg.dataset.images_per_prompt
    fit_costs = [fit_seconds(m, cfg.method_params.get(m, {})) for m in cfg.methods for _ in range(subjects)]
    batch_costs, groups, setup = [], [], {}  # per batch its cost and its (method, subject) group
    for m in cfg.methods:
        for s in range(subjects):
            setup[(m, s)] = setup_seconds(cfg)  # the fit loaded, the palette inverted, once per rank that samples it
            for g in guidance_rows(cfg):
                jobs = prompts * per_prompt
                sizes = [min(cfg.sampler.batch_size, jobs - i) for i in range(0, jobs, cfg.sampler.batch_size)]
                batch_costs += [batch_seconds(cfg, n, g) for n in sizes]
                groups += [(m, s)] * len(sizes)

    def fit_loads(owner: list[int]) -> list[float]:
        loads = [0.0] * world
        for c, r in zip(fit_costs, owner):
            loads[r] += c
        return loads

    def old_owner(n: int) -> list[int]:  # accelerate's split_between_processes: contiguous chunks
        owner = []
        for rank in range(world):
            owner += [rank] * (n // world + (1 if rank < n % world else 0))
        return owner

    fits = max(fit_loads(balanced(fit_costs, world)))
    plans = {"grouped": affine(batch_costs, groups, setup, world), "lpt over batches": balanced(batch_costs, world)}
    old = []  # each (method, subject, guidance) batch list split on its own
    for _ in range(len(setup) * len(guidance_rows(cfg))):
        old += old_owner(-(-(prompts * per_prompt) // cfg.sampler.batch_size))
    plans["contiguous"] = old
    ideal = (sum(fit_costs) + sum(batch_costs) + sum(setup.values())) / world  # every group's setup paid once
    out = {}
    for name, owner in plans.items():
        fit_part = fits if name != "contiguous" else max(fit_loads(old_owner(len(fit_costs))))
        out[name] = (fit_part + max(grouped_loads(owner, batch_costs, groups, setup, world))) / ideal
    setups_per_rank = len({(r, g) for r, g in zip(plans["grouped"], groups)}) / world
    print(f"{config.name} on {world} ranks ({len(fit_costs)} fit units, {len(batch_costs)} batches in {len(setup)} groups, "
          f"setup {min(setup.values()):.1f}-{max(setup.values()):.1f} s per group and rank): makespan / ideal = "
          f"{out['grouped']:.3f} grouped by (method, subject) (goal <= 1.1; {setups_per_rank:.0f} setups per rank); "
          f"{out['lpt over batches']:.3f} with LPT over single batches; {out['contiguous']:.3f} with contiguous chunks")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="only the simulated 8-rank schedule")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "paper" / "dreambench.yaml")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per subject in the measured run (x 2 images)")
    parser.add_argument("--repeats", type=int, default=1, help="1-vs-2 pairs, interleaved (one, two, one, two, ...)")
    args = parser.parse_args()
    simulated(args.config, args.ranks)
    if not args.simulate:
        ratios = [measured(args.prompts)["ratio"] for _ in range(args.repeats)]
        if len(ratios) > 1:
            print(f"2 processes / 1 process over {len(ratios)} pairs: {', '.join(f'{r:.3f}' for r in ratios)}; "
                  f"worst {max(ratios):.3f} (goal <= 0.6)")


if __name__ == "__main__":
    main()
