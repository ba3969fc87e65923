"""Run every benchmark in bench/ (``make bench``) one after another and summarise.

Each ``bench_*.py`` is a standalone script that measures the thing and its baseline side by
side in one run and prints the ratio. Pass names to run a subset: ``python bench/run_all.py decide``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(name in s.stem for name in argv)]
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        # Flush the previous benchmark's dirty pages first: otherwise a benchmark that fsyncs
        # (sync ingest, durable awards) waits behind the kernel writing back another's data.
        os.sync()
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"--- {script.stem}: exit {rc} in {time.perf_counter() - started:.1f}s", flush=True)
        if rc != 0:
            failed.append(script.stem)
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
