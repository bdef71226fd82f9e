"""The model-input contract: how organ crops become model input, in one place.

A crop is a (Z, Y, X) float32 array in -1..1 (:mod:`JMIDAnomalyLib.imaging.crops`). A model
whose registry layout is :data:`~JMIDAnomalyLib.models.registry.LAYOUT_25D` reads ``samples``
stacks of ``slices`` adjacent slices, spread evenly over the crop's depth
(:func:`~JMIDAnomalyLib.imaging.crops.sample_indices`): (N, S, C, Y, X). A
:data:`~JMIDAnomalyLib.models.registry.LAYOUT_3D` model reads the whole crop: (N, 1, Z, Y, X).
Training, evaluation, analysis and the explanations all build their input with
:func:`model_batch`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from JMIDAnomalyLib.imaging.crops import sample_indices
from JMIDAnomalyLib.models.registry import LAYOUT_3D


def model_batch(volumes: torch.Tensor, layout: str, samples: int, slices: int) -> torch.Tensor:
    """Crops as model input.

    Args:
        volumes: (N, Z, Y, X) crops.
        layout: the model's input layout (``2.5d`` or ``3d``).
        samples: 2.5D samples per crop (S).
        slices: adjacent slices per sample (C, the encoder's input channels).

    Returns:
        (N, S, C, Y, X) for 2.5D, (N, 1, Z, Y, X) for 3D; a view where possible.
    """
    if layout == LAYOUT_3D:
        return volumes[:, None]
    index = sample_indices(volumes.shape[1], samples, slices).reshape(-1)
    index = torch.as_tensor(index, device=volumes.device)
    return volumes[:, index].reshape(volumes.shape[0], samples, slices, *volumes.shape[2:])


def model_batches(
    volumes: torch.Tensor, layout: str, samples: int, slices: int, batch_size: int = 32
) -> Iterator[torch.Tensor]:
    """:func:`model_batch` of ``volumes`` (N, Z, Y, X) in chunks of ``batch_size`` crops."""
    for start in range(0, volumes.shape[0], batch_size):
        yield model_batch(volumes[start : start + batch_size], layout, samples, slices)
