"""Labels from realistic report prose: the 200-report hand-labelled set and each construct
(past and post-operative statements, removed organs, hedged negation, comparisons, attribution,
section headers) in Japanese and English, with the evidence naming the deciding cue."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import pytest
from gold import PROSE_FILE, expand_entities, f1, load_gold, score
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.labels.extract import Extractor
from JMIDAnomalyLib.labels.labeling import LabelOptions, evidence_to_labels

PROSE = load_gold(PROSE_FILE)
EXTRACTOR = Extractor()
CONSTRUCTS = ("history", "removed", "hedged", "comparison", "resolved", "attribution", "sections")


def test_the_prose_set_is_what_it_claims():
    assert len(PROSE) >= 200 and len({item["id"] for item in PROSE}) == len(PROSE)
    languages = Counter(item["lang"] for item in PROSE)
    assert languages["ja"] >= 95 and languages["en"] >= 95
    assert sum("structured" in item for item in PROSE) >= 60
    for item in PROSE:
        assert len(re.findall(r"。|\.(?:\s|$)|\n", item["text"])) >= 2, item["id"]
    for construct in CONSTRUCTS:
        for lang in ("ja", "en"):
            n = sum(construct in i["constructs"] and i["lang"] == lang for i in PROSE)
            assert n >= 4, (construct, lang, n)


@pytest.mark.parametrize("mode,target", [("text", 0.97), ("structured", 0.98)])
def test_abnormal_class_f1_on_realistic_prose(mode, target):
    items = [item for item in PROSE if mode == "text" or "structured" in item]
    table = score(items, EXTRACTOR, mode)
    tp, fp, fn = (
        sum(v[i] for k, v in table.items() if not k.endswith(("nofinding", "absent")))
        for i in range(3)
    )
    assert f1(tp, fp, fn)[2] >= target, (tp, fp, fn)
    # removed organs: every hand-marked one found, none invented
    assert table_absent(table) == (sum(len(i.get("absent", ())) for i in items), 0, 0)


def table_absent(table):
    cells = [v for k, v in table.items() if k.endswith(".absent")]
    return tuple(sum(c[i] for c in cells) for i in range(3))


def _rows(text: str, entities=None, **options):
    extraction = (
        EXTRACTOR.from_entities(expand_entities(text, entities), text)
        if entities is not None
        else EXTRACTOR.from_text(text)
    )
    labels = evidence_to_labels(extraction.evidence, LabelOptions(**options))
    return {f"{o}_{s}" if s else o: row for (o, s), row in labels.items()}


# (construct, text, row, class, expected value, a piece of the evidence entry or None)
CASES = [
    (
        "history",
        "胆石症の既往があります。胆嚢に異常はありません。",
        "gallbladder",
        "gallstone",
        0,
        "past gallstone: 胆石症の既往があります。 [history: 既往]",
    ),
    (
        "history",
        "History of gallstones. The gallbladder is normal.",
        "gallbladder",
        "gallstone",
        0,
        "past gallstone: History of gallstones. [history: history of]",
    ),
    (
        "history",
        "【臨床情報】膵癌疑い。\n【所見】膵臓に異常はありません。",
        "pancreas",
        "SOL",
        0,
        None,
    ),
    (
        "history",
        "INDICATION: Rule out pancreatic cancer.\nFINDINGS: The pancreas is normal.",
        "pancreas",
        "SOL",
        0,
        None,
    ),
    (
        "hedged",
        "主膵管の拡張は目立ちません。",
        "pancreas",
        "pancreatic_duct_dilation",
        0,
        "[negation: 目立ちません]",
    ),
    (
        "hedged",
        "肝内に占拠性病変は明らかではありません。",
        "liver",
        "SOL",
        0,
        "[negation: 明らかではありません]",
    ),
    (
        "hedged",
        "膵尾部に腫瘤は同定できません。",
        "pancreas",
        "SOL",
        0,
        "[negation: 同定できません]",
    ),
    (
        "hedged",
        "Without evidence of pancreatic duct dilatation.",
        "pancreas",
        "pancreatic_duct_dilation",
        0,
        "[negation: without evidence of]",
    ),
    (
        "hedged",
        "No significant hepatic steatosis.",
        "liver",
        "fatty_liver",
        0,
        "[negation: no significant]",
    ),
    (
        "hedged",
        "The gallbladder stones are not well seen.",
        "gallbladder",
        "gallstone",
        0,
        "[negation: not well seen]",
    ),
    (
        "comparison",
        "肝S6の嚢胞は前回と比較して著変ありません。",
        "liver",
        "cyst",
        1,
        "[comparison: 著変ありません (unchanged)]",
    ),
    (
        "comparison",
        "膵体部の嚢胞は前回より増大しています。",
        "pancreas",
        "cyst",
        1,
        "[comparison: 増大 (changed)]",
    ),
    (
        "comparison",
        "No interval change in the hepatic cyst.",
        "liver",
        "cyst",
        1,
        "[comparison: no interval change (unchanged)]",
    ),
    (
        "comparison",
        "Interval increase in the left adrenal nodule.",
        "adrenal_left",
        "SOL",
        1,
        "[comparison: interval increase (changed)]",
    ),
    ("resolved", "前回指摘された肝嚢胞は消失しています。", "liver", "cyst", 0, "[negation: 消失]"),
    (
        "resolved",
        "The previously described splenic cyst has resolved.",
        "spleen",
        "cyst",
        0,
        "[negation: resolved]",
    ),
    ("attribution", "肝門部に腫大したリンパ節を認めます。", "liver", "deformation", 0, None),
    (
        "attribution",
        "Enlarged lymph nodes are seen near the pancreatic head.",
        "pancreas",
        "enlargement",
        0,
        None,
    ),
    ("attribution", "肝臓に嚢胞、脾臓に石灰化を認めます。", "spleen", "cyst", 0, None),
    (
        "attribution",
        "A calcified granuloma is noted in the spleen, and the liver has a small cyst.",
        "liver",
        "calcification",
        0,
        None,
    ),
    ("attribution", "A 6 mm calcified gallstone is seen.", "gallbladder", "gallstone", 1, None),
    (
        "attribution",
        "胆嚢に接する十二指腸壁の肥厚を認めます。",
        "gallbladder",
        "wall_thickening",
        0,
        None,
    ),
    (
        "sections",
        "Findings: Hepatic cyst in segment 6.\nImpression: Hepatic cyst.",
        "liver",
        "cyst",
        1,
        "cyst: Hepatic cyst in segment 6.",
    ),
    ("sections", "所見：\n肝S5に嚢胞を認めます。\n診断：\n肝嚢胞", "liver", "cyst", 1, None),
]


@pytest.mark.parametrize(
    "construct,text,row,cls,value,evidence", CASES, ids=[f"{c[0]}-{c[1][:24]}" for c in CASES]
)
def test_construct(construct, text, row, cls, value, evidence):
    result = _rows(text)[row]
    assert result.values[cls] == value, (text, result)
    if evidence:
        assert any(evidence in e for e in result.entries()), result.entries()


@pytest.mark.parametrize(
    "text,absent,present",
    [
        ("胆嚢摘出術後です。総胆管に拡張はありません。", ["gallbladder"], []),
        ("胆摘後です。右腎摘出後。", ["gallbladder", "kidney_right"], ["kidney_left"]),
        ("右腎部分切除術後です。", [], ["kidney_right"]),
        ("膵頭十二指腸切除術後の状態です。", [], ["pancreas"]),
        ("【既往歴】胆嚢摘出術、虫垂切除術。\n【所見】脂肪肝です。", ["gallbladder"], []),
        (
            "Status post right nephrectomy and left adrenalectomy.",
            ["kidney_right", "adrenal_left"],
            ["kidney_left", "adrenal_right"],
        ),
        ("Status post left partial nephrectomy.", [], ["kidney_left"]),
        ("Status post nephrectomy.", [], ["kidney_left", "kidney_right"]),  # side unknown
        (
            "History of pancreatic cancer, status post distal pancreatectomy and splenectomy.",
            ["spleen"],
            ["pancreas"],
        ),
        ("Surgically absent gallbladder.", ["gallbladder"], []),
    ],
)
def test_removed_organs_are_absent_not_normal(text, absent, present):
    rows = _rows(text)
    for key in absent:
        assert rows[key].absent and set(rows[key].values.values()) == {None}, (text, key)
        assert rows[key].entries()[0].startswith("removed: "), rows[key].entries()
    for key in present:
        assert not rows[key].absent, (text, key)


def test_structured_findings_read_history_and_removal_from_their_sentences():
    text = "胆石症の既往あり、胆嚢摘出術後です。肝嚢胞の既往あり。今回も肝S3に嚢胞を認めます。"
    entities = [
        ["胆石症", 4, [], []],
        ["摘出術後", 4, ["胆嚢"], []],
        ["肝嚢胞", 4, [], []],
        ["嚢胞", 4, ["肝S3"], []],
    ]
    rows = _rows(text, entities)
    assert rows["gallbladder"].absent
    assert rows["liver"].values["cyst"] == 1
    assert any(e.startswith("cyst: 今回も肝S3") for e in rows["liver"].entries())
    only_history = _rows("胆石症の既往あり。", [["胆石症", 4, [], []]])["gallbladder"]
    assert only_history.values["gallstone"] == 0 and only_history.values["nofinding"] == 1
    assert only_history.entries() == ["past gallstone: 胆石症の既往あり。 [history: 既往]"]


def test_label_files_have_the_absent_column_and_explain_prints_the_cues(tmp_path, capsys):
    reports = tmp_path / "reports.csv"
    with reports.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "患者ID", "所見"])
        writer.writerow(
            [
                "c1.nii.gz",
                "p1",
                "胆嚢摘出術後です。主膵管の拡張は目立ちません。"
                "肝S7の嚢胞は前回と比較して著変ありません。",
            ]
        )
        writer.writerow(["c2.nii.gz", "p2", "Status post right nephrectomy. Fatty liver."])
    assert main(["labels", "--reports", str(reports), "--out", str(tmp_path / "labels")]) == 0
    with (tmp_path / "labels" / "gallbladder.csv").open(encoding="utf-8") as f:
        gallbladder = {r["case_id"]: r for r in csv.DictReader(f)}
    assert gallbladder["c1"]["absent"] == "1" and gallbladder["c1"]["nofinding"] == ""
    assert gallbladder["c2"]["absent"] == "0" and gallbladder["c2"]["nofinding"] == "1"
    with (tmp_path / "labels" / "kidney.csv").open(encoding="utf-8") as f:
        kidney = {(r["case_id"], r["side"]): r["absent"] for r in csv.DictReader(f)}
    assert kidney[("c2", "right")] == "1" and kidney[("c2", "left")] == "0"
    summary = json.loads((tmp_path / "labels" / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["gallbladder"]["absent"] == 1
    capsys.readouterr()
    assert main(["labels", "--reports", str(reports), "--explain", "c1"]) == 0
    printed = capsys.readouterr().out
    assert "gallbladder      absent (removed)" in printed
    assert "[removal: 摘出]" in printed
    assert (
        "no pancreatic_duct_dilation: 主膵管の拡張は目立ちません。 [negation: 目立ちません]"
        in printed
    )
    assert "[comparison: 著変ありません (unchanged)]" in printed
    assert main(["labels", "--reports", str(reports), "--explain", "nope"]) == 2
    assert "no report for case 'nope'" in capsys.readouterr().err
