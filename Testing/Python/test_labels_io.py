"""`jmid labels` end to end: input formats and encodings, bad rows, options, output files."""

from __future__ import annotations

import csv
import json

import pytest
from gold import expand_entities, gold_labels, load_gold, row_key
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES, ORGANS
from JMIDAnomalyLib.labels.labeling import LabelOptions, label_reports

HEADER = ["file_name", "患者ID", "所見", "findings_Eng", "所見_JSON"]


def gold_rows() -> list[list[str]]:
    rows = []
    for i, item in enumerate(load_gold()):
        structured = ""
        if "structured" in item:
            entities = expand_entities(item["text"], item["structured"])
            structured = json.dumps(entities, ensure_ascii=False)
        rows.append(
            [
                f"{item['id']}.nii.gz",
                f"P{i // 3:03d}",  # three exams per patient
                item["text"] if item["lang"] == "ja" else "",
                item["text"] if item["lang"] == "en" else "",
                structured,
            ]
        )
    return rows


def write_csv(path, rows, encoding="utf-8", header=HEADER):
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_labels(out, organ):
    with (out / f"{organ}.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_export_csv_in_each_encoding_gives_the_hand_labels(tmp_path, encoding):
    source = write_csv(tmp_path / "reports.csv", gold_rows(), encoding)
    out = tmp_path / "labels"
    assert main(["labels", "--reports", str(source), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["reports_labelled"] == len(load_gold()) and not summary["rows_skipped"]
    for organ in ORGANS:
        rows = read_labels(out, organ)
        assert list(rows[0])[:3] == ["case_id", "patient_id", "side"]
        assert list(rows[0])[3:-2] == list(ORGAN_CLASSES[organ])
        assert list(rows[0])[-2:] == ["absent", "evidence"]
    by_case = {(r["case_id"], r["side"]): r for r in read_labels(out, "kidney")}
    for item in load_gold():
        expected = gold_labels(item)
        for side in ("left", "right"):
            row = by_case[(item["id"], side)]
            for cls, value in expected[row_key("kidney", side)].items():
                assert row[cls] == str(value), (item["text"], side, cls)
    liver = {r["case_id"]: r for r in read_labels(out, "liver")}
    assert liver["gold_001"]["evidence"] == "cyst: 肝S6に12mmの嚢胞を認めます。"


def test_output_is_deterministic(tmp_path):
    source = write_csv(tmp_path / "reports.csv", gold_rows())
    label_reports(source, tmp_path / "a")
    label_reports(source, tmp_path / "b")
    for organ in ORGANS:
        assert (tmp_path / "a" / f"{organ}.csv").read_bytes() == (
            tmp_path / "b" / f"{organ}.csv"
        ).read_bytes()


def test_bad_rows_are_reported_and_the_rest_processed(tmp_path):
    good = gold_rows()[:5]
    rows = good + [
        ["bad_json.nii.gz", "P9", "肝嚢胞を認めます。", "", "[{not json"],
        ["bad_json_only.nii.gz", "P9", "", "", "[{not json"],
        ["empty.nii.gz", "P9", "", "", ""],
        ["extra.nii.gz", "P9", "肝嚢胞", "", "", "surplus cell"],
        [good[0][0], "P0", "duplicate", "", ""],
    ]
    path = write_csv(tmp_path / "reports.csv", rows, header=[*HEADER, "comment"][:5])
    # An undecodable line: raw bytes that are neither UTF-8 nor CP932 text.
    with path.open("ab") as f:
        f.write(b"undecodable.nii.gz,P9," + b"\xff\xfe\x80\x81 bad\n")
    summary = label_reports(path, tmp_path / "out")
    skipped = {s["row"]: s["reason"] for s in summary["rows_skipped"]}
    assert skipped[7].startswith("malformed structured JSON")
    assert skipped[8].startswith("empty report")
    assert "more cells" in skipped[9]
    assert skipped[10] == "duplicate case id"
    assert "undecodable" in skipped[11]
    problems = {p["row"]: p["problem"] for p in summary["rows_with_problems"]}
    assert "used the free text" in problems[6]
    liver = {r["case_id"]: r for r in read_labels(tmp_path / "out", "liver")}
    assert liver["bad_json"]["cyst"] == "1"
    assert summary["reports_labelled"] == 6


def test_unknown_columns_are_reported(tmp_path):
    path = write_csv(
        tmp_path / "r.csv", [[*r, "x"] for r in gold_rows()[:3]], header=[*HEADER, "備考"]
    )
    summary = label_reports(path, tmp_path / "out")
    assert summary["file_problems"] == ["unknown columns ignored: 備考"]


def test_nothing_readable_fails_and_writes_nothing(tmp_path, capsys):
    path = write_csv(tmp_path / "r.csv", [["a.nii.gz", "P1", "", "", ""]])
    out = tmp_path / "out"
    assert main(["labels", "--reports", str(path), "--out", str(out)]) == 2
    assert "no report could be read" in capsys.readouterr().err
    assert not any(out.iterdir())
    wrong = write_csv(tmp_path / "w.csv", [["x"]], header=["name"])
    with pytest.raises(InputError, match="no case column"):
        label_reports(wrong, out)


def test_jsonl_and_folder_inputs_match_the_csv(tmp_path):
    rows = gold_rows()[:40]
    label_reports(write_csv(tmp_path / "r.csv", rows), tmp_path / "from_csv")
    with (tmp_path / "r.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            record = dict(
                zip(["case_id", "patient_id", "findings_ja", "findings_en"], r[:4], strict=True)
            )
            if r[4]:
                record["structured"] = json.loads(r[4])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    label_reports(tmp_path / "r.jsonl", tmp_path / "from_jsonl")
    folder = tmp_path / "cases"
    folder.mkdir()
    for r in rows:
        case = r[0].removesuffix(".nii.gz")
        (folder / f"{case}.txt").write_text(r[2] or r[3], encoding="utf-8")
        data = {"patient_id": r[1]} | ({"structured": json.loads(r[4])} if r[4] else {})
        (folder / f"{case}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    label_reports(folder, tmp_path / "from_folder")
    for organ in ORGANS:
        expected = (tmp_path / "from_csv" / f"{organ}.csv").read_bytes()
        assert (tmp_path / "from_jsonl" / f"{organ}.csv").read_bytes() == expected
        assert (tmp_path / "from_folder" / f"{organ}.csv").read_bytes() == expected


def test_user_keyword_table_replaces_the_builtin_one(tmp_path):
    tables = tmp_path / "taxonomy"
    tables.mkdir()
    # The published format: keyword,keyword_en,frequency,category (index into the liver classes).
    (tables / "liver.csv").write_text(
        "keyword,keyword_en,frequency,category\n嚢胞,cyst,120,3\n異常,abnormal,5,7\n",
        encoding="utf-8",
    )
    source = write_csv(
        tmp_path / "r.csv", [["c1.nii.gz", "P1", "肝S6に嚢胞を認めます。脂肪肝です。", "", ""]]
    )
    summary = label_reports(source, tmp_path / "out", LabelOptions(taxonomy=str(tables)))
    liver = read_labels(tmp_path / "out", "liver")[0]
    assert liver["SOL"] == "1" and liver["cyst"] == "0"
    assert summary["taxonomy"]["liver"] == str(tables / "liver.csv")
    # A bad row is named in the summary and left out; the rest of the table is used.
    (tables / "liver.csv").write_text(
        "keyword,keyword_en,frequency,category\n嚢胞,cyst,1,42\n異常,abnormal,5,7\n",
        encoding="utf-8",
    )
    summary = label_reports(source, tmp_path / "out2", LabelOptions(taxonomy=str(tables)))
    [problem] = summary["taxonomy_problems"]
    assert "liver.csv: line 2: category '42'" in problem
    (tables / "liver.csv").write_text("word,kind\n嚢胞,3\n", encoding="utf-8")
    with pytest.raises(InputError, match="expected the columns keyword"):
        label_reports(source, tmp_path / "out3", LabelOptions(taxonomy=str(tables)))


@pytest.mark.parametrize(
    ("data", "what"),
    [
        # The published kidney table: its header lacks keyword_en, its rows have it.
        ("keyword,frequency,category\n嚢胞,cyst,10,0\n結石,stone,3,5\n".encode(), "header"),
        (
            "\ufeffkeyword,keyword_en,frequency,category\n嚢胞,cyst,1,0\n結石,stone,1,5\n".encode(),
            "bom",
        ),
        (
            "keyword,keyword_en,frequency,category\n嚢胞,cyst,1,0\n結石,stone,1,5\n".encode(
                "cp932"
            ),
            "cp932",
        ),
        ("category,keyword,note\n0,嚢胞,x\n5,結石,y\n".encode(), "extra columns"),
    ],
)
def test_keyword_tables_are_read_tolerantly(tmp_path, data, what):
    from JMIDAnomalyLib.labels.taxonomy import Taxonomy

    (tmp_path / "kidney.csv").write_bytes(data)
    taxonomy = Taxonomy.load(tmp_path)
    assert taxonomy.keywords["嚢胞"]["kidney"] == "cyst", what
    assert taxonomy.keywords["結石"]["kidney"] == "calcification", what
    assert taxonomy.problems == [], what


def test_unmentioned_unknown_leaves_cells_empty(tmp_path):
    source = write_csv(tmp_path / "r.csv", [["c1.nii.gz", "P1", "肝S6に嚢胞を認めます。", "", ""]])
    label_reports(source, tmp_path / "out", LabelOptions(unmentioned="unknown"))
    assert read_labels(tmp_path / "out", "liver")[0]["cyst"] == "1"
    spleen = read_labels(tmp_path / "out", "spleen")[0]
    assert all(spleen[c] == "" for c in ORGAN_CLASSES["spleen"])


def test_options_round_trip_and_reject_bad_values():
    options = LabelOptions(uncertain="ignore", unmentioned="unknown")
    assert LabelOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    with pytest.raises(InputError, match="uncertain"):
        LabelOptions(uncertain="maybe")
