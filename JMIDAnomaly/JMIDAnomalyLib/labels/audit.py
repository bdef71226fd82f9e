"""Why each label was set: the evidence column's entries and ``jmid labels --explain CASE``.

Each entry names the class, how the report put it, the sentence and the deciding cue:

- ``cyst: 肝S6に嚢胞を認めます。`` present (no cue: a plain statement);
- ``cyst: 肝S6の嚢胞は著変ありません。 [comparison: 著変ありません (unchanged)]``;
- ``SOL?: ... [uncertain: 疑い]`` uncertain (counted by ``--uncertain``);
- ``no pancreatic_duct_dilation: 主膵管の拡張は目立ちません。 [negation: 目立ちません]``;
- ``past gallstone: 胆石症の既往あり ... [history: 既往]`` a past finding, not present now;
- ``removed: 胆嚢摘出術後です。 [removal: 摘出]`` the organ was taken out (``absent`` = 1);
- ``nofinding: 膵臓に異常はありません。 [negation: ありません]`` the statement that it is normal.
"""

from __future__ import annotations

from typing import NamedTuple

from JMIDAnomalyLib.labels.clauses import HISTORY, NEGATIVE, POSITIVE, REMOVED, UNCERTAIN

_PREFIX = {POSITIVE: "{}", UNCERTAIN: "{}?", NEGATIVE: "no {}", HISTORY: "past {}"}


class RowLabels(NamedTuple):
    """The labels of one organ row: class -> 1 / 0 / None (unknown), the evidence behind them
    as (class, :class:`~JMIDAnomalyLib.labels.extract.Evidence`), present ones first, and
    whether the report says the organ was removed."""

    values: dict[str, int | None]
    evidence: list
    absent: bool = False

    def entries(self) -> list[str]:
        """The evidence as the ``evidence`` column's entries (formatted only when written)."""
        return [
            entry(cls, POSITIVE if cls == "nofinding" else e.polarity, e.source, e.cue)
            for cls, e in self.evidence
        ]


def entry(cls: str, polarity: int, source: str, cue: str) -> str:
    """One evidence entry (see the module docstring)."""
    name = "removed" if polarity == REMOVED else _PREFIX[polarity].format(cls)
    return f"{name}: {source}" + (f" [{cue}]" if cue else "")


def explain_lines(row, labels: dict, extraction, mode: str) -> list[str]:
    """The lines ``jmid labels --explain`` prints for one report."""
    lines = [f"case {row.case_id} (row {row.row}), labels from the {mode}"]
    for (organ, side), result in labels.items():
        name = organ + (f" {side}" if side else "")
        if result.absent:
            shown = "absent (removed)"
        else:
            shown = " ".join(
                f"{c}={'' if v is None else v}" for c, v in result.values.items() if v != 0
            )
        lines.append(f"  {name:16s} {shown}")
        lines += [f"      {e}" for e in result.entries()]
    if extraction.unmapped:
        lines.append("  unmapped (-> other_abnormality): " + ", ".join(extraction.unmapped))
    return lines
