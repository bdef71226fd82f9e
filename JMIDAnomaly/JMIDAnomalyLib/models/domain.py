"""Whether a crop looks like the crops a bundle was trained on: its training domain.

A model trained on one kind of CT scores another kind unreliably (README, The demo cohort: the
demo's bundle flags 43 of 50 normal livers of another patient), so a bundle also tells when a
case lies outside what it was trained on. Per fold model, the case's encoder features (the last
feature map, averaged over space and samples: :func:`case_features`) are compared with a
Gaussian of the same features on the cases that model trained on (mean and Ledoit-Wolf shrunk
covariance, scikit-learn), by Mahalanobis distance (Lee et al. 2018). Each fold's distance is
divided by its threshold, the :data:`QUANTILE` of the distances of that fold's validation
cases (cases neither the model nor the Gaussian saw), and the ratios are averaged over folds:
a case above 1 lies farther from the training data than 99% of new cases like them.

The fits are tensors (``domain.pt`` in the bundle, read with ``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

#: The share of unseen training-like cases a threshold keeps inside.
QUANTILE = 0.99
#: The ratio above which a case is reported as outside the training data.
OUTSIDE = 1.0
#: What every consumer (jmid analyze, the browser review, Slicer) says of such a case.
OUTSIDE_NOTE = "unlike this model's training data: its scores and thresholds may not hold"


def case_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, F) float32: the model's last feature map averaged over space (and, 2.5D, samples).

    ``forward_with_features`` gives (B*S, F, h, w) for the 2.5D models and (B, F, z, y, x) for
    the 3D ones; both become (B, groups, F, voxels) here."""
    feature_map = model.forward_with_features(x)[1].float()
    batch, channels = x.shape[0], feature_map.shape[1]
    return feature_map.reshape(batch, -1, channels, feature_map[0, 0].numel()).mean((1, 3))


@torch.no_grad()
def features(
    models: Sequence[torch.nn.Module], batches: Iterable[torch.Tensor], device=None
) -> list[np.ndarray]:
    """Per model, (N, F) features of every case in ``batches`` (each batch read once; float32,
    no autocast: the fit and the check must see the same numbers)."""
    parts: list[list[np.ndarray]] = [[] for _ in models]
    for x in batches:
        if device is not None:
            x = x.to(device)
        for out, model in zip(parts, models, strict=True):
            out.append(case_features(model.eval(), x).cpu().numpy())
    return [np.concatenate(p) if p else np.zeros((0, 0), np.float32) for p in parts]


def fit(train: np.ndarray, validation: np.ndarray) -> dict[str, torch.Tensor]:
    """One fold's fit: the Gaussian of its training cases' features and the threshold (the
    :data:`QUANTILE` of its validation cases' distances)."""
    from sklearn.covariance import LedoitWolf

    gaussian = LedoitWolf().fit(np.asarray(train, np.float64))
    out = {
        "mean": torch.tensor(gaussian.location_, dtype=torch.float64),
        "precision": torch.tensor(gaussian.precision_, dtype=torch.float32),  # F x F: half size
    }
    held = distances(out, validation)
    out["threshold"] = torch.tensor(float(np.quantile(held, QUANTILE)) if len(held) else np.inf)
    return out


def distances(fold: dict[str, torch.Tensor], feats: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of (N, F) features from one fold's Gaussian."""
    centred = np.asarray(feats, np.float64) - fold["mean"].numpy()
    squared = np.einsum("ij,jk,ik->i", centred, fold["precision"].numpy(), centred)
    return np.sqrt(np.maximum(squared, 0.0))


def ratios(
    domain: Sequence[dict[str, torch.Tensor]], per_model: Sequence[np.ndarray]
) -> np.ndarray:
    """(N,) the mean over folds of each case's distance over the fold's threshold."""
    parts = [
        distances(d, f) / float(d["threshold"]) for d, f in zip(domain, per_model, strict=True)
    ]
    return np.mean(parts, axis=0)


def fit_folds(
    per_model: Sequence[np.ndarray], fold_of: np.ndarray
) -> list[dict[str, torch.Tensor]]:
    """Each fold model's fit from its features of all training cases (``fold_of``: each case's
    validation fold; fold ``k``'s model trained on the others)."""
    return [fit(f[fold_of != k], f[fold_of == k]) for k, f in enumerate(per_model)]


def save(path, domain: Sequence[dict[str, torch.Tensor]]) -> None:
    """Write the fits as tensors only (``domain.pt``)."""
    torch.save({f"fold_{k}.{name}": t for k, d in enumerate(domain) for name, t in d.items()}, path)


def unflatten(flat: dict[str, torch.Tensor], folds: int) -> list[dict[str, torch.Tensor]]:
    """The folds' fits from the tensors :func:`save` wrote (the bundle reads the file);
    KeyError when a fold's fit is incomplete."""
    return [
        {name: flat[f"fold_{k}.{name}"] for name in ("mean", "precision", "threshold")}
        for k in range(folds)
    ]
