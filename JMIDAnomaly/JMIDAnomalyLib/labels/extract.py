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
from JMIDAnomalyLib.labels.clauses import (
    HISTORY,
    NEGATIVE,
    POSITIVE,
    REMOVED,
    UNCERTAIN,
    Reading,
    is_english,
    nearest_group,
    organ_knows,
    read_clause,
    removals,
    sections,
    sentence_spans,
    side_before,
    split_clauses,
)
from JMIDAnomalyLib.labels.entities import certainty_cue, entity_start, score_polarity
from JMIDAnomalyLib.labels.taxonomy import ALL_ORGANS, OTHER_ANATOMY, Taxonomy, normalize

__all__ = ["HISTORY", "NEGATIVE", "POSITIVE", "REMOVED", "UNCERTAIN", "Evidence", "Extractor"]

_LIST_JOINERS = re.compile(r"^(?:[\s、,・/]|と|及び|および|や|and|or|the|of|both)*$")


@dataclass(frozen=True, slots=True)
class Evidence:
    """One piece of evidence about an organ.

    Attributes:
        organ: organ key (``liver`` ...).
        side: ``left``, ``right``, ``both`` or None (unsided organ, or side not stated).
        cls: class key, or None for a mention without a class (a normal statement).
        polarity: 1 positive, 0 uncertain, -1 negative, -2 history (past, not present now),
            -3 removed (the organ was taken out; ``cls`` is None).
        source: the sentence or entity that produced it.
        cue: the cue that decided the polarity (``negation: 認めません``, ``history: 既往``,
            ``comparison: 著変なし (unchanged)``), or "" for a plain statement.
    """

    organ: str
    side: str | None
    cls: str | None
    polarity: int
    source: str
    cue: str = ""


@dataclass
class Extraction:
    """What one report yielded."""

    evidence: list[Evidence] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # "organ:term" mapped to other_abnormality
    unassigned: int = 0  # finding words with no organ


class Extractor:
    """Turns reports into :class:`Evidence` with one :class:`Taxonomy`."""

    def __init__(self, taxonomy: Taxonomy | None = None) -> None:
        self.taxonomy = taxonomy or Taxonomy.load()

    # -- shared --------------------------------------------------------------------------
    def _targets(self, organ: str, side: str | None) -> Iterable[tuple[str, str | None]]:
        if organ == ALL_ORGANS:
            return [(o, "both" if o in ("kidney", "adrenal") else None) for o in ORGANS]
        if organ == OTHER_ANATOMY:
            return []
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
        """Findings from free text: section by section (technique and comparison sections are
        skipped, history and indication sections give history only), sentence by sentence and
        clause by clause. A finding with no organ in its clause goes to the organ last named
        in its section."""
        out = out or Extraction()
        # one search of the whole report saves a search of each clause for removal words
        procedures = self.taxonomy.procedure_matcher.regex.search(normalize(text)) is not None
        for kind, start, end in sections(text):
            if kind == "other":
                continue
            carry: list | None = None
            for a, b in sentence_spans(text, start, end):
                carry = self._sentence(text[a:b], (kind, procedures), carry, out)
        return out

    def _sentence(self, sentence: str, where: tuple[str, bool], carry, out: Extraction):
        section, procedures = where
        tax = self.taxonomy
        norm = normalize(sentence)
        english = is_english(norm)
        recent: list = [carry] if carry else []  # organs named so far, for a diagnosis's side
        for _, clause in split_clauses(norm):
            reading = read_clause(clause, tax, section)
            groups = self._organ_groups(clause)
            found = removals(clause, groups, tax) if procedures else []
            for organ, side, word in found:
                out.evidence.append(
                    Evidence(organ, side, None, REMOVED, sentence, f"removal: {word}")
                )
            findings = list(tax.finding_matcher.find(clause))
            context = (carry, recent)
            bound = self._findings(
                clause, english, findings, groups, context, reading, sentence, out
            )
            self._mentions(clause, findings, groups, bound, reading, sentence, out)
            real = [g[2] for g in groups if g[2] and not g[3]]
            if real:
                carry = real[-1]
                recent += real
        return carry

    def _findings(self, clause, english, findings, groups, context, reading, sentence, out):
        """Evidence of each finding word of a clause; returns the organ groups it bound."""
        tax = self.taxonomy
        carry, recent = context
        bound: set[int] = set()
        diagnoses = {}  # finding -> (targets, class) for diagnoses that name their organ
        for i, (start, _, index) in enumerate(findings):
            term = tax.finding_terms[index]
            if term in tax.implied:
                organ, side, cls = tax.implied[term]
                if side is None and organ in SIDED_ORGANS:
                    side = self._implied_side(clause, start, organ, groups, recent)
                diagnoses[i] = (list(self._targets(organ, side)), cls)
        # organs the clause's diagnoses name take its findings without an organ (calcified
        # gallstone) before the organ carried from earlier
        named = list(dict.fromkeys(t for targets, _ in diagnoses.values() for t in targets))
        for i, (start, end, index) in enumerate(findings):
            term = tax.finding_terms[index]
            if i in diagnoses:
                targets, cls = diagnoses[i]
                for target in targets:
                    out.evidence.append(
                        Evidence(*target, cls, reading.polarity, sentence, reading.cue)
                    )
                continue
            normal = term in tax.normal_terms
            allow_all = normal or reading.polarity < 0
            group_index = nearest_group(groups, clause, start, end, allow_all, english)
            if group_index is None:
                if (named or carry) and not normal:
                    targets = named or carry
                else:
                    out.unassigned += 0 if normal else 1
                    continue
            else:
                bound.add(group_index)
                targets = groups[group_index][2]
            known = [t for t in targets if organ_knows(tax, term, t[0])]
            for organ, side in known if len(targets) > 1 and known else targets:
                cls = None if normal else self._class_for(term, organ, out)
                polarity = NEGATIVE if normal else reading.polarity
                out.evidence.append(Evidence(organ, side, cls, polarity, sentence, reading.cue))
        return bound

    def _mentions(self, clause, findings, groups, bound, reading: Reading, sentence, out):
        """Organs a clause names without a finding word: normal, or other_abnormality when the
        clause asserts something there in words the tables do not know (a non-organ mention,
        腹水 or lymph nodes, explains the assertion instead)."""
        other = any(not targets and not is_all for _, _, targets, is_all in groups)
        unexplained = (
            reading.polarity == POSITIVE
            and not findings
            and reading.asserted
            and reading.change != "unchanged"
        )
        for i, (_, _, targets, is_all) in enumerate(groups):
            if i in bound:
                continue
            for organ, side in targets:
                if unexplained and not is_all and not other:
                    out.unmapped.append(f"{organ}:{clause.strip()[:40]}")
                    out.evidence.append(
                        Evidence(organ, side, "other_abnormality", POSITIVE, sentence, reading.cue)
                    )
                else:
                    out.evidence.append(
                        Evidence(organ, side, None, NEGATIVE, sentence, reading.cue)
                    )

    @staticmethod
    def _implied_side(clause: str, start: int, organ: str, groups, recent) -> str | None:
        """Side of a diagnosis that names a sided organ (右水腎症, left adrenal myelolipoma):
        a side word just before it, else the side of that organ named in the clause, else
        the one named last before it in the sentence."""
        side = side_before(clause, start)
        if side:
            return side
        candidates = [g[2] for g in groups] + list(reversed(recent))
        for targets in candidates:
            sides = {side for o, side in targets if o == organ and side in ("left", "right")}
            if len(sides) == 1:
                return sides.pop()
        return None

    def _organ_groups(self, clause: str) -> list[tuple[int, int, list, bool]]:
        """Organ mentions as (start, end, targets, is_abdomen), merged when only list words
        (、, と, and, or) stand between them. An "abdomen" mention stays a group of its own;
        a non-organ mention (stomach, lymph nodes) is a group without targets."""
        tax = self.taxonomy
        groups: list[tuple[int, int, list, bool]] = []
        for start, end, index in tax.anatomy_matcher.find(clause):
            organ, side = tax.anatomy[tax.anatomy_terms[index]]
            targets = list(self._targets(organ, side))
            is_all = organ == ALL_ORGANS
            previous = groups[-1] if groups else None
            if (
                previous
                and targets
                and previous[2]
                and not is_all
                and not previous[3]
                and _LIST_JOINERS.match(clause[previous[1] : start])
            ):
                merged = previous[2] + [t for t in targets if t not in previous[2]]
                groups[-1] = (previous[0], end, merged, False)
            else:
                groups.append((start, end, targets, is_all))
        return groups

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
        parts = sections(text) if text else []
        # per sentence: its clauses and their readings, computed once; none are needed when
        # the report has no history section and no history or comparison word
        cache: dict | None = {}
        # the report text names every procedure word its entities hold
        norm = normalize(text)
        procedures = not text or bool(self.taxonomy.procedure_matcher.regex.search(norm))
        if not any(k == "history" for k, _, _ in parts):
            if not self.taxonomy.context_regex.search(norm):
                cache = None
        for entity in entities:
            if not isinstance(entity, dict):
                continue
            if entity.get("type") not in ("Imaging_observation", "Clinical_finding"):
                continue
            sentence, reading = self._context(entity, text, spans, parts, cache)
            self._entity(entity, out, sentence, reading, procedures)
        return out

    def _context(self, entity: dict, text: str, spans, parts, cache: dict | None):
        """The sentence an entity came from and what its clause's cues say (history, in a
        history section or after 既往 / status post, overrides the entity's certainty)."""
        start = entity_start(entity, text) if text else None
        if start is None:
            return None, None
        span = next(((a, b) for a, b in spans if a <= start < b), None)
        if span is None:
            return None, None
        if cache is None:
            return text[span[0] : span[1]], None
        if span not in cache:
            section = next((kind for kind, a, b in parts if a <= span[0] < b), "findings")
            clauses = split_clauses(normalize(text[span[0] : span[1]]))
            cache[span] = (section, clauses, {})
        section, clauses, readings = cache[span]
        offset = len(normalize(text[span[0] : start]))
        index = next((i for i in range(len(clauses) - 1, -1, -1) if clauses[i][0] <= offset), 0)
        if index not in readings:
            readings[index] = read_clause(clauses[index][1], self.taxonomy, section)
        return text[span[0] : span[1]], readings[index]

    def _entity(
        self,
        entity: dict,
        out: Extraction,
        sentence: str | None,
        reading: Reading | None,
        procedures: bool = True,
    ) -> None:
        tax = self.taxonomy
        modifiers = [m for m in entity.get("modifiers") or [] if isinstance(m, dict)]
        anatomy = [
            str(m.get("surface_name") or "")
            for m in modifiers
            if m.get("type") == "Anatomical_entity"
        ]
        surface = str(entity.get("surface_name") or "")
        polarity = score_polarity(entity.get("certainty_score"), entity.get("certainty_level"))
        level = entity.get("certainty_level") or "definitive"
        source = sentence or f"{surface} [{'、'.join(anatomy) or '-'}; {level}]"
        diagnoses = [(surface, polarity)] + [
            (
                str(m.get("surface_name") or ""),
                score_polarity(m.get("certainty_score"), m.get("certainty_level")),
            )
            for m in modifiers
            if m.get("type") == "Clinical_finding"
        ]
        anatomy = [normalize(a) for a in anatomy]
        prefix = "".join(anatomy)
        if procedures and self._removed(prefix + normalize(surface), source, out):
            return
        targets, where = self._entity_targets(anatomy, diagnoses)
        if not targets:
            out.unassigned += 1
            return
        history = reading is not None and reading.polarity == HISTORY
        for name, name_polarity in diagnoses:
            for organ, side in targets:
                # each organ reads the finding with its own anatomy words (総胆管 + 拡張 is a
                # bile duct dilation, 主膵管 + 拡張 a pancreatic duct dilation)
                norm = where.get((organ, side), prefix) + normalize(name)
                terms = [tax.finding_terms[i] for _, _, i in tax.finding_matcher.find(norm)]
                classes = {self._class_for(t, organ, out) for t in terms if self._applies(t, organ)}
                if not classes and name is surface:
                    if name_polarity == NEGATIVE:
                        classes = {None}
                    else:
                        out.unmapped.append(f"{organ}:{normalize(name)}")
                        classes = {"other_abnormality"}
                for cls in classes:
                    polarity_here = NEGATIVE if cls is None else name_polarity
                    if history:
                        polarity_here, cue = HISTORY, reading.cue
                    else:
                        cue = certainty_cue(polarity_here, level, reading)
                    out.evidence.append(Evidence(organ, side, cls, polarity_here, source, cue))

    def _removed(self, words: str, source: str, out: Extraction) -> bool:
        """Record the organs an entity's words say were taken out; whether there were any."""
        removed = removals(words, self._organ_groups(words), self.taxonomy)
        for organ, side, word in removed:
            out.evidence.append(Evidence(organ, side, None, REMOVED, source, f"removal: {word}"))
        return bool(removed)

    def _entity_targets(self, anatomy: list[str], diagnoses) -> tuple[list, dict]:
        """The organs an entity's (normalised) anatomy words name, each with the words naming
        it, else the organs its diagnoses name (脂肪肝, 脾腫, 膵癌)."""
        tax = self.taxonomy
        targets: list[tuple[str, str | None]] = []
        where: dict[tuple[str, str | None], str] = {}
        for part in anatomy:
            for _, _, index in tax.anatomy_matcher.find(part):
                for target in self._targets(*tax.anatomy[tax.anatomy_terms[index]]):
                    where[target] = where.get(target, "") + part
                    if target not in targets:
                        targets.append(target)
        if targets:
            return targets, where
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
        return targets, where

    def _applies(self, term: str, organ: str) -> bool:
        implied = self.taxonomy.implied.get(term)
        return implied is None or implied[0] == organ
