"""Evidence from one report: which organ, which class, positive / uncertain / negative, and why.

Two extractors share the taxonomy:

- :meth:`Extractor.from_entities` reads J-MID structured findings (a list of entities with
  ``certainty_score`` 0..4 and ``Anatomical_entity`` modifiers).
- :meth:`Extractor.from_text` reads free text (Japanese or English): sentences, then clauses;
  negation and uncertainty cues act on their clause only; each finding word binds to the
  nearest organ mention in its clause (or, with none, the organ of the previous clause).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from JMIDAnomalyLib.common.organs import ORGANS, SIDED_ORGANS
from JMIDAnomalyLib.labels.taxonomy import (
    ALL_ORGANS,
    CUE_ASSERTION,
    CUE_NEGATION,
    CUE_UNCERTAIN,
    CUE_UNCERTAIN_NEGATION,
    Taxonomy,
    normalize,
)

POSITIVE, UNCERTAIN, NEGATIVE = 1, 0, -1
# certainty_level names -> score, for exports that give a level without a score.
CERTAINTY_LEVELS = {"denial": 0, "unlikely": 1, "possible": 2, "likely": 3, "definitive": 4}

_SENTENCE_END = re.compile(r"(?<=[。！？!?．])|\n+|(?<=\.)\s+(?=[a-zA-Z(])")
_CLAUSE_SPLIT_JA = re.compile(
    r"(?:(?<=あり)|(?<=おり)|(?<=認め)|(?<=られ)|(?<=ており)|(?<=であり)|(?<=が)|(?<=ものの)"
    r"|(?<=ですが)|(?<=ず)|(?<=し))、|[;；]"
)
_CLAUSE_SPLIT_EN = re.compile(
    r";|\s+but\s+|,?\s+however,?\s+|\s+although\s+|\s+whereas\s+|,\s*except\s+"
    r"|,\s*(?=(?:no|without|possibly|probably|likely|suspicious|suspected|which|not)\b)"
    r"|\s+and\s+(?=(?:no|without)\b)|\s+(?=(?:without|with no)\b)"
)
_SIDE_BEFORE = re.compile(r"(右|左|両側|両|right|left|bilateral|both)[\s-]*(?:\w+\s+)?$")
_SIDE_WORDS = {
    "右": "right",
    "左": "left",
    "両側": "both",
    "両": "both",
    "right": "right",
    "left": "left",
    "bilateral": "both",
    "both": "both",
}
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
_LIST_JOINERS = re.compile(r"^(?:[\s、,・/]|と|及び|および|や|and|or|the|of|both)*$")


@dataclass(frozen=True, slots=True)
class Evidence:
    """One piece of evidence about an organ.

    Attributes:
        organ: organ key (``liver`` ...).
        side: ``left``, ``right``, ``both`` or None (unsided organ, or side not stated).
        cls: class key, or None for a mention without a class (a normal statement).
        polarity: 1 positive, 0 uncertain, -1 negative.
        source: the sentence or entity that produced it.
    """

    organ: str
    side: str | None
    cls: str | None
    polarity: int
    source: str


@dataclass
class Extraction:
    """What one report yielded."""

    evidence: list[Evidence] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # "organ:term" mapped to other_abnormality
    unassigned: int = 0  # finding words with no organ


def split_sentences(text: str) -> list[str]:
    """The sentences of a report (Japanese and English sentence ends, line breaks)."""
    return [text[a:b] for a, b in sentence_spans(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text``, stripped of white space."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def _entity_sentence(entity: dict, text: str, spans: list[tuple[int, int]]) -> str | None:
    """The report sentence an entity came from: J-MID token indices are character offsets."""
    start, end = entity.get("start_idx"), entity.get("end_idx")
    tokens = entity.get("tokens")
    if isinstance(start, int) and isinstance(end, int) and isinstance(tokens, list):
        if text[start : end + 1] != "".join(map(str, tokens)):
            start = text.find(str(entity.get("surface_name") or "\0"))
    else:
        start = text.find(str(entity.get("surface_name") or "\0"))
    if start is None or start < 0:
        return None
    return next((text[a:b] for a, b in spans if a <= start < b), None)


def _clause_cues(clause: str, taxonomy: Taxonomy) -> tuple[int, bool]:
    """(polarity, has an assertion cue): "cannot be excluded" is uncertain, then negation wins,
    then uncertainty; otherwise the clause states its findings as present."""
    kinds = taxonomy.cue_kinds
    found = {kinds[index] for _, _, index in taxonomy.cue_matcher.find(clause)}
    if CUE_UNCERTAIN_NEGATION in found:
        polarity = UNCERTAIN
    elif CUE_NEGATION in found:
        polarity = NEGATIVE
    elif CUE_UNCERTAIN in found:
        polarity = UNCERTAIN
    else:
        polarity = POSITIVE
    return polarity, CUE_ASSERTION in found


def _score_polarity(score, level) -> int:
    if score is None or score == "":
        score = CERTAINTY_LEVELS.get(str(level).lower(), 4) if level else 4
    try:
        score = float(score)
    except (TypeError, ValueError):
        score = 4.0
    if score <= 0:
        return NEGATIVE
    return POSITIVE if score >= 3 else UNCERTAIN


class Extractor:
    """Turns reports into :class:`Evidence` with one :class:`Taxonomy`."""

    def __init__(self, taxonomy: Taxonomy | None = None) -> None:
        self.taxonomy = taxonomy or Taxonomy.load()

    # -- shared --------------------------------------------------------------------------
    def _targets(self, organ: str, side: str | None) -> Iterable[tuple[str, str | None]]:
        if organ == ALL_ORGANS:
            return [(o, "both" if o in ("kidney", "adrenal") else None) for o in ORGANS]
        return [(organ, side)]

    def _class_for(self, term: str, organ: str, out: Extraction) -> str | None:
        """The class a finding term means for an organ; unknown -> other_abnormality."""
        tax = self.taxonomy
        if term in tax.implied and tax.implied[term][0] == organ:
            return tax.implied[term][2]
        cls = tax.keywords.get(term, {}).get(organ)
        if cls is None:
            out.unmapped.append(f"{organ}:{term}")
            return "other_abnormality"
        return None if cls == "nofinding" else cls

    # -- free text -----------------------------------------------------------------------
    def from_text(self, text: str, out: Extraction | None = None) -> Extraction:
        """Findings from free text, sentence by sentence and clause by clause."""
        out = out or Extraction()
        for sentence in split_sentences(text):
            self._sentence(sentence, out)
        return out

    def _sentence(self, sentence: str, out: Extraction) -> None:
        tax = self.taxonomy
        norm = normalize(sentence)
        english = _JAPANESE.search(norm) is None
        clauses = (_CLAUSE_SPLIT_EN if english else _CLAUSE_SPLIT_JA).split(
            norm
        )  # language-specific
        carry: list[tuple[str, str | None]] | None = None
        for clause in clauses:
            if not clause or not clause.strip():
                continue
            polarity, asserted = _clause_cues(clause, tax)
            groups = self._organ_groups(clause)
            findings = list(tax.finding_matcher.find(clause))
            bound: set[int] = set()
            for start, end, index in findings:
                term = tax.finding_terms[index]
                if term in tax.implied:
                    organ, side, cls = tax.implied[term]
                    if side is None and organ in SIDED_ORGANS:
                        side = self._implied_side(clause, start, organ, groups, carry)
                    for target in self._targets(organ, side):
                        out.evidence.append(Evidence(*target, cls, polarity, sentence))
                    continue
                normal = term in tax.normal_terms
                group_index = self._nearest(groups, start, end, allow_all=normal or polarity < 0)
                if group_index is None:
                    if carry and not normal:
                        targets = carry
                    else:
                        out.unassigned += 0 if normal else 1
                        continue
                else:
                    bound.add(group_index)
                    targets = groups[group_index][2]
                for organ, side in targets:
                    cls = None if normal else self._class_for(term, organ, out)
                    out.evidence.append(
                        Evidence(organ, side, cls, NEGATIVE if normal else polarity, sentence)
                    )
            for i, (_, _, targets, is_all) in enumerate(groups):
                if i in bound:
                    continue
                unexplained = polarity == POSITIVE and not findings and asserted
                for organ, side in targets:
                    if unexplained and not is_all:
                        out.unmapped.append(f"{organ}:{clause.strip()[:40]}")
                        out.evidence.append(
                            Evidence(organ, side, "other_abnormality", polarity, sentence)
                        )
                    else:
                        out.evidence.append(Evidence(organ, side, None, NEGATIVE, sentence))
            real = [g for g in groups if not g[3]]
            if real:
                carry = real[-1][2]

    @staticmethod
    def _implied_side(clause: str, start: int, organ: str, groups, carry) -> str | None:
        """Side of a diagnosis that names a sided organ (右水腎症, left adrenal myelolipoma):
        a side word just before it, else the side of that organ mentioned in the clause."""
        before = _SIDE_BEFORE.search(clause[max(0, start - 12) : start])
        if before:
            return _SIDE_WORDS[before.group(1)]
        candidates = [g[2] for g in groups] + ([carry] if carry else [])
        for targets in candidates:
            sides = {side for o, side in targets if o == organ and side in ("left", "right")}
            if len(sides) == 1:
                return sides.pop()
        return None

    def _organ_groups(self, clause: str) -> list[tuple[int, int, list, bool]]:
        """Organ mentions as (start, end, targets, is_abdomen), merged when only list words
        (、, と, and, or) stand between them. An "abdomen" mention stays a group of its own."""
        tax = self.taxonomy
        groups: list[tuple[int, int, list, bool]] = []
        for start, end, index in tax.anatomy_matcher.find(clause):
            organ, side = tax.anatomy[tax.anatomy_terms[index]]
            targets = list(self._targets(organ, side))
            is_all = organ == ALL_ORGANS
            previous = groups[-1] if groups else None
            if (
                previous
                and not is_all
                and not previous[3]
                and _LIST_JOINERS.match(clause[previous[1] : start])
            ):
                merged = previous[2] + [t for t in targets if t not in previous[2]]
                groups[-1] = (previous[0], end, merged, False)
            else:
                groups.append((start, end, targets, is_all))
        return groups

    @staticmethod
    def _nearest(groups, start: int, end: int, allow_all: bool) -> int | None:
        """The group closest to a finding word; "abdomen" groups only for normal statements."""
        best, best_distance = None, None
        for i, (g_start, g_end, _, is_all) in enumerate(groups):
            if is_all and not allow_all:
                continue
            distance = max(0, start - g_end, g_start - end)
            if best_distance is None or distance < best_distance:
                best, best_distance = i, distance
        return best

    # -- structured ----------------------------------------------------------------------
    def from_entities(
        self, entities: list, text: str = "", out: Extraction | None = None
    ) -> Extraction:
        """Evidence from J-MID structured findings (the ``所見_JSON`` list).

        Args:
            entities: the entity list.
            text: the report's free text, to name the sentence each entity came from.
        """
        out = out or Extraction()
        spans = sentence_spans(text) if text else []
        for entity in entities:
            if not isinstance(entity, dict):
                continue
            if entity.get("type") not in ("Imaging_observation", "Clinical_finding"):
                continue
            self._entity(entity, out, _entity_sentence(entity, text, spans) if text else None)
        return out

    def _entity(self, entity: dict, out: Extraction, sentence: str | None = None) -> None:
        tax = self.taxonomy
        modifiers = [m for m in entity.get("modifiers") or [] if isinstance(m, dict)]
        anatomy = [
            str(m.get("surface_name") or "")
            for m in modifiers
            if m.get("type") == "Anatomical_entity"
        ]
        surface = str(entity.get("surface_name") or "")
        polarity = _score_polarity(entity.get("certainty_score"), entity.get("certainty_level"))
        level = entity.get("certainty_level") or "definitive"
        source = sentence or f"{surface} [{'、'.join(anatomy) or '-'}; {level}]"
        targets: list[tuple[str, str | None]] = []
        for part in anatomy:
            for _, _, index in tax.anatomy_matcher.find(normalize(part)):
                for target in self._targets(*tax.anatomy[tax.anatomy_terms[index]]):
                    if target not in targets:
                        targets.append(target)
        diagnoses = [(surface, polarity)] + [
            (
                str(m.get("surface_name") or ""),
                _score_polarity(m.get("certainty_score"), m.get("certainty_level")),
            )
            for m in modifiers
            if m.get("type") == "Clinical_finding"
        ]
        if not targets:  # the finding itself names the organ (脂肪肝, 脾腫, 膵癌)
            for name, _ in diagnoses:
                norm = normalize(name)
                for _, _, index in tax.finding_matcher.find(norm):
                    term = tax.finding_terms[index]
                    if term in tax.implied:
                        targets += [
                            t for t in self._targets(*tax.implied[term][:2]) if t not in targets
                        ]
                for _, _, index in tax.anatomy_matcher.find(norm):
                    organ, side = tax.anatomy[tax.anatomy_terms[index]]
                    if organ != ALL_ORGANS:
                        targets += [t for t in self._targets(organ, side) if t not in targets]
        if not targets:
            out.unassigned += 1
            return
        prefix = "".join(normalize(a) for a in anatomy)
        for name, name_polarity in diagnoses:
            norm = prefix + normalize(name)
            terms = [tax.finding_terms[i] for _, _, i in tax.finding_matcher.find(norm)]
            for organ, side in targets:
                classes = {self._class_for(t, organ, out) for t in terms if self._applies(t, organ)}
                if not classes and name is surface:
                    if name_polarity == NEGATIVE:
                        classes = {None}
                    else:
                        out.unmapped.append(f"{organ}:{normalize(name)}")
                        classes = {"other_abnormality"}
                for cls in classes:
                    polarity_here = NEGATIVE if cls is None else name_polarity
                    out.evidence.append(Evidence(organ, side, cls, polarity_here, source))

    def _applies(self, term: str, organ: str) -> bool:
        implied = self.taxonomy.implied.get(term)
        return implied is None or implied[0] == organ
