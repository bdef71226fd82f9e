"""Organ synonyms, finding keyword tables and certainty cues, compiled into fast matchers.

Keyword tables use the published format, one CSV per organ (``liver.csv``, ...):
``keyword,keyword_en,frequency,category`` where ``category`` is the index of the class in the
organ's class list (:data:`JMIDAnomalyLib.organs.ORGAN_CLASSES`). A keyword ``A+B`` matches
``A`` followed later in the same clause by ``B`` (e.g. ``膵管+拡張`` matches 主膵管は拡張).
English keywords match at a word start, so ``cyst`` also matches ``cysts`` and ``cystic``.

Text is matched after NFKC normalisation (full-width digits, letters and units become ASCII)
and lower-casing.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES, ORGANS
from JMIDAnomalyLib.labels.cues import (
    CUE_CHANGED,
    CUE_HISTORY,
    CUE_UNCHANGED,
    CUES,
    PROCEDURE_CUES,
)

ALL_ORGANS = "all"
#: Anatomy that is none of the organs (stomach, lymph nodes, aorta, ascites): a finding bound to
#: it is dropped, so it is not given to the organ named beside it.
OTHER_ANATOMY = "other"


def normalize(text: str) -> str:
    """NFKC (full-width digits and letters to ASCII) and lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def _term_regex(term: str) -> str:
    parts = [p for p in term.split("+") if p]
    pieces = []
    for part in parts:
        escaped = re.escape(part)
        pieces.append(
            f"(?<![a-z]){escaped}" if part[0].isascii() and part[0].isalpha() else escaped
        )
    return ".*?".join(pieces)


class TermMatcher:
    """One regex over many terms; ``find(text)`` yields (start, end, term index).

    The terms are compiled into a prefix trie (one alternative per distinct next character, an
    empty marker group per term), which is many times faster than a flat alternation. Longer
    terms are tried first at each position, so 副腎 wins over 腎 and 嚢胞性病変 over 嚢胞.
    """

    def __init__(self, terms: list[str], whole_words: bool = False) -> None:
        self.terms = terms
        self.whole_words = whole_words
        trie: dict = {}
        for index, term in enumerate(terms):
            parts = [p for p in term.split("+") if p]
            node = trie
            for char in parts[0]:
                node = node.setdefault(char, {})
            # At the end of the first piece: the rest of an A+B term, or the plain end.
            node.setdefault("", []).append((index, parts[1:]))
        self._group_to_term: list[int] = []
        pattern = self._node_pattern(trie, root=True)
        self.regex = re.compile(pattern) if terms else re.compile(r"(?!x)x")

    def _node_pattern(self, node: dict, root: bool = False) -> str:
        branches = []
        for char in sorted(k for k in node if k):
            # Word start for English terms, checked after the first character so every root
            # branch starts with a literal (lets the regex engine skip ahead by character set).
            boundary = "(?<![a-z].)" if root and char.isascii() and char.isalpha() else ""
            branches.append(re.escape(char) + boundary + self._node_pattern(node[char]))
        # Terms ending here come after longer ones; A+B terms before plain ones.
        for index, rest in sorted(node.get("", []), key=lambda item: -len(item[1])):
            self._group_to_term.append(index)
            tail = "".join(".*?" + _term_regex(piece) for piece in rest)
            last = self.terms[index][-1]
            if self.whole_words and last.isascii() and last.isalpha():
                tail += "(?![a-z])"
            branches.append(f"{tail}()")
        if len(branches) == 1 and not root:
            return branches[0]
        return "(?:" + "|".join(branches) + ")"

    def find(self, text: str):
        """(start, end, term) of every keyword in ``text``, longest first, without overlaps."""
        for match in self.regex.finditer(text):
            yield match.start(), match.end(), self._group_to_term[match.lastindex - 1]


@dataclass
class Taxonomy:
    """Organ synonyms, keyword tables and cues, compiled.

    Attributes:
        anatomy: term -> (organ or ``all``, side or None); side is ``left``, ``right``, ``both``.
        keywords: term -> {organ: class} from the per-organ tables.
        implied: term -> (organ, side, class) for diagnoses that name their organ (脂肪肝, 脾腫).
        sources: where each organ's table came from (built-in or a user file).
        problems: rows of the tables that were left out, and why (``summary.json`` lists them).
    """

    anatomy: dict[str, tuple[str, str | None]]
    keywords: dict[str, dict[str, str]]
    implied: dict[str, tuple[str, str | None, str]]
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.anatomy_terms = list(self.anatomy)
        self.anatomy_matcher = TermMatcher(self.anatomy_terms)
        # Findings: table keywords and implied diagnoses in one matcher.
        self.finding_terms = list(dict.fromkeys([*self.keywords, *self.implied]))
        self.finding_matcher = TermMatcher(self.finding_terms)
        # All cues in one matcher (English cues are whole words: "no" is not "nodule").
        cue_terms = [(normalize(cue), kind) for kind, cues in CUES.items() for cue in cues]
        self.cue_kinds = [kind for _, kind in cue_terms]
        self.cue_matcher = TermMatcher([term for term, _ in cue_terms], whole_words=True)
        context = [t for t, k in cue_terms if k in (CUE_HISTORY, CUE_UNCHANGED, CUE_CHANGED)]
        self.context_regex = TermMatcher(context, whole_words=True).regex
        procedures = [(normalize(c), k) for k, cues in PROCEDURE_CUES.items() for c in cues]
        self.procedure_kinds = [kind for _, kind in procedures]
        self.procedure_matcher = TermMatcher([t for t, _ in procedures], whole_words=True)
        self.normal_terms = {
            term
            for term, organs in self.keywords.items()
            if organs and all(cls == "nofinding" for cls in organs.values())
        }

    @classmethod
    def load(cls, directory: str | Path | None = None) -> Taxonomy:
        """The built-in tables, with any ``<organ>.csv`` in ``directory`` replacing an organ's.

        ``directory`` may also hold ``anatomy.csv`` (``term,organ,side``) and ``implied.csv``
        (``term,organ,side,class``) to extend the synonym tables.

        Raises:
            InputError: a table without keyword and category columns, or a bad synonym row.
        """
        builtin = resources.files("JMIDAnomalyLib") / "data"
        user = Path(directory) if directory else None
        if user is not None and not user.is_dir():
            raise InputError(user, "the taxonomy folder does not exist")
        keywords: dict[str, dict[str, str]] = {}
        sources: dict[str, str] = {}
        problems: list[str] = []
        for organ in ORGANS:
            path = user / f"{organ}.csv" if user and (user / f"{organ}.csv").exists() else None
            text, source = _read_table_text(path, builtin / "keywords" / f"{organ}.csv")
            sources[organ] = source
            for term, class_name in _parse_keyword_table(text, organ, source, problems):
                keywords.setdefault(term, {})[organ] = class_name
        anatomy = {
            normalize(r["term"]): (r["organ"], r["side"] or None)
            for r in _rows(*_read_table_text(None, builtin / "anatomy.csv"))
        }
        implied = {
            normalize(r["term"]): (r["organ"], r["side"] or None, r["class"])
            for r in _rows(*_read_table_text(None, builtin / "implied.csv"))
        }
        if user is not None:
            for name, target in (("anatomy.csv", anatomy), ("implied.csv", implied)):
                if (user / name).exists():
                    for r in _rows(*_read_table_text(user / name, None)):
                        _check_user_row(r, user / name)
                        target[normalize(r["term"])] = (
                            (r["organ"], r["side"] or None)
                            if name == "anatomy.csv"
                            else (r["organ"], r["side"] or None, r["class"])
                        )
        return cls(anatomy, keywords, implied, sources, problems)


def _read_table_text(path: Path | None, fallback) -> tuple[str, str]:
    if path is None:
        return fallback.read_text(encoding="utf-8"), "built-in"
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp932"):
        try:
            return raw.decode(encoding), str(path)
        except UnicodeDecodeError:
            continue
    raise InputError(path, "cannot be decoded as UTF-8 or Shift-JIS (CP932)")


def _rows(text: str, source: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def _check_user_row(row: dict[str, str], path: Path) -> None:
    organ = row.get("organ")
    if organ not in (*ORGANS, ALL_ORGANS, OTHER_ANATOMY):
        raise InputError(path, f"unknown organ '{organ}' (one of {', '.join(ORGANS)})")
    if "class" in row and row["class"] not in ORGAN_CLASSES.get(organ, ()):
        raise InputError(path, f"unknown class '{row['class']}' for {organ}")


def _parse_keyword_table(
    text: str, organ: str, source: str, problems: list[str]
) -> list[tuple[str, str]]:
    """(term, class) pairs of a keyword table in the published format (``keyword, keyword_en,
    frequency, category``), read tolerantly: ``keyword_en`` and ``frequency`` may be missing,
    extra columns are ignored, and a header without ``keyword_en`` above rows that have it (as
    in a published kidney table) is read as the four published columns. A row whose category is
    not a class index is left out and named in ``problems``.

    Raises:
        InputError: no ``keyword`` or no ``category`` column at all.
    """
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    header = [h.strip().lstrip("\ufeff").lower() for h in rows[0]] if rows else []
    if "keyword" not in header or "category" not in header:
        raise InputError(source, "expected the columns keyword,keyword_en,frequency,category")
    body = rows[1:]
    if "keyword_en" not in header and body and all(len(r) == len(header) + 1 for r in body):
        header.insert(header.index("keyword") + 1, "keyword_en")  # the header lacks it
    classes = ORGAN_CLASSES[organ]
    out = []
    for line, cells in enumerate(body, start=2):
        row = dict(zip(header, (c.strip() for c in cells), strict=False))
        category = row.get("category", "")
        if not category.isdigit() or not int(category) < len(classes):
            problems.append(
                f"{source}: line {line}: category '{category}' is not a class index "
                f"0..{len(classes) - 1} of {organ} ({', '.join(classes)}); row left out"
            )
            continue
        for term in (row.get("keyword", ""), row.get("keyword_en", "")):
            if term:
                out.append((normalize(term), classes[int(category)]))
    return out
