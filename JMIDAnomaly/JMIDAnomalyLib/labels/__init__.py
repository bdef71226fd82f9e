"""Labels from radiology reports: J-MID structured findings and free text -> per-organ targets.

- :mod:`.taxonomy`: organ synonyms, keyword -> class tables (built-in or the user's).
- :mod:`.cues`: cue words (negation, history, comparison, removal ...) and section headers.
- :mod:`.clauses`: prose -> sections, sentences, clauses, and what each clause's cues say.
- :mod:`.entities`: J-MID structured findings' offsets and certainty.
- :mod:`.extract`: evidence from one report (structured entities or free text).
- :mod:`.audit`: the evidence column's entries and ``jmid labels --explain``.
- :mod:`.reports`: streaming readers for the J-MID CSV export, JSON Lines and folders.
- :mod:`.labeling`: evidence -> multi-hot labels with policies; the ``jmid labels`` job.
"""

from __future__ import annotations

from JMIDAnomalyLib.labels.labeling import LabelOptions, label_reports

__all__ = ["LabelOptions", "label_reports"]
