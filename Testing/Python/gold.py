"""The hand-labelled report sets and helpers to score extractors on them.

- ``data/labels_gold.jsonl``: short sentences, one construct at a time (146 reports).
- ``data/labels_prose.jsonl``: 200 realistic reports (100 Japanese, 100 English, several
  sentences, 2-6 organs each) written for this test set apart from the rule tables, covering
  past and post-operative statements, removed organs, hedged negation, comparisons with prior
  exams, attribution when a sentence names several organs, and section headers
  (``constructs`` lists what each one exercises).

Each line: ``text`` (Japanese or English), optional ``structured`` entities in a compact form
``[surface, certainty_score, [anatomy...], [[clinical_finding, score], ...]]``, and ``gold``:
organ row (``liver``, ``kidney_left`` ...) -> abnormal classes present; ``cls?`` marks an
uncertain finding. Rows not listed are normal (nofinding); rows in ``absent`` were removed
(every cell unknown, ``absent`` = 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.labels.labeling import ORGAN_ROWS, LabelOptions, evidence_to_labels

GOLD_FILE = Path(__file__).with_name("data") / "labels_gold.jsonl"
PROSE_FILE = Path(__file__).with_name("data") / "labels_prose.jsonl"
LEVELS = {0: "denial", 1: "unlikely", 2: "possible", 3: "likely", 4: "definitive"}


def row_key(organ: str, side: str | None) -> str:
    return f"{organ}_{side}" if side else organ


def load_gold(path: Path = GOLD_FILE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _entity(
    text: str, surface: str, score: int, kind: str, modifiers: list, after: int = 0
) -> dict:
    start = text.find(surface, after)
    start = start if start >= 0 else text.find(surface)
    return {
        "type": kind,
        "tokens": list(surface),
        "start_idx": start if start >= 0 else None,
        "end_idx": start + len(surface) - 1 if start >= 0 else None,
        "surface_name": surface,
        "surface_id": None,
        "certainty_level": LEVELS[score] if kind != "Anatomical_entity" else None,
        "certainty_score": score if kind != "Anatomical_entity" else None,
        "modifiers": modifiers,
        "is_findings": None,
    }


def expand_entities(text: str, compact: list) -> list[dict]:
    """Compact entities -> the J-MID structured form (as in shared/specimens). Entities are in
    report order: each is looked for after the previous one, as its offsets would be."""
    out, after = [], 0
    for key, (surface, score, anatomy, findings) in enumerate(compact):
        modifiers = [_entity(text, a, 4, "Anatomical_entity", [], after) for a in anatomy]
        modifiers += [_entity(text, f, s, "Clinical_finding", [], after) for f, s in findings]
        kind = "Clinical_finding" if not anatomy and not findings else "Imaging_observation"
        entity = _entity(text, surface, score, kind, modifiers, after)
        if entity["end_idx"] is not None:
            after = entity["end_idx"] + 1
        entity["key"] = key
        out.append(entity)
    return out


def gold_labels(item: dict, uncertain: str = "positive") -> dict[str, dict[str, int | None]]:
    value_of_uncertain = {"positive": 1, "negative": 0, "ignore": None}[uncertain]
    out = {}
    for organ, side in ORGAN_ROWS:
        classes = ORGAN_CLASSES[organ]
        if row_key(organ, side) in item.get("absent", ()):
            out[row_key(organ, side)] = {**dict.fromkeys(classes), "absent": 1}
            continue
        listed = item["gold"].get(row_key(organ, side), [])
        values = {c: 0 for c in classes[:-1]}
        for cls in listed:
            values[cls.rstrip("?")] = value_of_uncertain if cls.endswith("?") else 1
        abnormal = list(values.values())
        values["nofinding"] = 0 if 1 in abnormal else (None if None in abnormal else 1)
        out[row_key(organ, side)] = {**values, "absent": 0}
    return out


def predicted_labels(item: dict, extractor, mode: str, uncertain: str = "positive"):
    """mode 'structured' (entities) or 'text' (free text)."""
    if mode == "structured":
        extraction = extractor.from_entities(
            expand_entities(item["text"], item["structured"]), item["text"]
        )
    else:
        extraction = extractor.from_text(item["text"])
    labels = evidence_to_labels(extraction.evidence, LabelOptions(uncertain=uncertain))
    return {row_key(*key): {**row.values, "absent": int(row.absent)} for key, row in labels.items()}


def score(items: list[dict], extractor, mode: str) -> dict[str, tuple[int, int, int]]:
    """Per class key 'organ.class': (true positives, false positives, false negatives)."""
    table: dict[str, list[int]] = {}
    for item in items:
        gold = gold_labels(item)
        predicted = predicted_labels(item, extractor, mode)
        for row, values in gold.items():
            organ = row.split("_")[0]
            for cls, value in values.items():
                cell = table.setdefault(f"{organ}.{cls}", [0, 0, 0])
                guess = predicted[row][cls]
                cell[0] += int(value == 1 and guess == 1)
                cell[1] += int(value != 1 and guess == 1)
                cell[2] += int(value == 1 and guess != 1)
    return {k: tuple(v) for k, v in sorted(table.items())}


def f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f
