"""Per-class precision / recall / F1 of both label extractors against the hand-labelled sets.

- ``labels_gold.jsonl`` (146 short reports, one construct at a time): micro F1 >= 0.95
  structured, >= 0.90 free text.
- ``labels_prose.jsonl`` (200 realistic reports, half Japanese, half English): abnormal-class
  micro F1 >= 0.98 structured, >= 0.97 free text. ``absent`` (removed organs) is printed on its
  own line and not counted in the micro figure, nor is ``nofinding``.

Usage: .venv/bin/python Testing/benchmarks/label_accuracy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "Python"), str(HERE.parents[1] / "JMIDAnomaly")]

from gold import GOLD_FILE, PROSE_FILE, f1, load_gold, score  # noqa: E402
from JMIDAnomalyLib.labels.extract import Extractor  # noqa: E402


def main() -> int:
    extractor = Extractor()
    ok = True
    runs = (
        (GOLD_FILE, "structured", 0.95),
        (GOLD_FILE, "text", 0.90),
        (PROSE_FILE, "structured", 0.98),
        (PROSE_FILE, "text", 0.97),
    )
    for path, mode, target in runs:
        items = [g for g in load_gold(path) if mode == "text" or "structured" in g]
        table = score(items, extractor, mode)
        print(f"\n{mode} extractor on {len(items)} hand-labelled reports ({path.name})")
        print(f"{'class':40s} {'TP':>4s} {'FP':>4s} {'FN':>4s} {'prec':>6s} {'rec':>6s} {'F1':>6s}")
        for key, (tp, fp, fn) in table.items():
            if tp + fp + fn == 0:
                continue
            p, r, f = f1(tp, fp, fn)
            print(f"{key:40s} {tp:4d} {fp:4d} {fn:4d} {p:6.3f} {r:6.3f} {f:6.3f}")
        sums = [
            sum(v[i] for k, v in table.items() if not k.endswith(("nofinding", "absent")))
            for i in range(3)
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
