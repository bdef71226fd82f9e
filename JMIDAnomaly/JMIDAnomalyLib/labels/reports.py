"""Streaming readers for report exports; one :class:`Report` at a time, bad rows reported.

Inputs:
- the J-MID export CSV (columns ``file_name``, ``患者ID``, ``所見``, ``findings_Eng``,
  ``所見_JSON``) in UTF-8, UTF-8 with BOM, or CP932 / Shift-JIS;
- JSON Lines with the same keys (or ``case_id``, ``patient_id``, ``findings_ja``,
  ``findings_en``, ``structured``);
- a folder of per-case files: ``<case>.json`` (the entity list, or an object with the keys
  above) and/or ``<case>.txt`` (free text).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError

CASE_KEYS = ("file_name", "case_id")
PATIENT_KEYS = ("患者ID", "patient_id")
TEXT_JA_KEYS = ("所見", "findings_ja", "findings")
TEXT_EN_KEYS = ("findings_Eng", "findings_en")
STRUCTURED_KEYS = ("所見_JSON", "structured")
KNOWN_COLUMNS = {*CASE_KEYS, *PATIENT_KEYS, *TEXT_JA_KEYS, *TEXT_EN_KEYS, *STRUCTURED_KEYS}
_VOLUME_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd|\.dcm)$", re.I)
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
csv.field_size_limit(16 * 1024 * 1024)


@dataclass
class Report:
    """One exam's report.

    Attributes:
        row: 1-based record number in the input (data rows; the CSV header is not counted).
        case_id: the CT's file name without its extension.
        patient_id: group key for cross-validation.
        text: free text (Japanese if present, else English).
        entities: the structured findings, or None when absent or unreadable.
        problem: what was wrong with the row when something was (it is still used if possible).
    """

    row: int
    case_id: str
    patient_id: str
    text: str
    entities: list | None
    problem: str | None = None


@dataclass
class BadRow:
    """A row that cannot be used, with its row number, case id and the reason."""

    row: int
    reason: str
    case_id: str = ""


def case_id_from_name(name: str) -> str:
    """The case id of a CT file name (``case_01.nii.gz`` -> ``case_01``)."""
    return _VOLUME_SUFFIX.sub("", Path(name.strip()).name)


def _first(record: dict, keys: tuple[str, ...]) -> str:
    for key in keys:
        value = record.get(key)
        if value is not None and str(value).strip():
            return value if isinstance(value, list) else str(value)
    return ""


def _make_report(row: int, record: dict) -> Report | BadRow:
    case = case_id_from_name(str(_first(record, CASE_KEYS)))
    if not case:
        return BadRow(row, "no case id (file_name is empty)")
    for value in record.values():
        if isinstance(value, str) and _UNDECODABLE.search(value):
            return BadRow(row, "undecodable bytes (not UTF-8 or CP932 text)", case)
    patient = str(_first(record, PATIENT_KEYS)) or case
    text_ja, text_en = str(_first(record, TEXT_JA_KEYS)), str(_first(record, TEXT_EN_KEYS))
    structured = _first(record, STRUCTURED_KEYS)
    entities, problem = None, None
    if isinstance(structured, list):
        entities = structured
    elif structured:
        try:
            entities = json.loads(structured)
            if not isinstance(entities, list):
                entities, problem = None, "structured findings are not a JSON list"
        except json.JSONDecodeError as exc:
            problem = f"malformed structured JSON ({exc.msg} at char {exc.pos})"
    text = text_ja or text_en
    if entities is None and not text.strip():
        return BadRow(row, problem or "empty report (no text, no structured findings)", case)
    if problem:
        problem += "; used the free text"
    return Report(row, case, patient, text, entities, problem)


class Position:
    """Fraction of the input read so far (for progress bars)."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self._stream: io.TextIOWrapper | None = None
        self._size = 1

    def track(self, stream: io.TextIOWrapper, size: int) -> io.TextIOWrapper:
        """Follow ``stream`` (a binary file) to report how much of the input was read."""
        self._stream, self._size = stream, max(size, 1)
        return stream

    def update(self) -> float:
        """The fraction of the input read so far (0..1)."""
        if self._stream is not None and not self._stream.closed:
            self.fraction = min(1.0, self._stream.buffer.tell() / self._size)
        return self.fraction


def _decode_stream(path: Path) -> io.TextIOWrapper:
    """UTF-8 (with or without BOM) or CP932, chosen from the first 1 MB; bad bytes kept as
    surrogates so the row holding them can be reported and the rest read."""
    with path.open("rb") as f:
        head = f.read(1 << 20)
    encoding = "utf-8-sig"
    try:
        head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # A cut multi-byte character at the end of the sample is not a reason to switch.
        if exc.start < len(head) - 4:
            try:
                head.decode("cp932")
                encoding = "cp932"
            except UnicodeDecodeError:
                encoding = "utf-8-sig"
    return open(path, encoding=encoding, errors="surrogateescape", newline="")


def read_csv(
    path: Path, header_problems: list[str], position: Position
) -> Iterator[Report | BadRow]:
    """Reports from a J-MID export CSV (UTF-8 or CP932), one per row."""
    with position.track(_decode_stream(path), path.stat().st_size) as stream:
        reader = csv.DictReader(stream)
        fields = reader.fieldnames or []
        if not any(k in fields for k in CASE_KEYS):
            raise InputError(
                path, f"no case column (expected one of {', '.join(CASE_KEYS)}); got {fields}"
            )
        if not any(k in fields for k in (*TEXT_JA_KEYS, *TEXT_EN_KEYS, *STRUCTURED_KEYS)):
            raise InputError(path, "no report column (expected 所見, findings_Eng or 所見_JSON)")
        unknown = [f for f in fields if f not in KNOWN_COLUMNS]
        if unknown:
            header_problems.append(f"unknown columns ignored: {', '.join(unknown)}")
        for row, record in enumerate(reader, start=1):
            if None in record:  # more cells than header columns
                yield BadRow(row, f"{len(record[None])} more cells than the header has columns")
                continue
            yield _make_report(row, record)


def read_jsonl(path: Path, position: Position) -> Iterator[Report | BadRow]:
    """Reports from JSON Lines, one object per line."""
    with position.track(_decode_stream(path), path.stat().st_size) as stream:
        for row, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRow(row, f"malformed JSON line ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield BadRow(row, "a JSON line must be an object")
                continue
            yield _make_report(row, record)


def read_folder(path: Path, position: Position) -> Iterator[Report | BadRow]:
    """Reports from a folder of text or JSON files, one report per file."""
    cases: dict[str, dict[str, Path]] = {}
    for file in sorted(path.iterdir()):
        if file.suffix.lower() in (".json", ".txt") and file.is_file():
            cases.setdefault(file.stem, {})[file.suffix.lower()] = file
    for row, (case, files) in enumerate(sorted(cases.items()), start=1):
        position.fraction = row / len(cases)
        record: dict = {"case_id": case}
        try:
            if ".txt" in files:
                record["findings"] = files[".txt"].read_text(encoding="utf-8-sig")
            if ".json" in files:
                data = json.loads(files[".json"].read_text(encoding="utf-8-sig"))
                if isinstance(data, list):
                    record["structured"] = data
                elif isinstance(data, dict):
                    record.update({k: v for k, v in data.items() if k not in CASE_KEYS})
                    if isinstance(record.get("所見_JSON"), list):
                        record["structured"] = record.pop("所見_JSON")
        except UnicodeDecodeError:
            yield BadRow(row, f"{files.get('.txt') or files['.json']}: not UTF-8 text", case)
            continue
        except json.JSONDecodeError as exc:
            if ".txt" not in files:
                yield BadRow(row, f"{files['.json'].name}: malformed JSON ({exc.msg})", case)
                continue
        yield _make_report(row, record)


def read_reports(
    path: str | os.PathLike, header_problems: list[str], position: Position | None = None
) -> Iterator[Report | BadRow]:
    """Yield the reports of a CSV, JSON Lines file or folder, in input order.

    Args:
        path: the input.
        header_problems: receives problems with the file as a whole (unknown columns).
        position: updated with the fraction of the input read, for progress.

    Raises:
        InputError: the path does not exist, or the file has none of the expected columns.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    position = position or Position()
    if path.is_dir():
        return read_folder(path, position)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl(path, position)
    return read_csv(path, header_problems, position)
