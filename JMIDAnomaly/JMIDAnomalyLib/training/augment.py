"""Training augmentation of whole batches on the training device.

Per crop: a flip along each axis with probability 0.5 (as nnU-Net mirrors), and a random
affine about the crop's centre in voxel space (rotation of up to 0.1 rad about each axis,
scaling by up to 10% along each) with probability 0.7, or always on a flipped crop (96% of
crops in all, as measured), trilinear, with the border's values beyond the edge; then with
probability 0.3 Gaussian noise whose standard deviation is drawn from 0..0.03 (in windowed
units: up to 9 HU of the demo's 600 HU window); values clamped to -1..1. A crop is one organ of
one side, so its side is in its name, not its orientation. The flips show the models mirrored
anatomy: against a rule set before the run they kept mass (SOL) and raised calcification out of
fold and on 396 more cases, and raised SOL on cases of another patient (README, Training).
No intensity scaling: HU are calibrated, and scaling the windowed values by 10% moved a
water-density lesion by up to 10 HU against an unchanged liver, about the margin between a cyst
(0-15 HU) and a hypodense mass (README, Training).

The draws are made per (seed, epoch, item) where the item is read (:func:`draw`, a few numbers
per crop in the DataLoader), and applied to the whole batch where it is trained
(:func:`apply`): one sampling grid and ``grid_sample`` per batch, on the GPU when training on
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
#: Probability of a flip along each axis (a negative scale in the draw).
FLIP_PROB = 0.5
#: Numbers per crop in a draw: affine on, 3 angles, 3 scales (negative: flipped), noise on,
#: noise std, noise seed.
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
    flips = rng.random(3) < FLIP_PROB  # drawn last: the other numbers are those of before
    scales = np.where(flips, -scales, scales)
    moved = moved or bool(flips.any())  # a flipped crop is rotated and scaled as well
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


def _grid(theta: torch.Tensor, shape_zyx: tuple[int, int, int]) -> torch.Tensor:
    """``F.affine_grid(theta, (N, 1, *shape_zyx), align_corners=False)`` as a sum of three
    broadcast terms, one per axis: the same grid to float rounding, 7x faster on the CPU (the
    batched matrix product over every voxel took 30 ms of a 16-crop batch's 65)."""
    z, y, x = (
        (torch.arange(n, dtype=theta.dtype, device=theta.device) * 2 + 1) / n - 1 for n in shape_zyx
    )
    t = theta[:, None, None, None]  # (N, 1, 1, 1, 3, 4)
    grid = t[..., 0] * x[:, None] + t[..., 3]  # (N, 1, 1, X, 3)
    grid = grid + t[..., 1] * y[:, None, None]  # (N, 1, Y, X, 3)
    return grid + t[..., 2] * z[:, None, None, None]  # (N, Z, Y, X, 3)


def apply(volumes: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crops (N, Z, Y, X) in -1..1 augmented by their draws (N, DRAW_SIZE): a new tensor on
    the crops' device."""
    out = volumes.clone()
    moved = torch.nonzero(params[:, 0] > 0).flatten().tolist()
    if moved:
        shape = tuple(volumes.shape[1:])
        grid = _grid(_theta(params[moved], shape).to(volumes), shape)
        out[moved] = F.grid_sample(
            volumes[moved, None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[:, 0]
    for i in torch.nonzero(params[:, 7] > 0).flatten().tolist():
        generator = torch.Generator(volumes.device).manual_seed(int(params[i, 9]))
        noise = torch.randn(
            volumes.shape[1:], generator=generator, device=volumes.device, dtype=volumes.dtype
        )
        out[i] += float(params[i, 8]) * noise
    return out.clamp_(-1.0, 1.0)
