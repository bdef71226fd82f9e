"""Training data for one organ: labels from reports joined with cached organ crops.

Each sample is one organ crop (one per side for kidney and adrenal) with its multi-hot label
vector (NaN where the label is unknown) and the report evidence. Crops come from the crop
cache through its index, so a second job (or a resumed one) finds them without opening a CT.
The cases are a manifest's rows or the cohort layout's (:func:`dataset_rows`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from JMIDAnomalyLib.common.devices import available_cores
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.imaging.crop_cache import CropCache, CropInputs, CropRef
from JMIDAnomalyLib.imaging.manifest import ManifestRow, cohort_rows, read_manifest
from JMIDAnomalyLib.models.inputs import model_batch
from JMIDAnomalyLib.training import augment
from JMIDAnomalyLib.training.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class CaseSample:
    """One organ crop with its labels: (K,) float32 1/0/NaN (unknown), evidence, and where its
    (Z, Y, X) image lies in the crop cache (read per item, never held: memory stays flat in
    the number of cases)."""

    case_id: str
    patient_id: str
    side: str
    labels: np.ndarray  # (K,) float32: 1, 0, or NaN (unknown)
    evidence: str
    crop: CropRef


def label_arrays(samples: list[CaseSample]) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) labels with unknowns as 0, and (N, K) known-masks (1.0 where a label is known)."""
    labels = np.stack([s.labels for s in samples])
    return np.nan_to_num(labels), (~np.isnan(labels)).astype(float)


def read_organ_labels(labels_dir: str | Path, organ: str) -> list[dict]:
    """The rows of ``<labels_dir>/<organ>.csv`` (``jmid labels`` output), checked for the class
    columns."""
    path = Path(labels_dir) / f"{organ}.csv"
    if not path.is_file():
        raise InputError(path, f"no label file for the {organ}; run jmid labels first")
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in ORGAN_CLASSES[organ] if rows and c not in rows[0]]
    if missing:
        raise InputError(path, f"missing class columns {missing}")
    return rows


def dataset_rows(config: TrainConfig) -> dict[str, ManifestRow]:
    """The training cases by case id: the manifest's rows, or the cohort layout's (a CT in
    images_dir and its label map of the same file name in segs_dir, label table seg_labels:
    :func:`~JMIDAnomalyLib.imaging.manifest.cohort_rows`)."""
    if config.manifest:
        rows = read_manifest(config.manifest)
    else:
        rows = cohort_rows(Path(config.images_dir), Path(config.segs_dir), config.seg_labels)
    return {row.case_id: row for row in rows}


def _case_crops(
    cache: CropCache, row: ManifestRow | None, organ: str, crop_config
) -> tuple[list | None, str]:
    """The organ's crops of one case as (crop without arrays, where its image lies), from the
    cache index (the CT is read only on a miss); or None and why they cannot be had."""
    if row is None or not row.seg:
        return None, "CT or segmentation file missing"
    try:
        entries = cache.case_refs(
            CropInputs(row.ct, row.seg, row.seg_labels), (organ,), crop_config
        )
    except InputError as exc:
        return None, str(exc)
    return entries, ""


def load_samples(
    config: TrainConfig, progress: Progress | None = None
) -> tuple[list[CaseSample], dict]:
    """All usable samples of ``config.organ``, and a summary of what was left out and why.

    Crops come from the crop cache through its index: a case cropped before (by an earlier
    run or ``jmid crop --manifest``) is found from its files' stamps without opening the CT.
    """
    classes = ORGAN_CLASSES[config.organ]
    rows = read_organ_labels(config.labels_dir, config.organ)
    cases = dataset_rows(config)
    cache = CropCache(config.cache_dir())
    crop_config = config.crop_config()
    by_case: dict[str, list[dict]] = {}
    excluded = set(config.exclude_cases)
    for row in rows:
        if row["case_id"] not in excluded:
            by_case.setdefault(row["case_id"], []).append(row)
    samples: list[CaseSample] = []
    skipped: list[dict] = []
    for i, (case, case_rows) in enumerate(by_case.items()):
        crops, reason = _case_crops(cache, cases.get(case), config.organ, crop_config)
        if crops is None:
            skipped.append({"case_id": case, "reason": reason})
            continue
        by_side = {crop.side or "": (crop, ref) for crop, ref in crops}
        for row in case_rows:
            if row.get("absent") == "1":
                skipped.append({"case_id": case, "side": row["side"], "reason": "organ removed"})
                continue
            crop, ref = by_side.get(row["side"], (None, None))
            if ref is None:
                status = crop.status if crop else "absent"
                skipped.append({"case_id": case, "side": row["side"], "reason": f"organ {status}"})
                continue
            labels = np.array(
                [float(row[c]) if row[c] != "" else np.nan for c in classes], np.float32
            )
            patient = row["patient_id"] or cases[case].group
            samples.append(
                CaseSample(case, patient, row["side"], labels, row.get("evidence", ""), ref)
            )
        if progress:
            progress((i + 1) / len(by_case), f"loaded {case}")
    counts = {c: int(np.nansum([s.labels[k] for s in samples])) for k, c in enumerate(classes)}
    summary = {"samples": len(samples), "skipped": skipped, "positives": counts}
    return samples, summary


#: The most DataLoader workers ``num_workers: -1`` (auto) starts.
MAX_AUTO_WORKERS = 8


def loader_workers(requested: int, device: torch.device | str | None = None) -> int:
    """DataLoader workers: ``requested``, or for -1 one less than the cores this process may
    use (the training process computes on the rest), at least 1 and at most
    :data:`MAX_AUTO_WORKERS`; but none when the model computes on a CPU of 2 cores or fewer.
    There the computation's threads take every core, and a worker reading beside them stalls
    them: side by side on 2 cores (float32, demo crops, three rounds), the demo trained 67, 64
    and 77 cases/s reading in the training process against 56, 59 and 68 with one worker (and
    78 with one worker against 63 with two, measured before on a bfloat16 CPU)."""
    if requested >= 0:
        return requested
    cores = available_cores()
    if device is not None and torch.device(device).type == "cpu" and cores <= 2:
        return 0
    return max(1, min(cores - 1, MAX_AUTO_WORKERS))


class CropDataset(torch.utils.data.Dataset):
    """Samples as model input: 2.5D stacks (S, C, H, W) or a 3D crop (1, Z, Y, X).

    Each item's crop is read from the cache and dequantised where the item is made (in the
    DataLoader's workers). An item is ``(x, labels, known, index)``. With ``augment``
    (training) it is ``(crop, labels, known, index, draw)`` instead: the (Z, Y, X) crop and its
    augmentation draw, which the training loop applies to the whole batch on its device and then
    lays out as model input (:meth:`training_input`; :mod:`~JMIDAnomalyLib.training.augment`).
    The draws are seeded from (seed, epoch, item), never from the worker, so a run gives the
    same batches with any number of workers. An index ``i`` is item ``i % len`` in epoch
    ``i // len`` (what :class:`EpochSampler` yields).
    """

    def __init__(
        self,
        samples: list[CaseSample],
        layout: str,
        n_samples: int,
        n_slices: int,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.layout = layout
        self.n_samples = n_samples
        self.n_slices = n_slices
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        epoch, item = divmod(int(index), len(self.samples))
        sample = self.samples[item]
        volume = torch.from_numpy(sample.crop.read())  # (Z, Y, X)
        labels = torch.from_numpy(np.nan_to_num(sample.labels, nan=0.0))
        known = torch.from_numpy(~np.isnan(sample.labels)).float()
        if self.augment:
            return volume.float(), labels, known, item, augment.draw(self.seed, epoch, item)
        x = model_batch(volume[None], self.layout, self.n_samples, self.n_slices)[0]
        return x.float().contiguous(), labels, known, item

    def training_input(self, batch: list, device: torch.device) -> torch.Tensor:
        """A loader batch as model input on ``device``: an augmenting dataset's crops
        augmented there as a batch and laid out; otherwise the batch's input moved there."""
        x = batch[0].to(device, non_blocking=True)
        if not self.augment:
            return x
        return model_batch(augment.apply(x, batch[4]), self.layout, self.n_samples, self.n_slices)


class EpochSampler(torch.utils.data.Sampler):
    """The training order of one epoch, for one rank: a seeded shuffle (or, ``weights`` given,
    a seeded weighted draw with replacement: balanced sampling), split between ``world``
    ranks (every rank gets the same number of items). Runs in the main process, so
    :meth:`set_epoch` reaches persistent workers; it yields ``epoch * n + item``
    (:class:`CropDataset`'s indices).

    Args:
        n: items in the dataset. seed: the run's seed.
        weights: sampling weights (None: each item once per epoch).
        rank / world: this process's rank and the number of ranks (DDP).
    """

    def __init__(
        self, n: int, seed: int, weights: np.ndarray | None = None, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.weights = None if weights is None else np.asarray(weights, float) / np.sum(weights)
        self.epoch = 0
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order to yield next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            order = rng.permutation(self.n)
        else:
            order = rng.choice(self.n, self.n, replace=True, p=self.weights)
        order = np.resize(order, self.per_rank * self.world)  # pad by wrapping, as DDP does
        for item in order[self.rank :: self.world]:
            yield int(self.epoch * self.n + item)
