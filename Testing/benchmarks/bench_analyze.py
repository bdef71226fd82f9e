"""Seconds per case for ``jmid analyze`` on CPU with the demo preset: every organ that has a
bundle, all folds, occlusion heatmaps, all outputs written (scores.json, heatmaps, overview.png,
Slicer scene). Target < 60 s per case.

Usage: .venv/bin/python Testing/benchmarks/bench_analyze.py --bundles DIR --cohort DIR
       [--cases 3] [--explain occlusion|hirescam|none]
(e.g. ``--bundles jmid-demo/bundles --cohort jmid-demo/cohort`` after ``jmid demo``)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

import numpy as np  # noqa: E402
from JMIDAnomalyLib.inference.analyze_job import analyze_case  # noqa: E402
from JMIDAnomalyLib.inference.predictor import AnomalyPredictor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=Path, nargs="+", required=True)
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--explain", default="occlusion")
    args = parser.parse_args()
    t = time.perf_counter()
    predictor = AnomalyPredictor(args.bundles, device="cpu")
    print(f"bundles for {', '.join(predictor.organs)} loaded in {time.perf_counter() - t:.1f} s")
    truth = json.loads((args.cohort / "truth.json").read_text(encoding="utf-8"))
    cases = [r["case_id"] for r in truth if r["findings"]][: args.cases]
    times = []
    with tempfile.TemporaryDirectory() as work:
        for case in cases:
            t = time.perf_counter()
            analysis = analyze_case(
                args.cohort / "images" / f"{case}.nii.gz",
                predictor,
                Path(work) / case,
                args.cohort / "segs" / f"{case}.nii.gz",
                args.cohort / "labels.json",
                explain=args.explain,
            )
            times.append(time.perf_counter() - t)
            organs = ", ".join(o.key for o in analysis.organs if o.scores)
            print(
                f"{case}: {times[-1]:5.1f} s ({organs}; analysis {analysis.seconds:.1f} s, "
                f"the rest writing outputs)"
            )
    print(f"median {np.median(times):.1f} s per case (target < 60 s)")
    return 0 if np.median(times) < 60 else 1


if __name__ == "__main__":
    sys.exit(main())
