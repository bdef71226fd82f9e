"""J-MID structured findings: where an entity sits in the report and what its certainty means."""

from __future__ import annotations

from JMIDAnomalyLib.labels.clauses import NEGATIVE, POSITIVE, UNCERTAIN, Reading

# certainty_level names -> score, for exports that give a level without a score.
CERTAINTY_LEVELS = {"denial": 0, "unlikely": 1, "possible": 2, "likely": 3, "definitive": 4}


def entity_start(entity: dict, text: str) -> int | None:
    """Where an entity starts in the report text: J-MID token indices are character offsets
    (checked against the tokens; else the first occurrence of its surface)."""
    start, end = entity.get("start_idx"), entity.get("end_idx")
    tokens = entity.get("tokens")
    if isinstance(start, int) and isinstance(end, int) and isinstance(tokens, list):
        if text[start : end + 1] == "".join(map(str, tokens)):
            return start
    start = text.find(str(entity.get("surface_name") or "\0"))
    return start if start >= 0 else None


def certainty_cue(polarity: int, level: str, reading: Reading | None) -> str:
    """The cue of a structured finding: its certainty, or the comparison its sentence makes."""
    if polarity != POSITIVE:
        return f"certainty: {level}"
    return reading.cue if reading is not None and reading.change else ""


def score_polarity(score, level) -> int:
    """A J-MID certainty (score 0..4, or a level name) as a polarity: 0 negative, 1-2
    uncertain, 3-4 positive; missing or unreadable is definitive."""
    if score is None or score == "":
        score = CERTAINTY_LEVELS.get(str(level).lower(), 4) if level else 4
    try:
        score = float(score)
    except (TypeError, ValueError):
        score = 4.0
    if score <= 0:
        return NEGATIVE
    return POSITIVE if score >= 3 else UNCERTAIN
