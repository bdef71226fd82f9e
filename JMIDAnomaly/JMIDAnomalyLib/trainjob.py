"""The ``jmid train`` job: samples, folds, per-fold training, out-of-fold thresholds, bundle.

Folds that finished are skipped when a run is resumed; an interrupted fold continues from its
``last.pt``. Under ``torchrun`` every rank runs this; rank 0 writes everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .bundle import save_bundle
from .errors import InputError, JMIDError, atomic_output
from .evaluation import prediction_rows, write_predictions
from .organs import ORGAN_CLASSES
from .trainconfig import TrainConfig
from .training import FoldTrainer, Progress, seed_everything, split_folds
from .trainingdata import load_samples

logger = logging.getLogger(__name__)


def youden_thresholds(labels: np.ndarray, probs: np.ndarray, known: np.ndarray, classes) -> dict:
    """Per class, the threshold maximising sensitivity + specificity - 1 (0.5 when undefined)."""
    from sklearn.metrics import roc_curve

    out = {}
    for k, cls in enumerate(classes):
        mask = (known[:, k] > 0) & ~np.isnan(probs[:, k])
        y = labels[mask, k]
        if 0 < y.sum() < len(y):
            fpr, tpr, thresholds = roc_curve(y, probs[mask, k])
            best = int(np.argmax(tpr - fpr))
            out[cls] = float(min(max(thresholds[best], 0.0), 1.0))
        else:
            out[cls] = 0.5
    return out


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
    """Train the k-fold ensemble of ``config.organ``; returns the bundle folder."""
    rank, world = _distributed()
    out = Path(config.out)
    saved = out / "config.json"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if saved.exists() and resume:
            previous = json.loads(saved.read_text(encoding="utf-8"))
            if previous != config.to_dict():
                raise InputError(saved, "the run being resumed used another configuration")
        elif saved.exists() and any(out.glob("fold_*/last.pt")):
            raise InputError(
                out, "holds an earlier run: pass --resume to continue it, or another --out"
            )
        config.save(saved)
    seed_everything(config.seed)
    classes = ORGAN_CLASSES[config.organ]
    samples, data_summary = load_samples(config)
    if len(samples) < config.folds:
        raise JMIDError(
            f"only {len(samples)} usable {config.organ} samples for {config.folds} folds"
        )
    fold_of = split_folds(samples, config.folds, config.seed)
    writer = None
    if rank == 0 and config.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    oof = np.full((len(samples), len(classes)), np.nan, dtype=np.float32)
    states = []
    for k in range(config.folds):
        train_idx, val_idx = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        done = out / f"fold_{k}" / "done.json"
        trainer = FoldTrainer(
            config, k, [samples[i] for i in train_idx], [samples[i] for i in val_idx], rank, world
        )
        if resume and done.exists():
            oof[val_idx] = np.array(json.loads(done.read_text())["oof"], dtype=np.float32)
        else:

            def fold_progress(f, m, k=k):
                if progress:
                    progress((k + f) / config.folds, m)

            trainer.fit(fold_progress, writer, resume)
            if rank == 0:
                best = torch.load(
                    out / f"fold_{k}" / "best.pt", map_location="cpu", weights_only=True
                )
                trainer._module().load_state_dict(best["model"])
                oof[val_idx] = trainer.predict(trainer.val_set)
                with atomic_output(done) as tmp:
                    tmp.write_text(
                        json.dumps({"oof": oof[val_idx].tolist(), "history": trainer.history})
                    )
        if rank == 0:
            best = torch.load(out / f"fold_{k}" / "best.pt", map_location="cpu", weights_only=True)
            states.append(best["model"])
    if writer is not None:
        writer.close()
    bundle = out / "bundle"
    if rank == 0:
        labels = np.stack([np.nan_to_num(s.labels) for s in samples])
        known = np.stack([~np.isnan(s.labels) for s in samples]).astype(float)
        thresholds = youden_thresholds(labels, oof, known, classes)
        rows = prediction_rows(samples, oof, classes, config.organ, fold_of)
        write_predictions(out / "oof_predictions.csv", rows)
        crop = config.crop_config()
        kwargs = dict(config.model_kwargs)
        if not config.model.startswith("cnn3d"):
            kwargs.setdefault("in_chans", crop.slices_per_sample)
        meta = {
            "organ": config.organ,
            "classes": list(classes),
            "model": config.model,
            "model_kwargs": kwargs,
            "preprocessing": crop.to_dict(),
            "thresholds": thresholds,
            "training": {
                **data_summary,
                "patients": len({s.patient_id for s in samples}),
                "label_file_sha256": _hash_labels(config.labels_dir, config.organ),
            },
            "config": config.to_dict(),
        }
        save_bundle(bundle, meta, states)
        if config.mlflow:
            _log_mlflow(config, out)
    if world > 1:
        torch.distributed.barrier()
    return bundle


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
