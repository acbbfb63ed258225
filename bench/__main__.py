"""`python -m bench [name ...]` runs the named benchmarks (default: all)."""

from __future__ import annotations

import sys

from bench import dp, federation, learning, models, overhead, report, routing

BENCHMARKS = {
    "models": models.main,
    "overhead": overhead.main,
    "routing": routing.main,
    "dp": dp.main,
    "federation": federation.main,
    "learning": learning.main,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    for name in names:
        BENCHMARKS[name]()
    report.main()
