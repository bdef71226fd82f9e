"""Compute devices: which torch device to run on, and mixed precision where it helps.

One definition of both, used by segmentation, training, evaluation and analysis. Importing this
module does not import torch (the Slicer module loads before its dependencies are installed).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    """The CPU cores this process may use (its affinity, else the machine's): the default
    number of worker processes of ``jmid crop --manifest`` and of training's data loaders."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def pick_device(device: str = "auto") -> torch.device:
    """The torch device for a device name.

    Args:
        device: ``auto`` (CUDA, else Apple MPS, else CPU) or any torch device name
            (``cuda``, ``cuda:1``, ``mps``, ``cpu``).

    Returns:
        torch.device
    """
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles: recent Xeon and
    EPYC), where oneDNN's bfloat16 convolutions are faster than float32; elsewhere they are
    emulated and slower."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def training_precision(device: torch.device | str, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype training runs in: float16 on CUDA, bfloat16 on a CPU with native
    bfloat16 (:func:`cpu_has_bfloat16`; the demo's training step 0.067 -> 0.043 s on 2 cores),
    None (float32) otherwise or without ``amp``. bfloat16 keeps float32's range, so it needs no
    gradient scaling; the weights stay float32."""
    import torch

    device = torch.device(device)
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bfloat16():
        return torch.bfloat16
    return None


def autocast(
    device: torch.device | str, amp: bool = True, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` (default: float16 on CUDA) when ``amp``; a no-op context where no
    dtype applies (prediction on CPU and MPS runs in float32).

    Args:
        device: a torch.device (or its name).
        amp: whether mixed precision is wanted.
        dtype: the precision (:func:`training_precision`), default float16 on CUDA only.
    """
    import torch

    device = torch.device(device)
    if dtype is None and device.type == "cuda":
        dtype = torch.float16
    if not amp or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
