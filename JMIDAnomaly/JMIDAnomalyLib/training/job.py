"""The ``jmid train`` job: samples, folds, per-fold training, out-of-fold thresholds, bundle.

Folds that finished are skipped when a run is resumed; an interrupted fold continues from its
``last.pt``. Under ``torchrun`` every rank runs this; rank 0 writes everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.devices import pick_device
from JMIDAnomalyLib.common.errors import InputError, JMIDError
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.imaging.label_tables import read_label_names
from JMIDAnomalyLib.imaging.manifest import read_manifest
from JMIDAnomalyLib.models import calibration as calibration_maps
from JMIDAnomalyLib.models import domain as domains
from JMIDAnomalyLib.models.bundle import save_bundle
from JMIDAnomalyLib.models.registry import LAYOUT_25D, create_model, model_input
from JMIDAnomalyLib.training.config import THRESHOLD_RULES, TrainConfig
from JMIDAnomalyLib.training.data import (
    CaseSample,
    CropDataset,
    label_arrays,
    load_samples,
    loader_workers,
    read_organ_labels,
)
from JMIDAnomalyLib.training.evaluation import prediction_rows, write_predictions
from JMIDAnomalyLib.training.objectives import split_folds
from JMIDAnomalyLib.training.trainer import FoldTrainer, seed_everything

logger = logging.getLogger(__name__)

#: At most this many of a fold's training cases (and of its validation cases) fit its
#: training domain: enough for the Gaussian of a few hundred features, and at the published
#: scale a fraction of the out-of-fold predictions' cost.
DOMAIN_CASES = 2000


def choose_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    known: np.ndarray,
    classes: Sequence[str],
    rule: str = "balanced",
    min_specificity: float = 0.0,
    confidence: float = 0.0,
) -> dict[str, float]:
    """Per class, the threshold (0.5 when undefined) that ``rule`` prefers among those with at
    least ``min_specificity``: ``balanced`` maximises min(sensitivity, specificity),
    ``youden`` sensitivity + specificity - 1. With ``confidence`` (e.g. 0.95) a threshold
    qualifies only where the Wilson interval's lower end of its specificity reaches
    ``min_specificity``, so new cases keep it with that confidence rather than half the time;
    a class whose negatives are too few for any threshold to qualify falls back to the point
    estimate, with a warning. It is placed just under the lowest score it
    flags (by 1e-4, or half the gap to the next lower score): a threshold equal to a score
    would leave that score's cases to rounding (a copy rounded to 5 decimals in
    predictions.csv, or to float32, falls under it).

    Args:
        labels, probs, known: (N, K) labels (0/1), probabilities and 1 where the label is known.
        classes: the K class names.
        rule: ``balanced`` or ``youden`` (:data:`THRESHOLD_RULES`).
        min_specificity: the lowest specificity a threshold may have.
        confidence: 0 (the point estimate) or the confidence level of that lowest specificity.
    """
    from sklearn.metrics import roc_curve

    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, not {rule!r}")
    out = {}
    for k, cls in enumerate(classes):
        mask = (known[:, k] > 0) & ~np.isnan(probs[:, k])
        y = labels[mask, k]
        if 0 < y.sum() < len(y):
            fpr, tpr, scores = roc_curve(y, probs[mask, k], drop_intermediate=False)
            merit = np.minimum(tpr, 1 - fpr) if rule == "balanced" else tpr - fpr
            negatives = int((y == 0).sum())
            allowed = _specific_enough(fpr, negatives, min_specificity, confidence)
            if confidence and not allowed[1:].any():
                logger.warning(
                    "%s: too few negatives (%d) for specificity >= %.2f at %.0f%% confidence;"
                    " the threshold uses the point estimate",
                    cls,
                    negatives,
                    min_specificity,
                    confidence * 100,
                )
                allowed = _specific_enough(fpr, negatives, min_specificity, 0.0)
            best = int(np.argmax(np.where(allowed, merit, -np.inf)))
            lower = scores[best + 1] if best + 1 < len(scores) else 0.0
            below = scores[best] - min(1e-4, (scores[best] - lower) / 2)
            out[cls] = float(min(max(below, 0.0), 1.0))
        else:
            out[cls] = 0.5
    return out


def _specific_enough(
    fpr: np.ndarray, negatives: int, min_specificity: float, confidence: float
) -> np.ndarray:
    """Which ROC points have at least ``min_specificity`` (the Wilson interval's lower end at
    ``confidence``, or the point estimate at 0). The first point (flag none) always qualifies."""
    specificity = 1 - fpr
    if confidence:
        from scipy.stats import binomtest

        # The fewest true negatives whose interval's lower end reaches the target.
        least = next(
            (
                k
                for k in range(int(np.floor(min_specificity * negatives)), negatives + 1)
                if binomtest(k, negatives).proportion_ci(confidence, method="wilson").low
                >= min_specificity
            ),
            negatives + 1,
        )
        allowed = np.rint(specificity * negatives) >= least
    else:
        allowed = specificity >= min_specificity - 1e-12
    allowed[0] = True
    return allowed


def _hash_labels(labels_dir: str, organ: str) -> str:
    return hashlib.sha256((Path(labels_dir) / f"{organ}.csv").read_bytes()).hexdigest()


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def train(config: TrainConfig, resume: bool = False, progress: Progress | None = None) -> Path:
    """Train the k-fold ensemble of ``config.organ`` into a bundle.

    Args:
        config: the training job.
        resume: continue the run in ``config.out`` (finished folds are kept, an interrupted
            fold continues from its ``last.pt``).
        progress: ``progress(fraction, message)``.

    Returns:
        The bundle folder (``<out>/bundle``; ``bundle.zip`` beside it).
    """
    rank, world = _distributed()
    out = Path(config.out)
    if rank == 0:
        _start_run(config, out, resume)
    seed_everything(config.seed)
    samples, data_summary = load_samples(config)
    if len(samples) < config.folds:
        raise JMIDError(
            f"only {len(samples)} usable {config.organ} samples for {config.folds} folds"
        )
    fold_of = split_folds(samples, config.folds, config.seed)
    oof, states = _train_folds(config, samples, fold_of, resume, progress, rank, world)
    bundle = out / "bundle"
    if rank == 0:
        _write_bundle(config, bundle, samples, fold_of, oof, states, data_summary)
        if config.mlflow:
            _log_mlflow(config, out)
    if world > 1:
        torch.distributed.barrier()
    return bundle


def _start_run(config: TrainConfig, out: Path, resume: bool) -> None:
    """Check the inputs and the output folder, then write ``config.json`` (nothing is written
    before the inputs are known to be there)."""
    read_organ_labels(config.labels_dir, config.organ)
    if config.manifest:
        read_manifest(config.manifest)
    elif config.seg_labels:
        read_label_names(config.seg_labels)
    saved = out / "config.json"
    if saved.exists() and resume:
        previous = json.loads(saved.read_text(encoding="utf-8"))
        if previous != config.to_dict():
            raise InputError(saved, "the run being resumed used another configuration")
    elif saved.exists() and any(out.glob("fold_*/last.pt")):
        raise InputError(
            out, "holds an earlier run: pass --resume to continue it, or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    config.save(saved)


def _train_folds(
    config: TrainConfig,
    samples: list[CaseSample],
    fold_of: np.ndarray,
    resume: bool,
    progress: Progress | None,
    rank: int,
    world: int,
) -> tuple[np.ndarray, list[dict]]:
    """Train (or, resuming, skip the finished) folds.

    Returns:
        (out-of-fold probabilities (N, K), each fold's best state dict); on ranks other than 0
        the states are empty.
    """
    out = Path(config.out)
    writer = None
    if rank == 0 and config.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    oof = np.full((len(samples), len(ORGAN_CLASSES[config.organ])), np.nan, dtype=np.float32)
    states = []
    for k in range(config.folds):
        train_idx, val_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        done = out / f"fold_{k}" / "done.json"
        if resume and done.exists():
            oof[val_idx] = np.array(json.loads(done.read_text())["oof"], dtype=np.float32)
        else:
            trainer = FoldTrainer(
                config,
                k,
                [samples[i] for i in train_idx],
                [samples[i] for i in val_idx],
                rank,
                world,
            )
            span = _fold_progress(progress, k, config.folds)
            trainer.fit(span, writer, resume)
            # Every rank loads the best epoch (rank 0 wrote it) and predicts its share.
            trainer.module.load_state_dict(_best_state(out, k))
            oof[val_idx] = trainer.predict(trainer.val_set, config.mirroring)
            trainer.close()
            if rank == 0:
                record = {"oof": oof[val_idx].tolist(), "history": trainer.history}
                with atomic_output(done) as tmp:
                    tmp.write_text(json.dumps(record))
        if rank == 0:
            states.append(_best_state(out, k))
    if writer is not None:
        writer.close()
    return oof, states


def _fold_progress(progress: Progress | None, fold: int, folds: int) -> Progress | None:
    """A fold's share of the job's progress."""
    if progress is None:
        return None
    return lambda fraction, message: progress((fold + fraction) / folds, message)


def _best_state(out: Path, fold: int) -> dict:
    path = out / f"fold_{fold}" / "best.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _write_bundle(
    config: TrainConfig,
    bundle: Path,
    samples: list[CaseSample],
    fold_of: np.ndarray,
    oof: np.ndarray,
    states: list[dict],
    data_summary: dict,
) -> None:
    """Calibration and thresholds from the out-of-fold predictions, the predictions (calibrated
    and raw), then the bundle (metadata and fold weights)."""
    classes = ORGAN_CLASSES[config.organ]
    labels, known = label_arrays(samples)
    calibration = calibration_maps.fit(labels, oof, known, classes)
    calibrated = calibration_maps.calibrate(calibration, oof, classes)
    rows = prediction_rows(samples, calibrated, classes, config.organ, fold_of, raw=oof)
    write_predictions(Path(config.out) / "oof_predictions.csv", rows)
    crop = config.crop_config()
    kwargs = dict(config.model_kwargs)
    if model_input(config.model) == LAYOUT_25D:
        kwargs.setdefault("in_chans", crop.slices_per_sample)
    meta = {
        "organ": config.organ,
        "classes": list(classes),
        "model": config.model,
        "model_kwargs": kwargs,
        "preprocessing": crop.to_dict(),
        "test_time_mirroring": config.mirroring,
        "calibration": calibration,
        "thresholds": choose_thresholds(
            labels,
            calibrated,
            known,
            classes,
            config.threshold_rule,
            config.min_specificity,
            config.specificity_confidence,
        ),
        "training": {
            **data_summary,
            "patients": len({s.patient_id for s in samples}),
            "label_file_sha256": _hash_labels(config.labels_dir, config.organ),
        },
        "config": config.to_dict(),
    }
    save_bundle(bundle, meta, states, _fit_domain(config, samples, fold_of, states, kwargs))


def _fit_domain(
    config: TrainConfig,
    samples: list[CaseSample],
    fold_of: np.ndarray,
    states: list[dict],
    kwargs: dict,
) -> list[dict]:
    """Each fold model's training domain (:mod:`~JMIDAnomalyLib.models.domain`) from at most
    :data:`DOMAIN_CASES` of its training and of its validation cases, each crop read once."""
    rng = np.random.default_rng(config.seed)
    chosen = np.zeros(len(samples), bool)
    for k in range(len(states)):
        for part in (fold_of != k, fold_of == k):
            chosen[rng.permutation(np.flatnonzero(part))[:DOMAIN_CASES]] = True
    index = np.flatnonzero(chosen)
    device = pick_device(config.device)
    models = []
    for state in states:
        model = create_model(config.model, num_classes=len(ORGAN_CLASSES[config.organ]), **kwargs)
        model.load_state_dict(state)
        models.append(model.to(device))
    crop = config.crop_config()
    dataset = CropDataset(
        [samples[i] for i in index], model_input(config.model), crop.samples, crop.slices_per_sample
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        num_workers=loader_workers(config.num_workers, device),
    )
    per_model = domains.features(models, (x for x, *_ in loader), device)
    return domains.fit_folds(per_model, fold_of[index])


def _log_mlflow(config: TrainConfig, out: Path) -> None:
    try:
        import mlflow
    except ImportError:
        logger.warning("mlflow logging was asked for but mlflow is not installed")
        return
    with mlflow.start_run(run_name=f"jmid-{config.organ}"):
        mlflow.log_params({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})
        for done in sorted(out.glob("fold_*/done.json")):
            for row in json.loads(done.read_text())["history"]:
                mlflow.log_metric(f"{done.parent.name}_val_auc", row["val_auc"], step=row["epoch"])
        mlflow.log_artifacts(str(out / "bundle"), "bundle")
