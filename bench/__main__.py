"""``make bench``: run every ``bench/bench_*.py`` (each has ``main() -> list[Figure]``) and print the figures.

Benchmarks print; they never fail a build. ``python -m bench NAME`` runs the ones whose name contains NAME.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

from bench.common import Figure, print_figures


def main(argv: list[str]) -> int:
    wanted = argv[1:]
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if wanted:
        names = [n for n in names if any(w in n for w in wanted)]
    all_figures: list[Figure] = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        started = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        try:
            figures = module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        print_figures(figures)
        print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
        all_figures.extend(figures)
    print("\n== summary ==")
    print_figures(all_figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
