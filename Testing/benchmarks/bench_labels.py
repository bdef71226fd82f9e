"""Label import throughput on generated reports, streamed: reports/s and peak memory.

Generates N reports (default 300,000) from varied Japanese and English templates in the J-MID
export format (about two thirds with structured JSON), then runs ``jmid labels``' library call
in a fresh process on one core and prints reports/s and that process's peak RSS. Run with two
sizes to see that memory does not grow with the number of reports.

Then labels the 200 hand-written realistic reports of ``Testing/Python/data/labels_prose.jsonl``
(several sentences each, history, comparisons, section headers), repeated to ``--prose``
reports, the same way, as a figure for real report prose.

Usage: .venv/bin/python Testing/benchmarks/bench_labels.py [--reports 300000] [--also 30000]
       [--prose 40000]
Targets: >= 5,000 reports/s on one core; peak RSS < 1 GB, independent of N.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "JMIDAnomaly"))

# (organ anatomy JA, EN, finding JA, finding EN) chosen to exercise every part of the matcher.
FINDINGS = [
    ("肝S{seg}", "liver segment {seg}", "嚢胞", "cyst"),
    ("肝S{seg}", "liver segment {seg}", "腫瘤", "mass"),
    ("肝内胆管", "intrahepatic bile ducts", "拡張", "dilatation"),
    ("胆嚢", "gallbladder", "結石", "stones"),
    ("胆嚢", "gallbladder", "壁肥厚", "wall thickening"),
    ("膵頭部", "pancreatic head", "嚢胞性病変", "cystic lesion"),
    ("膵体部", "pancreatic body", "低吸収腫瘤", "hypoattenuating mass"),
    ("主膵管", "main pancreatic duct", "拡張", "dilatation"),
    ("脾臓", "spleen", "嚢胞", "cyst"),
    ("右腎", "right kidney", "嚢胞", "cyst"),
    ("左腎", "left kidney", "結石", "stone"),
    ("左副腎", "left adrenal gland", "結節", "nodule"),
    ("食道", "esophagus", "拡張", "dilatation"),
]
DIAGNOSES = [
    ("脂肪肝", "Fatty liver"),
    ("脾腫", "Splenomegaly"),
    ("食道裂孔ヘルニア", "Hiatal hernia"),
]
NEGATIVES = [
    ("膵臓", "pancreas"),
    ("脾臓", "spleen"),
    ("両腎", "both kidneys"),
    ("副腎", "adrenal glands"),
]
LEVELS = [(4, "definitive"), (3, "likely"), (2, "possible"), (0, "denial")]


def _entity(text, surface, score, level, anatomy):
    start = text.find(surface)
    mods = []
    for a in anatomy:
        s = text.find(a)
        mods.append(
            {
                "type": "Anatomical_entity",
                "tokens": list(a),
                "start_idx": s,
                "end_idx": s + len(a) - 1,
                "surface_name": a,
                "surface_id": None,
                "certainty_level": None,
                "certainty_score": None,
            }
        )
    return {
        "type": "Imaging_observation",
        "tokens": list(surface),
        "start_idx": start,
        "end_idx": start + len(surface) - 1,
        "surface_name": surface,
        "surface_id": None,
        "certainty_level": level,
        "certainty_score": score,
        "key": 0,
        "modifiers": mods,
        "is_findings": None,
    }


def make_report(rng: random.Random, i: int) -> list[str]:
    ja, en, entities = [], [], []
    for _ in range(rng.randint(1, 3)):
        a_ja, a_en, f_ja, f_en = rng.choice(FINDINGS)
        seg = rng.randint(1, 8)
        a_ja, a_en = a_ja.format(seg=seg), a_en.format(seg=seg)
        size = rng.randint(3, 60)
        score, level = rng.choice(LEVELS)
        size_ja = (
            "".join(chr(ord(c) + 0xFEE0) for c in str(size)) if rng.random() < 0.3 else str(size)
        )
        if score == 0:
            sentence = f"{a_ja}に{f_ja}は認めません。"
            en.append(f"No {f_en} in the {a_en}.")
        elif score == 2:
            sentence = f"{a_ja}に{size_ja}mm大の{f_ja}を認め、悪性の可能性があります。"
            en.append(f"A {size} mm {f_en} in the {a_en}, possibly malignant.")
        else:
            sentence = f"{a_ja}に{size_ja}mm大の{f_ja}を認めます。"
            en.append(f"A {size} mm {f_en} in the {a_en}.")
        offset = sum(map(len, ja))
        ja.append(sentence)
        entity = _entity(sentence, f_ja, score, level, [a_ja])
        for e in [entity, *entity["modifiers"]]:
            e["start_idx"] += offset
            e["end_idx"] += offset
        entities.append(entity)
    if rng.random() < 0.3:
        d_ja, d_en = rng.choice(DIAGNOSES)
        ja.append(f"{d_ja}を認めます。")
        en.append(f"{d_en}.")
        entities.append(_entity(ja[-1], d_ja, 4, "definitive", []))
    n_ja, n_en = rng.choice(NEGATIVES)
    ja.append(f"{n_ja}に異常所見は認めません。")
    en.append(f"No abnormal findings in the {n_en}.")
    entities.append(_entity(ja[-1], "異常所見", 0, "denial", [n_ja]))
    structured = json.dumps(entities, ensure_ascii=False, indent=2) if rng.random() < 0.67 else ""
    return [f"case_{i:07d}.nii.gz", f"P{i // 2:07d}", "".join(ja), " ".join(en), structured]


def generate_prose(path: Path, n: int) -> None:
    """``n`` reports cycling through the hand-written prose set (free text only)."""
    items = [
        json.loads(line)
        for line in (REPO / "Testing/Python/data/labels_prose.jsonl").read_text("utf-8").split("\n")
        if line
    ]
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "患者ID", "所見"])
        for i in range(n):
            writer.writerow([f"prose_{i:07d}.nii.gz", f"P{i:07d}", items[i % len(items)]["text"]])


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "患者ID", "所見", "findings_Eng", "所見_JSON"])
        for i in range(n):
            writer.writerow(make_report(rng, i))


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {core!r})
from JMIDAnomalyLib.labels.labeling import LabelOptions, label_reports
start = time.perf_counter()
summary = label_reports({src!r}, {out!r}, LabelOptions(crosscheck={crosscheck}))
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "labelled": summary["reports_labelled"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run(path: Path, out: Path, crosscheck: bool) -> dict:
    code = CHILD.format(
        core=str(REPO / "JMIDAnomaly"), src=str(path), out=str(out), crosscheck=crosscheck
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # taskset pins the job to one core where available.
    prefix = (
        ["taskset", "-c", "0"]
        if subprocess.run(["which", "taskset"], capture_output=True).returncode == 0
        else []
    )
    result = subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=300_000)
    parser.add_argument(
        "--also", type=int, default=30_000, help="a smaller run to compare memory (0: skip)"
    )
    parser.add_argument(
        "--prose", type=int, default=40_000, help="reports of realistic prose (0: skip)"
    )
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as work:
        for n in [s for s in (args.also, args.reports) if s]:
            path = Path(work) / f"reports_{n}.csv"
            t = time.perf_counter()
            generate(path, n)
            print(
                f"generated {n} reports ({path.stat().st_size / 1e6:.0f} MB) "
                f"in {time.perf_counter() - t:.1f} s"
            )
            for crosscheck in (True, False):
                r = run(path, Path(work) / f"out_{n}_{crosscheck}", crosscheck)
                rate = r["labelled"] / r["seconds"]
                print(
                    f"  crosscheck={str(crosscheck):5s} {r['labelled']} reports "
                    f"in {r['seconds']:.1f} s: {rate:,.0f} reports/s on one core, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB"
                )
                ok &= r["peak_rss_mb"] < 1024 and (crosscheck or rate >= 5000)
        if args.prose:
            path = Path(work) / "prose.csv"
            generate_prose(path, args.prose)
            r = run(path, Path(work) / "out_prose", True)
            rate = r["labelled"] / r["seconds"]
            print(
                f"realistic prose (labels_prose.jsonl repeated): {r['labelled']} reports in "
                f"{r['seconds']:.1f} s: {rate:,.0f} reports/s on one core, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB"
            )
            ok &= rate >= 5000
    print(
        "targets (>= 5,000 reports/s without cross-check, peak RSS < 1 GB):",
        "met" if ok else "NOT met",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
