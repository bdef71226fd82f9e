"""Training augmentation of whole batches on the training device.

Per crop: with probability 0.7 a random affine about the crop's centre in voxel space
(rotation of up to 0.1 rad about each axis, scaling by up to 10% along each), trilinear, with
the border's values beyond the edge; then with probability 0.3 Gaussian noise whose standard
deviation is drawn from 0..0.03 (in windowed units: up to 9 HU of the demo's 600 HU window);
values clamped to -1..1. No flips (left and right are anatomy) and no intensity scaling: HU are
calibrated, and scaling the windowed values by 10% moved a water-density lesion by up to 10 HU
against an unchanged liver, about the margin between a cyst (0-15 HU) and a hypodense mass
(README, Training).

The draws are made per (seed, epoch, item) where the item is read (:func:`draw`, a few numbers
per crop in the DataLoader), and applied to the whole batch where it is trained
(:func:`apply`): one ``affine_grid``/``grid_sample`` per batch, on the GPU when training on
one. So a run gives the same batches with any number of workers or ranks, and the workers only
read crops. Measured on 2 CPU cores (demo crops, ``bench_training.py``): the per-crop MONAI
transforms in two workers let the model train 47 cases/s, against 72 with this.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Probability of the affine, its largest rotation (rad) and scaling (fraction) per axis.
AFFINE_PROB, MAX_ROTATION, MAX_SCALING = 0.7, 0.1, 0.1
#: Probability of the noise and its largest standard deviation (windowed units).
NOISE_PROB, MAX_NOISE_STD = 0.3, 0.03
#: Numbers per crop in a draw: affine on, 3 angles, 3 scales, noise on, noise std, noise seed.
DRAW_SIZE = 10


def draw(seed: int, epoch: int, item: int) -> torch.Tensor:
    """One crop's augmentation parameters (DRAW_SIZE,) float64, from (seed, epoch, item)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, item]))
    moved = rng.random() < AFFINE_PROB
    angles = rng.uniform(-MAX_ROTATION, MAX_ROTATION, 3)
    scales = 1.0 + rng.uniform(-MAX_SCALING, MAX_SCALING, 3)
    noisy = rng.random() < NOISE_PROB
    std = rng.uniform(0.0, MAX_NOISE_STD)
    noise_seed = rng.integers(0, 2**31 - 1)
    values = [float(moved), *angles, *scales, float(noisy), std, float(noise_seed)]
    return torch.tensor(values, dtype=torch.float64)


def _theta(params: torch.Tensor, shape_zyx: tuple[int, int, int]) -> torch.Tensor:
    """``affine_grid``'s (N, 3, 4) matrices: each crop's rotation and scaling about its centre in
    voxel space, expressed in the normalised (x, y, z) coordinates of the grid."""
    ax, ay, az = params[:, 1], params[:, 2], params[:, 3]

    def rotation(angle: torch.Tensor, i: int, j: int) -> torch.Tensor:  # in the (i, j) plane
        m = torch.eye(3, dtype=params.dtype).repeat(len(params), 1, 1)
        c, s = torch.cos(angle), torch.sin(angle)
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        return m

    matrix = (
        rotation(az, 0, 1)  # about z: the x-y plane
        @ rotation(ay, 0, 2)
        @ rotation(ax, 1, 2)
        @ torch.diag_embed(params[:, 4:7])
    )
    half = torch.tensor(shape_zyx[::-1], dtype=params.dtype) / 2  # voxel units per unit, x y z
    matrix = matrix * half[None, None, :] / half[None, :, None]  # D^-1 M D
    return torch.cat([matrix, torch.zeros(len(params), 3, 1, dtype=params.dtype)], 2)


def apply(volumes: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crops (N, Z, Y, X) in -1..1 augmented by their draws (N, DRAW_SIZE): a new tensor on
    the crops' device."""
    out = volumes.clone()
    moved = torch.nonzero(params[:, 0] > 0).flatten().tolist()
    if moved:
        theta = _theta(params[moved], tuple(volumes.shape[1:])).to(volumes)
        source = volumes[moved, None]
        grid = F.affine_grid(theta, list(source.shape), align_corners=False)
        out[moved] = F.grid_sample(
            source, grid, mode="bilinear", padding_mode="border", align_corners=False
        )[:, 0]
    for i in torch.nonzero(params[:, 7] > 0).flatten().tolist():
        generator = torch.Generator(volumes.device).manual_seed(int(params[i, 9]))
        noise = torch.randn(
            volumes.shape[1:], generator=generator, device=volumes.device, dtype=volumes.dtype
        )
        out[i] += float(params[i, 8]) * noise
    return out.clamp_(-1.0, 1.0)
