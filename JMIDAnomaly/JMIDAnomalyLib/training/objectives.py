"""What training optimises and measures: the patient-grouped fold split, the loss over known
labels, and the per-class validation AUC."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from JMIDAnomalyLib.common.errors import JMIDError
from JMIDAnomalyLib.training.data import CaseSample


def split_folds(samples: list[CaseSample], folds: int, seed: int) -> np.ndarray:
    """Fold index per sample: StratifiedGroupKFold grouped by patient, stratified on the
    first abnormal class present (or normal)."""
    from sklearn.model_selection import StratifiedGroupKFold

    strata = []
    for s in samples:
        positive = np.flatnonzero(np.nan_to_num(s.labels[:-1]) == 1)
        strata.append(int(positive[0]) + 1 if len(positive) else 0)
    groups = [s.patient_id for s in samples]
    patients = len(set(groups))
    if patients < folds:
        raise JMIDError(f"{patients} patients cannot fill {folds} folds")
    fold_of = np.zeros(len(samples), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(samples)), strata, groups)):
        fold_of[val] = k
    return fold_of


def auc_per_class(labels: np.ndarray, probs: np.ndarray, known: np.ndarray) -> list[float | None]:
    """ROC AUC per class over known labels (None where a class has one label value only)."""
    from sklearn.metrics import roc_auc_score

    out = []
    for k in range(labels.shape[1]):
        mask = known[:, k] > 0
        y = labels[mask, k]
        out.append(float(roc_auc_score(y, probs[mask, k])) if 0 < y.sum() < len(y) else None)
    return out


class Loss(nn.Module):
    """BCE with logits (or focal), ignoring unknown labels; per-sample logits get the case
    labels repeated over the samples."""

    def __init__(self, kind: str, gamma: float, pos_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.kind, self.gamma = kind, gamma
        self.register_buffer(
            "pos_weight", pos_weight if pos_weight is not None else torch.tensor([])
        )

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, known: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over known labels; logits (B, K), or (B, S, K) with the case labels
        repeated."""
        if logits.dim() == 3:  # (B, S, K): repeat the case labels over the samples
            labels = labels[:, None].expand_as(logits)
            known = known[:, None].expand_as(logits)
        weight = self.pos_weight if self.pos_weight.numel() else None
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, labels, reduction="none", pos_weight=weight
        )
        if self.kind == "focal":
            p = torch.sigmoid(logits)
            p_t = p * labels + (1 - p) * (1 - labels)
            loss = loss * (1 - p_t) ** self.gamma
        return (loss * known).sum() / known.sum().clamp(min=1.0)
