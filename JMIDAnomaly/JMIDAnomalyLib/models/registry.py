"""The model registry (timm style): models are created by name, and each name carries its
metadata, so no caller guesses a model's input layout from its name.

``pretrained`` defaults to False everywhere: weights load from paths, never from a model hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

#: The two input layouts (the model-input contract, see :mod:`JMIDAnomalyLib.models.inputs`):
#: 2.5D stacks (B, S, C, H, W) = (batch, samples, slices per sample, y, x), or 3D crops
#: (B, 1, Z, Y, X).
LAYOUT_25D = "2.5d"
LAYOUT_3D = "3d"
LAYOUTS = (LAYOUT_25D, LAYOUT_3D)


@dataclass(frozen=True)
class ModelInfo:
    """A registered model.

    Attributes:
        name: the registry name (``mil_local``, ``cnn3d_tiny``...).
        layout: its input layout, :data:`LAYOUT_25D` or :data:`LAYOUT_3D`.
        build: ``build(num_classes, **kwargs) -> nn.Module``.
        doc: the first line of the builder's docstring.
    """

    name: str
    layout: str
    build: Callable
    doc: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(layout: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator registering a model builder under ``name`` with its input ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")

    def wrap(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelInfo(name, layout, fn, doc[0] if doc else "")
        return fn

    return wrap


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``.

    Raises:
        ValueError: no such model.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}'; choose from {', '.join(list_models())}")
    return _REGISTRY[name]


def model_input(name: str) -> str:
    """The input layout of a registered model: :data:`LAYOUT_25D` or :data:`LAYOUT_3D`."""
    return model_info(name).layout


def create_model(name: str, **kwargs) -> nn.Module:
    """Create a registered model, e.g. ``create_model("mil_tiny", num_classes=9, in_chans=3)``."""
    return model_info(name).build(**kwargs)
