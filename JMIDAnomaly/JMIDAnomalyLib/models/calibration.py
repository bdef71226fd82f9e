"""Calibrated probabilities: per-class maps from a model's raw scores to probabilities that mean
what they say, fitted on out-of-fold predictions and stored in the bundle.

Per class, Platt scaling (a logistic regression on the logit of the raw probability, scikit-
learn) or, where there are at least :data:`MIN_ISOTONIC` positives and as many negatives,
centred isotonic regression (Oron & Flournoy 2017: scikit-learn's isotonic fit, each pooled
block's rate placed at the block's mean raw score, linear in between; stored as those points).
Both are strictly increasing in the raw score (centred isotonic between its first and last
block, flat beyond), so a calibrated score never reorders nor ties cases and AUC is unchanged;
a Platt fit that does not rise leaves the class with its raw scores. Every consumer (analysis,
the browser review, the Slicer table, evaluation) applies the bundle's calibration through
:func:`calibrate`. :func:`cross_fit_class` calibrates each fold's out-of-fold predictions with
a map fitted on the other folds, so the figures reported after calibration are not fitted on
the cases they are measured on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Positives (and negatives) a class needs for isotonic regression; fewer: Platt scaling.
MIN_ISOTONIC = 50
METHODS = ("identity", "platt", "isotonic")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit_class(raw: np.ndarray, y: np.ndarray) -> dict:
    """The calibration map of one class from raw probabilities and 0/1 labels (JSON-ready)."""
    raw, y = np.asarray(raw, np.float64), np.asarray(y, np.float64)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return {"method": "identity"}
    if min(positives, len(y) - positives) >= MIN_ISOTONIC:
        from sklearn.isotonic import IsotonicRegression

        # Centred isotonic regression: each pooled block's rate at its mean raw score, linear
        # in between, so the map rises strictly there and ties no cases (plain isotonic
        # regression is flat over each block: cases tie, AUC falls, thresholds are coarse).
        fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(raw, y)
        levels, block = np.unique(fitted, return_inverse=True)
        centres = np.bincount(block, raw) / np.bincount(block)
        return {
            "method": "isotonic",
            "x": [float(v) for v in centres],
            "y": [float(v) for v in levels],
        }
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4, max_iter=1000).fit(_logit(raw)[:, None], y)
    a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    if a <= 0:  # scores that do not rank: keep them as they are
        return {"method": "identity"}
    return {"method": "platt", "a": a, "b": b}


def apply_class(calibration: Mapping, raw: np.ndarray) -> np.ndarray:
    """One class's calibrated probabilities (any shape, float64)."""
    raw = np.asarray(raw, np.float64)
    method = calibration.get("method", "identity")
    if method == "platt":
        return 1.0 / (1.0 + np.exp(-(calibration["a"] * _logit(raw) + calibration["b"])))
    if method == "isotonic":
        return np.interp(raw, calibration["x"], calibration["y"])
    return raw


def fit(
    labels: np.ndarray, raw: np.ndarray, known: np.ndarray, classes: Sequence[str]
) -> dict[str, dict]:
    """Per-class maps from (N, K) labels, raw probabilities and known-masks."""
    out = {}
    for k, cls in enumerate(classes):
        mask = (known[:, k] > 0) & ~np.isnan(raw[:, k])
        out[cls] = fit_class(raw[mask, k], labels[mask, k])
    return out


def calibrate(
    calibration: Mapping[str, Mapping], raw: np.ndarray, classes: Sequence[str]
) -> np.ndarray:
    """(..., K) raw probabilities -> calibrated; classes without a map keep their raw scores."""
    raw = np.asarray(raw, np.float64)
    out = raw.copy()
    for k, cls in enumerate(classes):
        if cls in calibration:
            out[..., k] = apply_class(calibration[cls], raw[..., k])
    return out


def cross_fit_class(raw: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """One class's out-of-fold predictions, each fold calibrated by a map fitted on the other
    folds (what calibration does to cases it was not fitted on)."""
    raw, y, folds = np.asarray(raw, np.float64), np.asarray(y, np.float64), np.asarray(folds)
    out = raw.copy()
    for fold in np.unique(folds):
        held = folds == fold
        out[held] = apply_class(fit_class(raw[~held], y[~held]), raw[held])
    return out


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: the mean over equal-width probability bins of |observed rate - mean probability|,
    weighted by the bin's share of cases. ``y`` (n,) gives a float; label sets (draws, n) for
    the same predictions give one ECE per set (an array)."""
    p, y = np.asarray(p, np.float64), np.asarray(y)  # 0/1 or bool: means need no float copy
    if not len(p):
        return float("nan")
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = np.zeros(y.shape[:-1])
    for b in np.unique(index):
        members = index == b
        total += members.mean() * np.abs(y[..., members].mean(-1) - p[members].mean())
    return float(total) if total.ndim == 0 else total


def ece_if_calibrated(p: np.ndarray, draws: int = 2000, bins: int = 10, seed: int = 0) -> float:
    """The ECE that a perfectly calibrated model with these predictions would show on this many
    cases: the mean ECE over label sets drawn from the predictions themselves ("consistency
    resampling", Broecker & Smith 2007). The binned ECE is biased upwards on small sets (on 54
    cases with a few positives, about 0.08 for a perfectly calibrated model), so a measured ECE
    means little unless it is compared with this floor."""
    p = np.asarray(p, np.float64)
    if not len(p):
        return float("nan")
    rng = np.random.default_rng(seed)
    total = 0.0
    for start in range(0, draws, 100):  # 100 label sets at a time: memory 100 x cases
        labels = rng.random((min(100, draws - start), len(p))) < p
        total += expected_calibration_error(p, labels, bins).sum()
    return float(total / draws)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(mean probability, observed rate) of the non-empty equal-width bins, for a diagram."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    keep = [b for b in range(bins) if (index == b).any()]
    return (
        np.array([p[index == b].mean() for b in keep]),
        np.array([y[index == b].mean() for b in keep]),
    )
