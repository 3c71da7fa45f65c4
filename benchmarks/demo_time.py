"""The demo (`make demo` = install + `persobench run`, persobench/configs/default.yaml) cold and warm, and its peak RSS.

Goals on a 2-core CPU machine: cold (install included) <= 5 min, warm re-run (everything in the store) <= 30 s,
peak RSS <= 3 GB.

    python benchmarks/demo_time.py              # cold run (fresh store) + warm re-run; the install is not timed
    python benchmarks/demo_time.py --install    # also time `pip install -e '.[test]'` (make install) into a fresh
                                                # venv that sees this Python's packages (so no wheel is downloaded:
                                                # a first-ever install also downloads torch & co., not counted here)

Runs `python -m persobench run` from the repository root (this checkout's code, whatever an editable install
points at) with the user's thread settings, like `make demo`; prints the demo's own final output (the table).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_install(venv: Path) -> tuple[float, str]:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    t = time.perf_counter()
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", ".[test]"], check=True, cwd=ROOT)
    return time.perf_counter() - t, python


def timed_run(python: str, store: str) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    done = subprocess.run([python, "-m", "persobench", "run", f"store={store}"], check=True, cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - t
    peak_kb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return seconds, peak_kb / 2**20, done.stdout


def final_output(stdout: str) -> str:
    """The demo's closing lines: from the results table's caption to the report's path."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("results (")), len(lines))
    return "\n".join(lines[start:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="also time make install's pip command, in a fresh venv")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        install, python = timed_install(Path(tmp) / "venv") if args.install else (None, sys.executable)
        store = str(Path(tmp) / "store")
        cold, rss, out = timed_run(python, store)
        warm, rss_warm, out_warm = timed_run(python, store)
    print(final_output(out_warm))
    print()
    print(f"machine: {os.cpu_count()} CPUs; load average before {load_before[0]:.2f} / after {os.getloadavg()[0]:.2f} (1 min); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if install is None:
        print("install: not timed (pass --install)")
    else:
        print(f"install (pip install -e '.[test]', dependencies already present) {install:.1f} s")
    total = cold + (install or 0.0)
    print(f"cold run (fresh store) {cold:.1f} s; with the install {total:.1f} s (goal <= 300)")
    print(f"warm re-run {warm:.1f} s (goal <= 30)")
    print(f"peak RSS {max(rss, rss_warm):.2f} GiB (goal <= 3)")
    if final_output(out) != final_output(out_warm):
        print("note: the cold and warm runs printed different tables", file=sys.stderr)


if __name__ == "__main__":
    main()
