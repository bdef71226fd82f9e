"""k-fold training of one organ's ensemble, resumable, single process or DistributedDataParallel.

Per fold: AdamW with cosine decay, BCE (or focal) loss on per-sample logits with the case labels
repeated over the samples (the reference design; 3D models use case logits), AMP on CUDA. Every
epoch writes ``fold_k/last.pt`` atomically (model, optimizer, scheduler, scaler, epoch, history,
random states); the best epoch by mean validation AUC is kept as ``fold_k/best.pt``. ``resume``
continues an interrupted run from ``last.pt`` (a kill -9 in mid-epoch loses only that epoch).
Checkpoints are read back with ``torch.load(weights_only=True)``.

Under ``torchrun`` (WORLD_SIZE > 1) the training batches are split with a DistributedSampler
(gloo on the CPU, NCCL on GPUs); rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.devices import autocast, pick_device, training_precision
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.models.ensemble import ensemble_probabilities
from JMIDAnomalyLib.models.registry import LAYOUT_25D, create_model, model_input
from JMIDAnomalyLib.training.config import TrainConfig
from JMIDAnomalyLib.training.data import (
    CaseSample,
    CropDataset,
    EpochSampler,
    label_arrays,
    loader_workers,
)
from JMIDAnomalyLib.training.objectives import Loss, auc_per_class

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class FoldTrainer:
    """Trains one fold; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        fold: int,
        train: list[CaseSample],
        val: list[CaseSample],
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.config, self.fold, self.rank, self.world = config, fold, rank, world
        self.classes = ORGAN_CLASSES[config.organ]
        self.folder = Path(config.out) / f"fold_{fold}"
        if world > 1 and torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        else:
            self.device = pick_device(config.device if world == 1 else "cpu")
        crop = config.crop_config()
        self.layout = model_input(config.model)
        kwargs = dict(config.model_kwargs)
        if self.layout == LAYOUT_25D:
            kwargs.setdefault("in_chans", crop.slices_per_sample)
        self.model = create_model(config.model, num_classes=len(self.classes), **kwargs).to(
            self.device
        )
        if world > 1:
            self.model = nn.parallel.DistributedDataParallel(self.model)
        self.train_set = CropDataset(
            train,
            self.layout,
            crop.samples,
            crop.slices_per_sample,
            config.augment,
            config.seed + fold,
        )
        self.val_set = CropDataset(val, self.layout, crop.samples, crop.slices_per_sample)
        pos_weight = None
        if config.class_weighting:
            labels, _ = label_arrays(train)
            pos = labels.sum(0)
            pos_weight = torch.tensor((len(train) - pos) / np.maximum(pos, 1), dtype=torch.float32)
        self.loss = Loss(config.loss, config.focal_gamma, pos_weight).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.steps_per_epoch = math.ceil(len(train) / (config.batch_size * world))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, config.epochs * self.steps_per_epoch)
        )
        self.amp = config.amp and self.device.type == "cuda"  # prediction: float16 on CUDA
        self.precision = training_precision(self.device, config.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == torch.float16)
        self.epoch, self.best_auc, self.history = 0, -1.0, []
        self.throughput: dict = {}
        self._loaders: dict[str, DataLoader | None] = {}

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        """The model itself (unwrapped from DistributedDataParallel)."""
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.module
        return self.model

    def save(self, name: str, full: bool = True) -> None:
        """Write a checkpoint atomically (rank 0 only); ``full`` adds optimizer and random
        states."""
        if self.rank != 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"model": self.module.state_dict()}
        if full:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                epoch=self.epoch,
                best_auc=self.best_auc,
                history=json.dumps(self.history),
                torch_rng=torch.get_rng_state(),
                numpy_rng=json.dumps(_numpy_state()),
                python_rng=json.dumps(random.getstate()),
            )
        with atomic_output(self.folder / name) as tmp:
            torch.save(state, tmp)

    def resume(self) -> bool:
        """Continue from ``last.pt`` when there is one; returns whether it did."""
        path = self.folder / "last.pt"
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_auc = int(state["epoch"]), float(state["best_auc"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        _set_numpy_state(json.loads(state["numpy_rng"]))
        random.setstate(_tuples(json.loads(state["python_rng"])))
        logger.info("fold %d: resumed after epoch %d", self.fold, self.epoch)
        return True

    # -- loops ---------------------------------------------------------------------------------
    def _data_loader(self, dataset, sampler=None) -> DataLoader:
        """Crops read (and their augmentation drawn) in ``num_workers`` persistent worker
        processes, pinned memory on CUDA, four batches prefetched per worker."""
        workers = loader_workers(self.config.num_workers, self.device)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _train_loader(self) -> DataLoader:
        if self._loaders.get("train") is None:
            weights = None
            if self.config.balanced_sampling:
                samples = self.train_set.samples
                abnormal = np.array([np.nansum(s.labels[:-1]) > 0 for s in samples], float)
                n_abnormal = max(abnormal.sum(), 1)
                weights = np.where(
                    abnormal > 0, 0.5 / n_abnormal, 0.5 / max(len(abnormal) - n_abnormal, 1)
                )
            sampler = EpochSampler(
                len(self.train_set), self.config.seed + self.fold, weights, self.rank, self.world
            )
            self._loaders["train"] = self._data_loader(self.train_set, sampler)
        loader = self._loaders["train"]
        loader.sampler.set_epoch(self.epoch)
        return loader

    def train_epoch(self) -> float:
        """One pass over the training set; returns the mean loss. Sets :attr:`throughput`:
        samples per second through the model (all ranks) and seconds spent waiting for data."""
        self.model.train()
        total, batches, seen, waited = 0.0, 0, 0, 0.0
        start = tick = time.perf_counter()
        for batch in self._train_loader():
            waited += time.perf_counter() - tick
            x = self.train_set.training_input(batch, self.device)
            labels, known = batch[1].to(self.device), batch[2].to(self.device)
            with autocast(self.device, self.precision is not None, self.precision):
                # Through the (DDP) wrapper so gradients are synchronised across ranks.
                per_sample = self.layout == LAYOUT_25D and self.config.sample_loss
                logits = self.model(x, per_sample=per_sample)
                loss = self.loss(logits.float(), labels, known)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total, batches, seen = total + loss.item(), batches + 1, seen + x.shape[0]
            tick = time.perf_counter()
        elapsed = max(time.perf_counter() - start, 1e-9)
        self.throughput = {
            "samples_per_s": round(seen * self.world / elapsed, 2),
            "data_wait_s": round(waited, 3),
            "epoch_s": round(elapsed, 3),
        }
        return total / max(batches, 1)

    def predict(self, dataset: CropDataset, mirror: bool = False) -> np.ndarray:
        """Case probabilities (N, K) for a dataset, in its order (``mirror``: test-time
        mirroring). Under DDP every rank predicts its share and the shares are gathered (call
        it on every rank)."""
        self.model.eval()
        mine = list(range(self.rank, len(dataset), self.world))
        if dataset is self.val_set:
            if self._loaders.get("val") is None:
                self._loaders["val"] = self._data_loader(Subset(dataset, mine))
            loader = self._loaders["val"]
        else:
            loader = DataLoader(Subset(dataset, mine), batch_size=self.config.batch_size)
        probs = np.zeros((0, len(self.classes)), np.float32)
        if mine:
            batches = (x for x, *_ in loader)
            probs = ensemble_probabilities([self.module], batches, self.device, self.amp, mirror)[0]
            probs = probs.float().cpu().numpy()
        if self.world == 1:
            return probs
        parts: list = [None] * self.world
        torch.distributed.all_gather_object(parts, (mine, probs))
        out = np.zeros((len(dataset), len(self.classes)), np.float32)
        for indices, part in parts:
            out[indices] = part
        return out

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        self._loaders.clear()

    def validate(self) -> tuple[float, list[float | None]]:
        """Mean validation AUC over the abnormal classes, and the AUC per class."""
        probs = self.predict(self.val_set)
        labels, known = label_arrays(self.val_set.samples)
        aucs = auc_per_class(labels, probs, known)
        valid = [a for a in aucs[:-1] if a is not None]
        return (float(np.mean(valid)) if valid else 0.0), aucs

    def fit(self, progress: Progress | None = None, writer=None, resume: bool = False) -> None:
        """Train the remaining epochs; after each, validate (every rank predicts its share),
        then log and checkpoint (rank 0)."""
        if resume:
            self.resume()
        while self.epoch < self.config.epochs:
            loss = self.train_epoch()
            self.epoch += 1
            mean_auc, aucs = self.validate()
            if self.rank == 0:
                self._record(loss, mean_auc, aucs, writer)
                if mean_auc > self.best_auc:
                    self.best_auc = mean_auc
                    self.save("best.pt", full=False)
                self.save("last.pt")
                if progress:
                    message = f"fold {self.fold} epoch {self.epoch}: loss {loss:.3f}"
                    progress(self.epoch / self.config.epochs, f"{message}, val AUC {mean_auc:.3f}")
            if self.world > 1:
                torch.distributed.barrier()

    def _record(self, loss: float, mean_auc: float, aucs: list, writer) -> None:
        """One epoch into the history, the log and TensorBoard (throughput included)."""
        lr = self.optimizer.param_groups[0]["lr"]
        entry = {"epoch": self.epoch, "loss": loss, "val_auc": mean_auc, "lr": lr}
        precision = str(self.precision or torch.float32).removeprefix("torch.")
        self.history.append({**entry, **self.throughput, "precision": precision})
        logger.info(
            "fold %d epoch %d: loss %.4f, val AUC %.3f, %.1f samples/s (%s), %.1f s data wait",
            self.fold,
            self.epoch,
            loss,
            mean_auc,
            self.throughput.get("samples_per_s", 0.0),
            precision,
            self.throughput.get("data_wait_s", 0.0),
        )
        if writer is None:
            return
        scalars = {"loss": loss, "lr": lr, "val_auc_mean": mean_auc, **self.throughput}
        for name, value in scalars.items():
            writer.add_scalar(f"fold_{self.fold}/{name}", value, self.epoch)
        for cls, auc in zip(self.classes, aucs, strict=True):
            if auc is not None:
                writer.add_scalar(f"fold_{self.fold}/val_auc/{cls}", auc, self.epoch)


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": keys.tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_numpy_state(state: dict) -> None:
    np.random.set_state(
        (
            state["name"],
            np.array(state["keys"], dtype=np.uint32),
            state["pos"],
            state["has_gauss"],
            state["cached"],
        )
    )


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
