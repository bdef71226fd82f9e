"""Report prose -> sections, sentences and clauses, and what each clause's cues say.

- :func:`sections`: the report's sections by their headers (所見, 【診断】, Impression:,
  Clinical history: ...); a report without headers is one findings section.
- :func:`sentence_spans`: sentences (Japanese and English ends, line breaks).
- :func:`split_clauses`: clauses of a normalised sentence, by language.
- :func:`read_clause`: the clause's polarity and the cue that decided it.
- :func:`removals`: organs a clause says were taken out.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from JMIDAnomalyLib.common.organs import SIDED_ORGANS
from JMIDAnomalyLib.labels.cues import (
    CUE_ASSERTION,
    CUE_CHANGED,
    CUE_HISTORY,
    CUE_NEGATION,
    CUE_PARTIAL,
    CUE_REMOVAL,
    CUE_UNCERTAIN,
    CUE_UNCERTAIN_NEGATION,
    CUE_UNCHANGED,
    REMOVABLE,
    SECTION_HEADER,
    SECTION_KINDS,
    TOTAL_ONLY,
)
from JMIDAnomalyLib.labels.taxonomy import Taxonomy

POSITIVE, UNCERTAIN, NEGATIVE, HISTORY, REMOVED = 1, 0, -1, -2, -3
#: Polarity -> the word the evidence column and ``--explain`` use for it.
POLARITY_NAMES = {
    POSITIVE: "present",
    UNCERTAIN: "uncertain",
    NEGATIVE: "negated",
    HISTORY: "history",
    REMOVED: "removed",
}

_SENTENCE_END = re.compile(r"(?<=[。！？!?．])|\n+|(?<=\.)\s+(?=[a-zA-Z(])")
_CLAUSE_SPLIT_JA = re.compile(
    r"(?:(?<=あり)|(?<=おり)|(?<=認め)|(?<=られ)|(?<=ており)|(?<=であり)|(?<=が)|(?<=ものの)"
    r"|(?<=ですが)|(?<=ず)|(?<=し)|(?<=なく)|(?<=後)|(?<=後で))、|[;；]"
)
_CLAUSE_SPLIT_EN = re.compile(
    r";|\s+but\s+|,?\s+however,?\s+|\s+although\s+|\s+whereas\s+|,?\s*except\s+"
    r"|,\s*(?=(?:no|without|possibly|probably|likely|suspicious|suspected|which|not|now)\b)"
    r"|,\s+and\s+(?=(?:the|a|an|there)\b)"
    r"|\s+and\s+(?=(?:no|without)\b)|\s+(?=(?:without|with no)\b)"
)
# Japanese modifiers come before their noun: 腫大したリンパ節 is an enlarged lymph node.
_MODIFIES_NEXT = re.compile(r"(?:した|している|する|な)")
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
_SIDE_BEFORE = re.compile(r"(右|左|両側|両|right|left|bilateral|both)[\s-]*(?:\w+\s+)?$")
SIDE_WORDS = {
    "右": "right",
    "左": "left",
    "両側": "both",
    "両": "both",
    "right": "right",
    "left": "left",
    "bilateral": "both",
    "both": "both",
}


def sections(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of the report's sections: ``findings``, ``impression``, ``history``
    (clinical information, indication, past history) or ``other`` (technique, comparison).
    Text before the first header is findings."""
    out, kind, start = [], "findings", 0
    for match in SECTION_HEADER.finditer(text):
        if match.start() > start:
            out.append((kind, start, match.start()))
        kind = SECTION_KINDS[(match.group(1) or match.group(2)).lower()]
        start = match.end()
        if kind in ("history", "other") and not text[start:].lstrip(" \t").startswith("\n"):
            # written on the header's line (既往歴：胆嚢摘出術。): that sentence only
            first = sentence_spans(text, start)
            if first:
                out.append((kind, start, first[0][1]))
                kind, start = "findings", first[0][1]
    out.append((kind, start, len(text)))
    return out


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text[start:end]``, stripped."""
    end = len(text) if end is None else end
    spans, a = [], start
    for match in _SENTENCE_END.finditer(text, start, end):
        spans.append((a, match.start()))
        a = match.end()
    spans.append((a, end))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def is_english(norm: str) -> bool:
    """True when a normalised sentence has no Japanese characters."""
    return _JAPANESE.search(norm) is None


def split_clauses(norm: str) -> list[tuple[int, str]]:
    """(offset, clause) of a normalised sentence, split by its language's clause rules."""
    splitter = _CLAUSE_SPLIT_EN if is_english(norm) else _CLAUSE_SPLIT_JA
    out, start = [], 0
    for match in splitter.finditer(norm):
        out.append((start, norm[start : match.start()]))
        start = match.end()
    out.append((start, norm[start:]))
    return [(offset, clause) for offset, clause in out if clause.strip()]


class Reading(NamedTuple):
    """What a clause's cues say: its polarity, the deciding cue (``kind: word``, or "" for a
    plain statement), whether it asserts something is seen (or changed), and the change."""

    polarity: int
    cue: str
    asserted: bool
    change: str | None = None


_PRIORITY = (
    (CUE_UNCERTAIN_NEGATION, UNCERTAIN),
    (CUE_HISTORY, HISTORY),
    (CUE_UNCHANGED, POSITIVE),
    (CUE_CHANGED, POSITIVE),
    (CUE_NEGATION, NEGATIVE),
    (CUE_UNCERTAIN, UNCERTAIN),
)


def read_clause(clause: str, taxonomy: Taxonomy, section: str = "findings") -> Reading:
    """The clause's polarity: "cannot be excluded" is uncertain; then history; then comparison
    (the finding is present, with its change); then negation; then uncertainty; else present.
    Uncertainty words still make a comparison uncertain. In a history section every finding is
    history."""
    kinds = taxonomy.cue_kinds
    found: dict[str, str] = {}
    for start, end, index in taxonomy.cue_matcher.find(clause):
        found.setdefault(kinds[index], clause[start:end])
    change = "unchanged" if CUE_UNCHANGED in found else "changed" if CUE_CHANGED in found else None
    asserted = CUE_ASSERTION in found or CUE_CHANGED in found
    if section == "history":
        # past history and the question asked: nothing in it is a present finding
        return Reading(HISTORY, f"history: {section} section", asserted, change)
    for kind, polarity in _PRIORITY:
        if kind in found:
            if polarity == POSITIVE and CUE_UNCERTAIN in found:
                polarity = UNCERTAIN
            cue = f"{'comparison' if change else kind}: {found[kind]}"
            if change:
                cue += f" ({change})"
            return Reading(polarity, cue, asserted, change)
    return Reading(POSITIVE, "", asserted, None)


def side_before(clause: str, start: int) -> str | None:
    """The side word just before ``start`` (右, left, bilateral ...), or None."""
    before = _SIDE_BEFORE.search(clause[max(0, start - 12) : start])
    return SIDE_WORDS[before.group(1)] if before else None


def removals(clause: str, groups, taxonomy: Taxonomy) -> list[tuple[str, str | None, str]]:
    """(organ, side, removal word) for each organ the clause says was taken out entirely
    (``groups``: the clause's organ mentions).

    A removal word goes to the nearest organ mention (which may be inside the word:
    cholecystectomy, 胆摘). Not a removal: a partial word just before it (部分切除, partial
    nephrectomy), the liver, the pancreas without 全摘/total, a kidney or adrenal gland whose
    side is not stated, or a non-organ mention nearer than any organ (虫垂切除, 十二指腸).
    """
    tax = taxonomy
    out: list[tuple[str, str | None, str]] = []
    for start, end, index in tax.procedure_matcher.find(clause):
        if tax.procedure_kinds[index] != CUE_REMOVAL:
            continue
        nearest = nearest_group(groups, clause, start, end, allow_all=False, english=True)
        if nearest is None or not groups[nearest][2]:
            continue
        word, (g_start, _, targets, _) = clause[start:end], groups[nearest]
        before = clause[max(0, min(start, g_start) - 12) : start]
        partial = any(
            tax.procedure_kinds[i] == CUE_PARTIAL for _, _, i in tax.procedure_matcher.find(before)
        )
        for organ, side in targets:
            if partial or organ not in REMOVABLE:
                continue
            if organ in TOTAL_ONLY and not any(w in clause for w in TOTAL_ONLY[organ]):
                continue
            if organ in SIDED_ORGANS:
                side = side if side in ("left", "right") else side_before(clause, g_start)
                if side not in ("left", "right"):
                    continue
            out.append((organ, side, word))
    return out


def organ_knows(taxonomy: Taxonomy, term: str, organ: str) -> bool:
    """Whether an organ's table has the term (a list of organs takes a finding word only where
    it means something: 総胆管と主膵管が拡張 is not a pancreatic other_abnormality)."""
    return organ in taxonomy.keywords.get(term, {})


def nearest_group(groups, clause: str, start: int, end: int, allow_all: bool, english: bool):
    """The group a finding word belongs to: in Japanese the noun it modifies when it stands
    just before one (腫大したリンパ節), else the closest; "abdomen" only for normal statements."""
    best, best_distance = None, None
    for i, (g_start, g_end, _, is_all) in enumerate(groups):
        if is_all and not allow_all:
            continue
        if not english and g_start >= end and _MODIFIES_NEXT.fullmatch(clause, end, g_start):
            return i
        distance = max(0, start - g_end, g_start - end)
        if best_distance is None or distance < best_distance:
            best, best_distance = i, distance
    return best
