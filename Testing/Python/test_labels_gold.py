"""The hand-labelled report set: both extractors must reproduce the hand labels."""

from __future__ import annotations

import pytest
from gold import f1, gold_labels, load_gold, predicted_labels, score
from JMIDAnomalyLib.labels.extract import Extractor

GOLD = load_gold()
EXTRACTOR = Extractor()


def test_the_gold_set_covers_what_it_must():
    assert len(GOLD) >= 80
    assert sum("structured" in g for g in GOLD) >= 25
    assert sum(g["lang"] == "en" for g in GOLD) >= 25
    texts = " ".join(g["text"] for g in GOLD)
    for needed in (
        "認めません",
        "疑",
        "n.p.",
        "１",
        "両腎",
        "左副腎",
        "No ",
        "unremarkable",
        "脾腫",
    ):
        assert needed in texts, needed


def _cases(mode):
    items = [g for g in GOLD if mode == "text" or "structured" in g]
    return pytest.mark.parametrize("item", items, ids=[g["id"] for g in items])


def _diff(gold, predicted):
    return {
        row: {c: (v, predicted[row][c]) for c, v in values.items() if v != predicted[row][c]}
        for row, values in gold.items()
        if values != predicted[row]
    }


@_cases("structured")
def test_structured_extractor_matches_hand_labels(item):
    gold, predicted = gold_labels(item), predicted_labels(item, EXTRACTOR, "structured")
    assert not _diff(gold, predicted), (item["text"], _diff(gold, predicted))


@_cases("text")
def test_free_text_extractor_matches_hand_labels(item):
    gold, predicted = gold_labels(item), predicted_labels(item, EXTRACTOR, "text")
    assert not _diff(gold, predicted), (item["text"], _diff(gold, predicted))


@pytest.mark.parametrize("uncertain", ["negative", "ignore"])
def test_uncertain_policy(uncertain):
    items = [g for g in GOLD if any(c.endswith("?") for cs in g["gold"].values() for c in cs)]
    assert len(items) >= 3
    for item in items:
        mode = "structured" if "structured" in item else "text"
        gold = gold_labels(item, uncertain)
        predicted = predicted_labels(item, EXTRACTOR, mode, uncertain)
        assert not _diff(gold, predicted), (item["text"], _diff(gold, predicted))


@pytest.mark.parametrize("mode,target", [("structured", 0.95), ("text", 0.90)])
def test_micro_f1_targets(mode, target):
    items = [g for g in GOLD if mode == "text" or "structured" in g]
    table = score(items, EXTRACTOR, mode)
    tp, fp, fn = (
        sum(v[i] for k, v in table.items() if not k.endswith("nofinding")) for i in range(3)
    )
    assert f1(tp, fp, fn)[2] >= target
