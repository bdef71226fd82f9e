"""Ensemble prediction: the one loop that runs fold models over model input.

Training (validation and out-of-fold predictions), evaluation of a bundle on held-out cases,
analysis and the explanations all call :func:`ensemble_probabilities`, so each runs on the
device asked for, with float16 autocast on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from JMIDAnomalyLib.common.devices import autocast


@torch.no_grad()
def ensemble_probabilities(
    models: Sequence[torch.nn.Module],
    batches: Iterable[torch.Tensor],
    device: torch.device | str | None = None,
    amp: bool = True,
) -> torch.Tensor:
    """Sigmoid outputs of every model for every batch, each batch read once.

    Args:
        models: the fold models (in eval mode, on ``device``).
        batches: model input, (B, S, C, Y, X) or (B, 1, Z, Y, X) per batch
            (:func:`~JMIDAnomalyLib.models.inputs.model_batch`), e.g. a DataLoader's inputs.
        device: where to run (default: where each batch already is).
        amp: float16 autocast on CUDA.

    Returns:
        (models, N, K) float32 on the device the models ran on; (models, 0, 0) for no input.
    """
    per_model: list[list[torch.Tensor]] = [[] for _ in models]
    for x in batches:
        if device is not None:
            x = x.to(device, non_blocking=True)
        for parts, model in zip(per_model, models, strict=True):
            with autocast(x.device, amp):
                parts.append(torch.sigmoid(model(x).float()))
    if not per_model or not per_model[0]:
        return torch.zeros((len(models), 0, 0))
    return torch.stack([torch.cat(parts) for parts in per_model])
