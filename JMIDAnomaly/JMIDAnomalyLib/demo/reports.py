"""Reports for the demo cohort, in the J-MID export format (Japanese, English, structured JSON).

Each finding becomes one sentence in both languages and one structured entity whose token
indices point into the Japanese text, as the J-MID export does. Some normal organs get a
negative statement, others are not mentioned; some findings are worded as uncertain; digits
are sometimes full-width.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from JMIDAnomalyLib.demo.planting import PlantedFinding

SIDE_JA = {"left": "左", "right": "右"}
ORGAN_JA = {
    "liver": "肝臓",
    "gallbladder": "胆嚢",
    "pancreas": "膵臓",
    "spleen": "脾臓",
    "kidney": "両腎",
    "adrenal": "副腎",
    "esophagus": "食道",
}
ORGAN_EN = {
    "liver": "liver",
    "gallbladder": "gallbladder",
    "pancreas": "pancreas",
    "spleen": "spleen",
    "kidney": "kidneys",
    "adrenal": "adrenal glands",
    "esophagus": "esophagus",
}
PANCREAS_PARTS = (("膵頭部", "head"), ("膵体部", "body"), ("膵尾部", "tail"))


def _digits(value: float, rng: np.random.Generator) -> str:
    text = str(int(round(value)))
    return "".join(chr(ord(c) + 0xFEE0) for c in text) if rng.random() < 0.3 else text


def _sentence(f: PlantedFinding, rng: np.random.Generator, uncertain: bool):
    """(Japanese sentence, anatomy surface or None, finding surface, English sentence)."""
    size = max(1, int(round(f.size_mm)))
    s_ja = _digits(size, rng)
    verb = "疑います" if uncertain else "認めます"
    maybe = "possible " if uncertain else ""
    if f.organ == "liver":
        seg = int(rng.integers(1, 9))
        a, place = f"肝S{seg}", f"liver segment {seg}"
        if f.cls == "cyst":
            return (
                f"{a}に{s_ja}mm大の嚢胞を{verb}。",
                a,
                "嚢胞",
                f"A {maybe}{size} mm cyst in {place}.",
            )
        if f.cls == "SOL":
            return (
                f"{a}に{s_ja}mm大の腫瘤を{verb}。",
                a,
                "腫瘤",
                f"A {maybe}{size} mm mass in {place}.",
            )
        if f.cls == "calcification":
            return f"{a}に石灰化を{verb}。", a, "石灰化", f"A {maybe}calcification in {place}."
        if f.cls == "fatty_liver":
            english = "Possible fatty liver." if uncertain else "Fatty liver."
            return f"脂肪肝を{verb}。", None, "脂肪肝", english
    if f.organ == "spleen":
        if f.cls == "deformation":
            english = "Possible splenomegaly." if uncertain else "Splenomegaly."
            return f"脾腫を{verb}。", None, "脾腫", english
        english = f"A {maybe}{size} mm cyst in the spleen."
        return f"脾臓に{s_ja}mm大の嚢胞を{verb}。", "脾臓", "嚢胞", english
    if f.organ == "kidney":
        a = f"{SIDE_JA[f.side]}腎"
        word_ja, word_en = ("嚢胞", "cyst") if f.cls == "cyst" else ("結石", "stone")
        english = f"A {maybe}{size} mm {word_en} in the {f.side} kidney."
        return f"{a}に{s_ja}mm大の{word_ja}を{verb}。", a, word_ja, english
    if f.organ == "pancreas":
        if f.cls == "pancreatic_duct_dilation":
            english = f"The main pancreatic duct is dilated to {size} mm."
            return f"主膵管は{s_ja}mmに拡張しています。", "主膵管", "拡張", english
        part_ja, part_en = PANCREAS_PARTS[int(rng.integers(3))]
        english = f"A {maybe}{size} mm hypoattenuating mass in the pancreatic {part_en}."
        return f"{part_ja}に{s_ja}mm大の低吸収腫瘤を{verb}。", part_ja, "低吸収腫瘤", english
    if f.organ == "gallbladder":
        english = f"A {maybe}{size} mm gallstone."
        return f"胆嚢内に{s_ja}mm大の結石を{verb}。", "胆嚢", "結石", english
    raise ValueError(f"no report template for {f.organ} {f.cls}")


def _entity(
    text: str,
    offset: int,
    surface: str,
    kind: str,
    score: int | None = None,
    level: str | None = None,
    modifiers: list | None = None,
) -> dict:
    start = offset + text.index(surface)
    return {
        "type": kind,
        "tokens": list(surface),
        "start_idx": start,
        "end_idx": start + len(surface) - 1,
        "surface_name": surface,
        "surface_id": None,
        "certainty_level": level,
        "certainty_score": score,
        "key": 0,
        "modifiers": modifiers or [],
        "is_findings": None,
    }


def write_report(
    findings: list[PlantedFinding], rng: np.random.Generator, uncertain_rate: float = 0.15
) -> tuple[str, str, str]:
    """(Japanese text, English text, structured JSON) for the reported findings of a case."""
    ja, en, entities = [], [], []
    offset = 0
    mentioned = set()
    for f in findings:
        if not f.reported:
            continue
        uncertain = rng.random() < uncertain_rate
        sentence, anatomy, surface, english = _sentence(f, rng, uncertain)
        score, level = (2, "possible") if uncertain else (4, "definitive")
        modifiers = []
        if anatomy:
            modifiers.append(_entity(sentence, offset, anatomy, "Anatomical_entity"))
        kind = "Imaging_observation" if anatomy else "Clinical_finding"
        entities.append(_entity(sentence, offset, surface, kind, score, level, modifiers))
        ja.append(sentence)
        en.append(english)
        offset += len(sentence)
        mentioned.add(f.organ)
    normal = [o for o in ORGAN_JA if o not in {f.organ for f in findings}]
    rng.shuffle(normal)
    for organ in normal[: int(rng.integers(0, len(normal) + 1))]:
        sentence = f"{ORGAN_JA[organ]}に異常所見は認めません。"
        anatomy = _entity(sentence, offset, ORGAN_JA[organ], "Anatomical_entity")
        negated = _entity(
            sentence, offset, "異常所見", "Imaging_observation", 0, "denial", [anatomy]
        )
        entities.append(negated)
        ja.append(sentence)
        en.append(f"No abnormal findings in the {ORGAN_EN[organ]}.")
        offset += len(sentence)
    for key, entity in enumerate(entities):
        entity["key"] = key
    return "".join(ja), " ".join(en), json.dumps(entities, ensure_ascii=False)


def label_check(truth: list[dict], labels_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Per planted kind in the cohort's ``truth``: (planted, mentioned in the reports, labelled
    positive by the label importer, whose CSVs are in ``labels_dir``)."""
    positives: set[tuple[str, str, str, str]] = set()
    for organ in ("liver", "spleen", "kidney", "pancreas", "gallbladder"):
        with (labels_dir / f"{organ}.csv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for cls, value in row.items():
                    if value == "1":
                        positives.add((row["case_id"], organ, row["side"], cls))
    table: dict[str, list[int]] = {}
    for record in truth:
        for f in record["findings"]:
            cell = table.setdefault(f"{f['organ']}.{f['cls']}", [0, 0, 0])
            cell[0] += 1
            cell[1] += int(f["reported"])
            cell[2] += int((record["case_id"], f["organ"], f["side"] or "", f["cls"]) in positives)
    return {k: tuple(v) for k, v in table.items()}
