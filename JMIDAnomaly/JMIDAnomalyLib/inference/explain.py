"""Explanations for an ensemble of fold models, computed on an organ crop.

Both methods return a float32 map on the crop grid (z, y, x);
:func:`~JMIDAnomalyLib.imaging.geometry.map_to_source`
puts it on the CT's grid. Sign convention: positive values mark voxels that *raise* the
explained class's probability (occlusion: probability drop when the region is hidden; HiResCAM:
positive evidence only, so the map is >= 0). Occlusion maps may be negative where hiding a region
raises the probability; overlays show the positive part.

Occlusion sensitivity, made fast (the published scripts ran MONAI's ``OcclusionSensitivity``
once per fold with one forward pass per window):

- windows only where they overlap the organ mask (nothing outside the organ is tested);
- windows on a stride (half the window by default), each window filled with the organ's median
  intensity, so that hiding a lesion shows normal tissue rather than an artificial hole;
- all windows of a batch go through each fold model in one forward pass; AMP on CUDA;
- coarse-to-fine (default): a pass with double-size, non-overlapping windows, then the fine,
  half-overlapping windows only where the coarse map reached ``refine_fraction`` of its
  maximum.

HiResCAM on the encoder's last convolutional feature map: element-wise gradient x activation
summed over channels (exact for the class score, unlike Grad-CAM's channel-averaged gradient),
per fold, normalized to a maximum of 1 and averaged over folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from JMIDAnomalyLib.common.devices import autocast
from JMIDAnomalyLib.imaging.crops import sample_indices
from JMIDAnomalyLib.models.ensemble import ensemble_probabilities
from JMIDAnomalyLib.models.inputs import model_batch, model_batches
from JMIDAnomalyLib.models.registry import LAYOUT_3D, LAYOUT_25D


def _windows(shape, window, stride, mask: np.ndarray) -> list[tuple[slice, slice, slice]]:
    starts = [
        sorted({*range(0, max(n - w, 0) + 1, s), max(n - w, 0)})
        for n, w, s in zip(shape, window, stride, strict=True)
    ]
    out = []
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                box = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
                if mask[box].any():
                    out.append(box)
    return out


def occlusion(
    models: Sequence[torch.nn.Module],
    volume: np.ndarray,
    mask: np.ndarray,
    class_index: int,
    layout: str,
    samples: int,
    slices: int,
    window: tuple[int, int, int] = (4, 8, 8),
    stride: tuple[int, int, int] | None = None,
    coarse_to_fine: bool = True,
    refine_fraction: float = 0.6,
    device: torch.device | str = "cpu",
    amp: bool = True,
    batch_size: int = 32,
    incremental: bool = True,
) -> np.ndarray:
    """Occlusion sensitivity of the ensemble's mean probability for one class.

    Args:
        volume: the crop (z, y, x) in -1..1; mask: the organ on the crop grid (windows must
            overlap it).
        window / stride: occlusion window and step in crop voxels (stride default: half).
        coarse_to_fine: a coarse pass (2x window) first, fine windows only where it mattered.
        incremental: for 2.5D models, re-encode only the samples a window touches.

    Returns:
        (z, y, x) float32: mean probability drop when each voxel is hidden (0 where untested).
    """
    device = torch.device(device)
    window = tuple(min(w, n) for w, n in zip(window, volume.shape, strict=True))
    stride = stride or tuple(max(w // 2, 1) for w in window)
    base = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device)
    occluder = _Occluder(
        models, base, mask, class_index, layout, samples, slices, amp, batch_size, incremental
    )
    candidates = mask > 0
    if coarse_to_fine:
        coarse_window = tuple(min(2 * w, n) for w, n in zip(window, volume.shape, strict=True))
        coarse = occluder.run(_windows(volume.shape, coarse_window, coarse_window, candidates))
        if coarse.max() > 0:
            candidates = candidates & (coarse >= refine_fraction * coarse.max())
    return occluder.run(_windows(volume.shape, window, stride, candidates))


class _Occluder:
    """Occludes windows of one crop and measures the ensemble's probability drop."""

    def __init__(
        self, models, base, mask, class_index, layout, samples, slices, amp, batch_size, incremental
    ) -> None:
        self.models, self.base, self.class_index = models, base, class_index
        self.layout, self.samples, self.slices = layout, samples, slices
        self.amp, self.batch_size = amp, batch_size
        inside = base[torch.from_numpy(mask > 0).to(base.device)]
        # Hiding a lesion shows normal tissue: windows take the organ's median intensity.
        self.fill = float(inside.median()) if inside.numel() else -1.0
        batch = model_batch(base[None], layout, samples, slices)
        reference = ensemble_probabilities(models, [batch], amp=amp)
        self.reference = float(reference[:, 0, class_index].mean())
        self.incremental = incremental and layout == LAYOUT_25D
        self.incremental = self.incremental and all(hasattr(m, "from_features") for m in models)
        if self.incremental:
            self.index = sample_indices(base.shape[0], samples, slices)
            self.stacks = batch[0]
            with torch.no_grad(), autocast(base.device, amp):
                self.cached = [m.encode(self.stacks).float() for m in models]

    def run(self, boxes: list) -> np.ndarray:
        """(z, y, x) mean probability drop over the windows covering each voxel."""
        total = torch.zeros(self.base.shape, dtype=torch.float32, device=self.base.device)
        count = torch.zeros_like(total)
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start : start + self.batch_size]
            drops = self.reference - self._probabilities(chunk)[:, :, self.class_index].mean(0)
            for n, box in enumerate(chunk):
                total[box] += drops[n]
                count[box] += 1
        return (total / count.clamp(min=1)).cpu().numpy()

    def _probabilities(self, chunk: list) -> torch.Tensor:
        if self.incremental:
            return _incremental_probabilities(
                self.models, self.cached, self.stacks, self.index, chunk, self.fill, self.amp
            )
        batch = self.base.expand(len(chunk), *self.base.shape).clone()
        for n, box in enumerate(chunk):
            batch[(n, *box)] = self.fill
        inputs = model_batches(batch, self.layout, self.samples, self.slices, self.batch_size)
        return ensemble_probabilities(self.models, inputs, amp=self.amp)


@torch.no_grad()
def _incremental_probabilities(models, cached, stacks, index, boxes, fill, amp) -> torch.Tensor:
    """Probabilities (folds, N, K) for N occluded copies of a 2.5D crop, re-encoding only the
    samples each window touches; the other samples keep their cached encoder features (the
    encoder is nearly all of the model's cost, so a window spanning 2 of 8 samples costs about a
    quarter of a full forward pass)."""
    pairs, images = [], []
    for n, box in enumerate(boxes):
        for s, slice_ids in enumerate(index):
            channels = np.flatnonzero((slice_ids >= box[0].start) & (slice_ids < box[0].stop))
            if len(channels):
                image = stacks[s].clone()
                image[torch.as_tensor(channels), box[1], box[2]] = fill
                pairs.append((n, s))
                images.append(image)
    out = []
    for model, features in zip(models, cached, strict=True):
        with autocast(stacks.device, amp):
            sequence = features.expand(len(boxes), *features.shape).clone()
            if pairs:  # (windows that touch no slice the model reads change nothing)
                rows, cols = (torch.as_tensor(v, device=stacks.device) for v in zip(*pairs))  # noqa: B905
                sequence[rows, cols] = model.encode(torch.stack(images)).float()
            out.append(torch.sigmoid(model.pool(model.from_features(sequence)).float()))
    return torch.stack(out)


def hirescam(
    models: Sequence[torch.nn.Module],
    volume: np.ndarray,
    class_index: int,
    layout: str,
    samples: int,
    slices: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """HiResCAM of one class on the encoder's last feature map, averaged over folds.

    Returns:
        (z, y, x) float32 in 0..1 on the crop grid.
    """
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device)[None]
    shape = volume.shape
    total = torch.zeros(shape, dtype=torch.float32, device=device)
    for model in models:
        inputs = model_batch(x, layout, samples, slices)
        with torch.enable_grad():
            logits, features = model.forward_with_features(inputs)
            features.retain_grad()
            logits[0, class_index].backward()
        cam = F.relu((features.grad * features).sum(1)).detach()  # (S, h, w) or (1, z, y, x)
        volume_cam = _cam_to_volume(cam, layout, shape, samples, slices, device)
        peak = volume_cam.max()
        if peak > 0:
            total += volume_cam / peak
        model.zero_grad(set_to_none=True)
    return (total / len(models)).cpu().numpy()


def _cam_to_volume(
    cam: torch.Tensor, layout: str, shape, samples: int, slices: int, device
) -> torch.Tensor:
    if layout == LAYOUT_3D:
        return F.interpolate(cam[None], size=shape, mode="trilinear", align_corners=False)[0, 0]
    planes = F.interpolate(cam[:, None], size=shape[1:], mode="bilinear", align_corners=False)
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    count = torch.zeros(shape[0], dtype=torch.float32, device=device)
    for s, index in enumerate(sample_indices(shape[0], samples, slices)):
        for z in index:
            out[z] += planes[s, 0]
            count[z] += 1
    return out / count.clamp(min=1)[:, None, None]
