"""3D models on the whole crop (``cnn3d_*``): MONAI networks.

Input (B, 1, Z, Y, X); output case logits (B, K).
"""

from __future__ import annotations

import torch
from torch import nn

from JMIDAnomalyLib.models.registry import LAYOUT_3D, register_model


class Crop3D(nn.Module):
    """A MONAI 3D DenseNet on the whole crop: (B, 1, Z, Y, X) -> (B, K)."""

    def __init__(
        self,
        num_classes: int,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        **_: object,
    ) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet

        self.net = DenseNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=num_classes,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=block_config,
        )

    def forward(self, x: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """(B, 1, Z, Y, X) -> case logits (B, K)."""
        return self.net(x)  # one logit vector per case; per_sample has no meaning in 3D

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Case logits (B, K) and the last dense block's feature map (B, F, z, y, x)."""
        feature_map = self.net.features(x)
        return self.net.class_layers(feature_map), feature_map


@register_model(LAYOUT_3D, "cnn3d_densenet121")
def cnn3d_densenet121(num_classes: int, **kwargs) -> Crop3D:
    """MONAI's DenseNet-121 in 3D."""
    return Crop3D(num_classes, **kwargs)


@register_model(LAYOUT_3D, "cnn3d_tiny")
def cnn3d_tiny(num_classes: int, **kwargs) -> Crop3D:
    """A tiny 3D DenseNet for CPU tests."""
    return Crop3D(num_classes, init_features=8, growth_rate=8, block_config=(2, 2))
