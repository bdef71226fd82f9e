"""Cue words of report prose: what a clause says about the findings it names.

Each kind acts on its clause only (:mod:`.extract` splits sentences into clauses):

- ``uncertain_negation``: negation words that mean "uncertain" (否定できない, cannot be excluded).
- ``history``: the findings are past (既往, 術後, history of, status post): not present now.
- ``negation``: absent, including hedged forms (目立たない, 明らかでない, no significant,
  not well seen, without evidence of).
- ``uncertain``: 疑い, 可能性, possible, suspicious for.
- ``unchanged`` and ``changed``: comparison with a prior exam (著変なし, 増大, unchanged,
  interval increase). The finding they refer to is present; the change is recorded. They win
  over the negation words they contain (著変あり*ません*, *no* interval change).
- ``assertion``: words that state something is seen (認め, noted), so a clause naming an organ
  and an unknown word is an abnormality of that organ.
- ``removal`` and ``partial``: an organ taken out (摘出, 胆摘, cholecystectomy, surgically
  absent) unless a partial word stands just before it (部分切除, partial nephrectomy).

Matched after NFKC normalisation and lower-casing; English cues are whole words.
"""

from __future__ import annotations

import re


def _words(text: str) -> tuple[str, ...]:
    """A cue table written as ``a|b|c`` (one string keeps the tables short and readable)."""
    return tuple(text.split("|"))


(
    CUE_UNCERTAIN_NEGATION,
    CUE_HISTORY,
    CUE_NEGATION,
    CUE_UNCERTAIN,
    CUE_UNCHANGED,
    CUE_CHANGED,
    CUE_ASSERTION,
    CUE_REMOVAL,
    CUE_PARTIAL,
) = (
    "uncertain_negation",
    "history",
    "negation",
    "uncertain",
    "unchanged",
    "changed",
    "assertion",
    "removal",
    "partial",
)

_NEGATION_JA = _words(
    "認めない|認めません|認めず|認められない|認められません|ありません|はない|がない|なし|"
    "無し|なく|見られない|みられない|見られません|みられません|指摘できない|"
    "指摘できません|指摘されない|指摘されません|指摘し得ない|指摘し得ません|見当たらない|"
    "見当たりません|消失|目立たない|目立たず|目立ちません|明らかでない|明らかではない|"
    "明らかでありません|明らかではありません|同定できない|同定できません|同定されない|"
    "同定されません|認識できない|認識できません|確認できない|確認できません|確認されない|"
    "確認されません|描出されない|描出されません"
)
_NEGATION_EN = _words(
    "no|not|without|negative for|absence of|absent|free of|none|resolved|no longer|"
    "no significant|not well seen|not seen|not identified|not visualized|"
    "without evidence of|no evidence of|no definite|no convincing"
)
_UNCERTAIN_NEGATION = _words(
    "否定できない|否定できません|否定は困難|否定困難|除外できない|除外できません|"
    "cannot exclude|cannot be excluded|cannot be ruled out|cannot rule out|not excluded|"
    "can not be excluded|not be ruled out"
)
_UNCERTAIN = _words(
    "疑い|疑う|疑われ|可能性|示唆|鑑別|かもしれ|疑診|possible|possibly|suspicious for|"
    "suspected|suspect|questionable|may represent|may be|might|equivocal|differential"
)
_HISTORY = _words(
    "既往|術後|手術後|治療後|化学療法後|照射後|rfa後|tace後|摘出後|切除後|摘除後|"
    "history of|h/o|prior episode of|previous episode of|status post|s/p|post-operative|"
    "postoperative|post-surgical|postsurgical|previously treated|treated with"
)
_UNCHANGED = _words(
    "著変なし|著変なく|著変ありません|著変はありません|著変は認めません|著変を認めません|"
    "変化なし|変化なく|変化ありません|変化はありません|変化を認めません|不変|同様|同程度|"
    "unchanged|stable|no interval change|no significant change|not changed|similar to|"
    "again noted|again seen|remain|remains"
)
_CHANGED = _words(
    "増大|縮小|増加|減少|増悪|改善|interval increase|interval decrease|increased|"
    "decreased|larger|smaller|worsened|improved|interval development"
)
_ASSERTION = _words(
    "認め|あり|見られ|みられ|指摘|存在|伴う|seen|noted|present|there is|there are|"
    "demonstrated|demonstrates|identified|observed|shows"
)
_REMOVAL = _words(
    "摘出|摘除|全摘|切除|胆摘|脾摘|腎摘|cholecystectomy|splenectomy|nephrectomy|"
    "adrenalectomy|esophagectomy|oesophagectomy|pancreatectomy|surgically absent|"
    "surgically removed|resected|removed"
)
_PARTIAL = _words("部分|区域|体尾部|頭十二指腸|核出|partial|distal|segmental|hemi|whipple")

#: Cue kind -> its words.
CUES: dict[str, tuple[str, ...]] = {
    CUE_UNCERTAIN_NEGATION: _UNCERTAIN_NEGATION,
    CUE_HISTORY: _HISTORY,
    CUE_NEGATION: _NEGATION_JA + _NEGATION_EN,
    CUE_UNCERTAIN: _UNCERTAIN,
    CUE_UNCHANGED: _UNCHANGED,
    CUE_CHANGED: _CHANGED,
    CUE_ASSERTION: _ASSERTION,
}
#: Procedure words, matched on their own (摘出 inside the history cue 摘出後 still counts).
PROCEDURE_CUES: dict[str, tuple[str, ...]] = {CUE_REMOVAL: _REMOVAL, CUE_PARTIAL: _PARTIAL}

#: Organs a removal word can take out entirely. The liver is never absent after a resection;
#: the pancreas only after a total pancreatectomy.
REMOVABLE = ("gallbladder", "spleen", "kidney", "adrenal", "esophagus", "pancreas")
TOTAL_ONLY = {"pancreas": ("全摘", "total")}

# Section headers: a known name at a line start or after a sentence end, in brackets or
# followed by a colon. The kinds that are not read for present findings: history, indication,
# technique and comparison sections (removals there still count: "既往歴: 胆嚢摘出術").
_SECTION_NAMES = _words(
    "所見=findings|画像所見=findings|findings=findings|診断=impression|"
    "画像診断=impression|結論=impression|まとめ=impression|印象=impression|"
    "impression=impression|conclusion=impression|conclusions=impression|"
    "diagnosis=impression|summary=impression|臨床情報=history|臨床経過=history|"
    "臨床診断=history|既往歴=history|既往=history|病歴=history|検査目的=history|"
    "依頼内容=history|依頼目的=history|目的=history|history=history|"
    "clinical history=history|clinical information=history|clinical indication=history|"
    "indication=history|indications=history|reason for exam=history|"
    "reason for examination=history|technique=other|撮像法=other|撮影方法=other|"
    "comparison=other|比較=other|procedure=other"
)
SECTION_KINDS = dict(item.split("=") for item in _SECTION_NAMES)
_NAMES = "|".join(sorted((re.escape(n) for n in SECTION_KINDS), key=len, reverse=True))
SECTION_HEADER = re.compile(
    rf"(?:^|(?<=[。.\n]))[ \t]*(?:[【\[<＜(（][ \t]*({_NAMES})[ \t]*[】\]>＞)）][ \t]*[:：]?"
    rf"|({_NAMES})[ \t]*[:：])",
    re.IGNORECASE | re.MULTILINE,
)
