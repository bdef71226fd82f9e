"""Per-class precision / recall / F1 of both label extractors against the hand-labelled set.

Usage: .venv/bin/python Testing/benchmarks/label_accuracy.py
Targets: micro F1 >= 0.95 for structured findings, >= 0.90 for free text.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "Python"), str(HERE.parents[1] / "JMIDAnomaly")]

from gold import f1, load_gold, score  # noqa: E402
from JMIDAnomalyLib.labels.extract import Extractor  # noqa: E402


def main() -> int:
    gold = load_gold()
    extractor = Extractor()
    ok = True
    for mode, target in (("structured", 0.95), ("text", 0.90)):
        items = [g for g in gold if mode == "text" or "structured" in g]
        table = score(items, extractor, mode)
        print(f"\n{mode} extractor on {len(items)} hand-labelled reports")
        print(f"{'class':40s} {'TP':>4s} {'FP':>4s} {'FN':>4s} {'prec':>6s} {'rec':>6s} {'F1':>6s}")
        for key, (tp, fp, fn) in table.items():
            if tp + fp + fn == 0:
                continue
            p, r, f = f1(tp, fp, fn)
            print(f"{key:40s} {tp:4d} {fp:4d} {fn:4d} {p:6.3f} {r:6.3f} {f:6.3f}")
        sums = [
            sum(v[i] for k, v in table.items() if not k.endswith("nofinding")) for i in range(3)
        ]
        p, r, f = f1(*sums)
        print(
            f"{'micro (abnormal classes)':40s} {sums[0]:4d} {sums[1]:4d} {sums[2]:4d} "
            f"{p:6.3f} {r:6.3f} {f:6.3f}"
        )
        print(f"target F1 >= {target}: {'met' if f >= target else 'NOT met'}")
        ok &= f >= target
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
