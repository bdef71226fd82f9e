"""Labels from radiology reports: J-MID structured findings and free text -> per-organ targets.

- :mod:`.taxonomy`: organ synonyms, keyword -> class tables (built-in or the user's), cues.
- :mod:`.extract`: evidence from one report (structured entities or free text).
- :mod:`.reports`: streaming readers for the J-MID CSV export, JSON Lines and folders.
- :mod:`.labeling`: evidence -> multi-hot labels with policies; the ``jmid labels`` job.
"""

from __future__ import annotations

from JMIDAnomalyLib.labels.labeling import LabelOptions, label_reports

__all__ = ["LabelOptions", "label_reports"]
