"""The default demo (`persobench run`, configs/default.yaml) cold and warm, and its peak RSS.

Goals on a 2-core CPU machine: cold <= 5 min, warm (nothing to do) <= 30 s, peak RSS <= 3 GB.

    OMP_NUM_THREADS=1 python benchmarks/demo_time.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time


def timed_run(store: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "persobench", "run", f"store={store}", "--wandb", "offline"], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ))
    peak_kb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return time.perf_counter() - t, peak_kb / 2**20


def main() -> None:
    with tempfile.TemporaryDirectory() as store:
        cold, rss = timed_run(store)
        warm, rss_warm = timed_run(store)
    print(f"threads OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"cold {cold:.1f} s (goal <= 300)")
    print(f"warm {warm:.1f} s (goal <= 30)")
    print(f"peak RSS {max(rss, rss_warm):.2f} GiB (goal <= 3)")


if __name__ == "__main__":
    main()
