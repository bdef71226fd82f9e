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


def autocast(device: torch.device | str, amp: bool = True) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``amp``; a no-op context elsewhere (CPU, MPS).

    Args:
        device: a torch.device (or its name).
        amp: whether mixed precision is wanted.
    """
    import torch

    device = torch.device(device)
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)
