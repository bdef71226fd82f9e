"""Evidence -> per-organ multi-hot labels, and the streaming ``jmid labels`` job.

Rules (README "Labels from reports"):
- A class is 1 with positive evidence (certainty 3-4, or a plain statement); uncertain evidence
  (certainty 1-2, 疑い, possible ...) follows ``uncertain``: positive (default), negative, or
  ignore (the cell is left empty = unknown).
- ``nofinding`` is 1 exactly when the organ is mentioned and no abnormal class is 1 or unknown.
- An organ the report never mentions follows ``unmentioned``: normal (default, as the published
  system: nofinding = 1) or unknown (all cells empty).
- Kidney and adrenal rows are per side; a statement without a side applies to both.
- Past findings (既往, history of) are not present findings; an organ the report says was
  removed (胆嚢摘出術後, status post right nephrectomy) is absent: ``absent`` = 1 and every class
  cell empty (neither abnormal nor normal).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError, JMIDError, check_known_keys
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES, ORGANS, SIDED_ORGANS
from JMIDAnomalyLib.common.progress import Progress, ShouldStop
from JMIDAnomalyLib.labels.audit import RowLabels, explain_lines
from JMIDAnomalyLib.labels.extract import (
    POSITIVE,
    REMOVED,
    UNCERTAIN,
    Evidence,
    Extraction,
    Extractor,
)
from JMIDAnomalyLib.labels.reports import BadRow, Position, Report, read_reports
from JMIDAnomalyLib.labels.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

#: The label rows of one report: (organ, side).
ORGAN_ROWS: tuple[tuple[str, str | None], ...] = tuple(
    (organ, side)
    for organ in ORGANS
    for side in (("left", "right") if organ in SIDED_ORGANS else (None,))
)
Labels = dict[tuple[str, str | None], RowLabels]


@dataclass
class LabelOptions:
    """Configuration of the label job (round-trips through JSON with to_dict/from_dict)."""

    uncertain: str = "positive"
    unmentioned: str = "normal"
    taxonomy: str | None = None
    crosscheck: bool = True

    def __post_init__(self) -> None:
        if self.uncertain not in ("positive", "negative", "ignore"):
            raise InputError(
                "--uncertain", f"must be positive, negative or ignore, not '{self.uncertain}'"
            )
        if self.unmentioned not in ("normal", "unknown"):
            raise InputError(
                "--unmentioned", f"must be normal or unknown, not '{self.unmentioned}'"
            )

    def to_dict(self) -> dict:
        """The options as JSON-ready values (``summary.json`` records them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LabelOptions:
        """Options from a mapping; unknown keys are refused."""
        check_known_keys(data, cls, "label options")
        return cls(**data)


def evidence_to_labels(evidence: list[Evidence], options: LabelOptions) -> Labels:
    """Per (organ, side): class -> 1 / 0 / None (unknown), the evidence entries, absent."""
    best: dict[tuple[str, str | None], dict[str, Evidence]] = {}
    normal: dict[tuple[str, str | None], Evidence] = {}
    removed: dict[tuple[str, str | None], Evidence] = {}
    for e in evidence:
        organ, cls, polarity = e.organ, e.cls, e.polarity
        if organ in SIDED_ORGANS:
            sides = (e.side,) if e.side in ("left", "right") else ("left", "right")
        else:
            sides = (None,)
        for side in sides:
            key = (organ, side)
            if polarity == REMOVED:
                removed.setdefault(key, e)
            elif cls is None or cls == "nofinding":
                normal.setdefault(key, e)
            else:
                states = best.get(key)
                if states is None:
                    best[key] = {cls: e}
                elif cls not in states or polarity > states[cls].polarity:
                    states[cls] = e
    uncertain_value = {"positive": 1, "negative": 0, "ignore": None}[options.uncertain]
    known = options.unmentioned == "normal"
    labels: Labels = {}
    for key in ORGAN_ROWS:
        classes = ORGAN_CLASSES[key[0]]
        if key in removed:
            labels[key] = RowLabels(dict.fromkeys(classes), [("", removed[key])], True)
            continue
        states = best.get(key)
        if key not in normal and not states:
            values = dict.fromkeys(classes, 0 if known else None)
            values["nofinding"] = 1 if known else None
            labels[key] = RowLabels(values, [])
            continue
        states = states or {}
        values: dict[str, int | None] = {}
        for cls in classes[:-1]:
            state = states[cls].polarity if cls in states else None
            values[cls] = 1 if state == POSITIVE else uncertain_value if state == UNCERTAIN else 0
        abnormal = list(values.values())
        values["nofinding"] = 0 if 1 in abnormal else (None if None in abnormal else 1)
        notes = list(states.items())
        if len(notes) > 1:
            notes.sort(key=lambda item: -item[1].polarity)
        if values["nofinding"] == 1 and key in normal:
            notes.append(("nofinding", normal[key]))
        labels[key] = RowLabels(values, notes)
    return labels


class _OrganWriters:
    """One CSV per organ, written under temporary names and renamed only when all succeed."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._contexts = {organ: atomic_output(out / f"{organ}.csv") for organ in ORGANS}
        self._files = {}
        self._writers = {}
        for organ, context in self._contexts.items():
            handle = context.__enter__().open("w", encoding="utf-8", newline="")
            self._files[organ] = handle
            writer = csv.writer(handle, lineterminator="\n")
            header = ["case_id", "patient_id", "side", *ORGAN_CLASSES[organ], "absent", "evidence"]
            writer.writerow(header)
            self._writers[organ] = writer

    def write(self, report: Report, labels: Labels) -> None:
        for (organ, side), row in labels.items():
            cells = ["" if v is None else v for v in row.values.values()]
            self._writers[organ].writerow(
                [
                    report.case_id,
                    report.patient_id,
                    side or "",
                    *cells,
                    int(row.absent),
                    " | ".join(row.entries()),
                ]
            )

    def close(self, ok: bool) -> None:
        for organ, handle in self._files.items():
            handle.close()
            exc = (None, None, None) if ok else (JMIDError, JMIDError("aborted"), None)
            try:
                self._contexts[organ].__exit__(*exc)
            except JMIDError:
                pass


def label_reports(
    reports: str | os.PathLike,
    out: str | os.PathLike,
    options: LabelOptions | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> dict:
    """Read reports, write ``out/<organ>.csv`` and ``out/summary.json``; return the summary.

    Streams: memory does not grow with the number of reports, except one hash per case id to
    report duplicates (tens of bytes each). Output appears only when the whole input was read.

    Raises:
        InputError: unreadable input, or no report could be read at all.
        JMIDError: stopped by ``should_stop``.
    """
    options = options or LabelOptions()
    out = Path(out)
    extractor = Extractor(Taxonomy.load(options.taxonomy))
    tally = _Tally()
    position = Position()
    stream = read_reports(reports, tally.file_problems, position)
    out.mkdir(parents=True, exist_ok=True)
    writers = _OrganWriters(out)
    ok = False
    try:
        for item in stream:
            labels = tally.take(item, extractor, options)
            if labels is None:
                continue
            writers.write(item, labels)
            if tally.labelled % 5000 == 0:
                if should_stop and should_stop():
                    raise JMIDError("label import stopped; nothing was written")
                if progress:
                    progress(position.update(), f"{tally.labelled} reports labelled")
        if tally.labelled == 0:
            raise InputError(
                reports, f"no report could be read ({len(tally.skipped)} rows skipped)"
            )
        ok = True
    finally:
        writers.close(ok)
    summary = tally.summary(reports, options, extractor, out)
    with atomic_output(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    if progress:
        progress(1.0, f"{tally.labelled} reports labelled, {len(tally.skipped)} skipped")
    return summary


@dataclass
class _Tally:
    """What :func:`label_reports` counts while it streams: kept small (no per-report lists
    except the rows it skips or finds problems in)."""

    read: int = 0
    labelled: int = 0
    compared: int = 0
    unassigned: int = 0
    counts: dict = field(default_factory=lambda: {organ: Counter() for organ in ORGANS})
    unmapped: Counter = field(default_factory=Counter)
    disagreements: Counter = field(default_factory=Counter)
    skipped: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    file_problems: list = field(default_factory=list)
    seen: set = field(default_factory=set)

    def take(self, item: Report | BadRow, extractor: Extractor, options: LabelOptions):
        """The labels of one report (None when it is skipped)."""
        self.read += 1
        if isinstance(item, BadRow):
            self.skipped.append({"row": item.row, "case_id": item.case_id, "reason": item.reason})
            return None
        digest = hash(item.case_id)  # an int per case finds duplicates without keeping ids
        if digest in self.seen:
            self.skipped.append(
                {"row": item.row, "case_id": item.case_id, "reason": "duplicate case id"}
            )
            return None
        self.seen.add(digest)
        if item.problem:
            self.problems.append(
                {"row": item.row, "case_id": item.case_id, "problem": item.problem}
            )
        extraction = extract_report(extractor, item)
        labels = evidence_to_labels(extraction.evidence, options)
        if options.crosscheck and item.entities is not None and item.text.strip():
            self._crosscheck(
                labels, evidence_to_labels(extractor.from_text(item.text).evidence, options)
            )
        self.labelled += 1
        self.unassigned += extraction.unassigned
        self.unmapped.update(extraction.unmapped)
        for (organ, _), row in labels.items():
            organ_counts = self.counts[organ]
            if row.absent:
                organ_counts["absent"] += 1
                continue
            for cls, value in row.values.items():
                if value == 1:
                    organ_counts[cls] += 1
                elif value is None:
                    organ_counts[f"{cls}:unknown"] += 1
        return labels

    def _crosscheck(self, labels: Labels, text_labels: Labels) -> None:
        """Count the cells where the structured findings and the free text disagree."""
        self.compared += 1
        for key, row in labels.items():
            other = text_labels[key]
            if row.values == other.values and row.absent == other.absent:
                continue
            if row.absent != other.absent:
                self.disagreements[f"{key[0]}{'_' + key[1] if key[1] else ''}.absent"] += 1
            for cls, value in row.values.items():
                if value != other.values[cls]:
                    self.disagreements[f"{key[0]}{'_' + key[1] if key[1] else ''}.{cls}"] += 1

    def summary(self, reports, options: LabelOptions, extractor: Extractor, out: Path) -> dict:
        """The import's ``summary.json``."""
        return {
            "input": str(reports),
            "options": options.to_dict(),
            "taxonomy": extractor.taxonomy.sources,
            "taxonomy_problems": extractor.taxonomy.problems,
            "reports_read": self.read,
            "reports_labelled": self.labelled,
            "rows_skipped": self.skipped,
            "rows_with_problems": self.problems,
            "file_problems": self.file_problems,
            "counts": {organ: dict(sorted(c.items())) for organ, c in self.counts.items()},
            "unmapped_terms": dict(self.unmapped.most_common()),
            "findings_without_organ": self.unassigned,
            "crosscheck": {
                "reports_compared": self.compared,
                "cells_disagreeing": dict(self.disagreements.most_common()),
            },
            "label_files_sha256": {organ: _sha256(out / f"{organ}.csv") for organ in ORGANS},
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_report(extractor: Extractor, report: Report) -> Extraction:
    """Structured findings when present, else the free text."""
    if report.entities is not None:
        return extractor.from_entities(report.entities, report.text)
    return extractor.from_text(report.text)


def explain(reports: str | os.PathLike, case_id: str, options: LabelOptions) -> list[str]:
    """``jmid labels --explain CASE``: read ``reports`` up to that case and say why each label
    was set (the sentence and the deciding cue of every class with evidence).

    Raises:
        InputError: unreadable input, or the case is not in it.
    """
    extractor = Extractor(Taxonomy.load(options.taxonomy))
    for item in read_reports(reports, []):
        if isinstance(item, Report) and item.case_id == case_id:
            extraction = extract_report(extractor, item)
            mode = "structured findings" if item.entities is not None else "free text"
            labels = evidence_to_labels(extraction.evidence, options)
            return explain_lines(item, labels, extraction, mode)
    raise InputError(reports, f"no report for case '{case_id}'")
