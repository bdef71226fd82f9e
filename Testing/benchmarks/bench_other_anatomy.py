"""A demo bundle on anatomy it never saw: held-out figures on cases made from another patient.

The demo's cohort is made from one real CT, so its held-out test set shares that anatomy. This
builds cases from the example DICOM series instead (another patient: contrast-enhanced,
0.98 x 0.98 x 2 mm, 20 slices of the upper abdomen), with TotalSegmentator's organ map of it,
both from the TotalSegmentator source distribution (``jmid cohort --source-ct --source-seg
--source-enhanced``), runs the demo's liver bundle on them and prints the same table as the
demo's held-out test set, against the planted findings, beside the demo's own test figures.

``--in-plane-mm 3`` first resamples the series to the example CT's 3 mm pixels (Gaussian
low-pass, sigma (factor - 1) / 2 pixels, then linear), so that the cases differ from the
training cohort's in anatomy and contrast but not in pixel size and noise.

``--recalibrate N`` plays a site that fits the bundle's calibration and thresholds again on its
own cases (``jmid calibrate``): the bundle is recalibrated on the first N cases with their
reports' labels, and the bundle before and after are scored on the rest (README, Evaluation:
``--cases 300 --seed 11 --in-plane-mm 3 --recalibrate 150``).

Usage: .venv/bin/python Testing/benchmarks/bench_other_anatomy.py --demo jmid-demo
       [--cases 100] [--seed 7] [--in-plane-mm MM] [--recalibrate N] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

from JMIDAnomalyLib.demo.holdout import test_set_table  # noqa: E402
from JMIDAnomalyLib.demo.other_anatomy import (  # noqa: E402
    evaluate_other_patient,
    recalibrated_on_other_patient,
)
from JMIDAnomalyLib.demo.reference_data import fetch_reference_data  # noqa: E402
from JMIDAnomalyLib.imaging.volumes import read_ct  # noqa: E402

FOCAL = ("cyst", "fatty_liver", "SOL", "calcification")


def own_spacing(data) -> float:
    """The series' own in-plane pixel size in mm."""
    return round(float(read_ct(data.dicom_dir).GetSpacing()[0]), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished jmid demo folder")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7, help="the cohort's seed")
    parser.add_argument(
        "--in-plane-mm", type=float, help="resample the series to these pixels first (e.g. 3)"
    )
    parser.add_argument(
        "--recalibrate", type=int, metavar="N", help="fit the bundle again on the first N cases"
    )
    parser.add_argument("--work", type=Path, default=Path("bench-other-anatomy"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    bundle = args.demo / "training" / "liver" / "bundle"
    if not (bundle / "bundle.json").exists():
        parser.error(f"{bundle}: no liver bundle; run jmid demo --out {args.demo} first")

    data = fetch_reference_data()
    work = args.work / (f"{args.in_plane_mm:g}mm" if args.in_plane_mm else "native")
    if args.recalibrate:
        if not 0 < args.recalibrate < args.cases:
            parser.error("--recalibrate N needs 0 < N < --cases")
        return recalibration(args, bundle, work / f"{args.cases}_{args.seed}")
    start = time.perf_counter()
    result = evaluate_other_patient(
        work, ("liver",), [bundle], args.cases, args.seed, args.in_plane_mm
    )["liver"]
    seconds = time.perf_counter() - start
    own_file = args.demo / "evaluation" / "liver" / "test" / "metrics.json"
    own = json.loads(own_file.read_text())["classes"] if own_file.exists() else []

    figures = {
        "in_plane_mm": args.in_plane_mm or own_spacing(data),
        "cases": result["cases"],
        "seconds": round(seconds, 1),
        "exact": result["exact"],
        "positives": result["positives"],
        "positives_found": result["positives_found"],
        "normals": result["normals"],
        "normals_flagged": result["normals_flagged"],
        "classes": {
            m["class"]: {
                k: m.get(k)
                for k in (
                    "positives",
                    "auc",
                    "auc_low",
                    "auc_high",
                    "sensitivity",
                    "specificity",
                    "ece",
                )
            }
            for m in result["metrics"]
            if m["class"] in FOCAL
        },
        "demo_test_auc": {m["class"]: m.get("auc") for m in own if m["class"] in FOCAL},
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(
        f"cohort of {args.cases} cases from the example DICOM series "
        f"({figures['in_plane_mm']:g} mm pixels) built, cropped and scored in {seconds:.0f} s"
    )
    print("\n".join(test_set_table("liver", result, "cases of another patient")))
    print("\nAUC, another patient against the demo's own test set:")
    for cls in FOCAL:
        other = figures["classes"].get(cls, {}).get("auc")
        mine = figures["demo_test_auc"].get(cls)
        cells = [f"{v:.3f}" if v is not None else "-" for v in (other, mine)]
        print(f"  {cls:14s} {cells[0]:>6s} against {cells[1]:>6s}")
    return 0


def recalibration(args, bundle: Path, work: Path) -> int:
    """--recalibrate: the bundle before and after ``jmid calibrate`` on the rest of the cases."""
    start = time.perf_counter()
    result = recalibrated_on_other_patient(
        work, bundle, args.cases, args.seed, args.recalibrate, args.in_plane_mm
    )
    seconds = time.perf_counter() - start
    figures = {"fit_cases": args.recalibrate, "seconds": round(seconds, 1)}
    for when in ("before", "after"):
        summary = result[when]
        figures[when] = {
            **{k: summary[k] for k in ("cases", "exact", "positives_found", "normals_flagged")},
            "classes": {
                m["class"]: {k: m.get(k) for k in ("auc", "sensitivity", "specificity", "ece")}
                for m in summary["metrics"]
                if m["class"] in FOCAL
            },
        }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    rest = args.cases - args.recalibrate
    print(f"recalibrated on {args.recalibrate} cases, scored on the other {rest} ({seconds:.0f} s)")
    for when in ("before", "after"):
        title = f"the other {rest} cases, {when} recalibration"
        print("\n" + "\n".join(test_set_table("liver", result[when], title)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
