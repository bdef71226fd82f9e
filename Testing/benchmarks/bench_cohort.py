"""Demo cohort build time and size: 60 cases on the CPU (target < 2 minutes).

Usage: .venv/bin/python Testing/benchmarks/bench_cohort.py [--cases 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

from JMIDAnomalyLib.demo.cohort import build_cohort  # noqa: E402
from JMIDAnomalyLib.demo.reference_data import fetch_reference_data  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=60)
    args = parser.parse_args()
    fetch_reference_data()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = build_cohort(out, cases=args.cases, seed=0)
        seconds = time.perf_counter() - start
    print(
        f"{summary['cases']} cases ({summary['patients']} patients, "
        f"{summary['cases_with_findings']} with findings) built in {seconds:.1f} s; "
        f"{summary['size_mb']} MB on disk"
    )
    print("findings:", ", ".join(f"{k} {v}" for k, v in summary["findings"].items()))
    ok = seconds < 120
    print(f"target < 120 s for 60 cases: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
