"""Classifier models, created by name through a registry (timm style).

- ``mil_*``: the reference 2.5D multiple-instance model. A timm encoder reads each sample of
  adjacent slices (``in_chans`` = slices per sample), a bidirectional LSTM runs over the
  samples, a linear head gives per-sample multi-label logits; the case logit is the mean over
  samples (``pooling="max"`` as an option). ``encoder_stage`` ends the encoder after a stage
  (timm ``features_only``) for a small receptive field. ``mil_local`` is the demo's CPU-sized
  variant.
- ``cnn3d_*``: a MONAI 3D network on the whole crop.

Input shapes: ``mil_*`` take (B, S, C, H, W) = (batch, samples, slices, y, x); ``cnn3d_*`` take
(B, 1, Z, Y, X). Both return case logits (B, K); ``mil_*`` also return per-sample logits
(B, S, K) from :meth:`SliceMIL.sample_logits`. ``pretrained`` defaults to False: weights load
from paths (no model hub).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Create a registered model, e.g. ``create_model("mil_tiny", num_classes=9, in_chans=3)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}'; choose from {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


class SliceMIL(nn.Module):
    """timm encoder per 2.5D sample -> BiLSTM over samples -> per-sample head -> pooled logits."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "tf_efficientnetv2_s",
        in_chans: int = 5,
        lstm_hidden: int = 256,
        lstm_layers: int = 2,
        pooling: str = "mean",
        pretrained: bool = False,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        encoder_args: dict | None = None,
        encoder_stage: int | None = None,
    ) -> None:
        super().__init__()
        import timm

        if pooling not in ("mean", "max"):
            raise ValueError("pooling must be 'mean' or 'max'")
        if encoder_stage is None:
            self.encoder = timm.create_model(backbone, pretrained=pretrained, in_chans=in_chans,
                                             num_classes=0, drop_rate=drop_rate,
                                             global_pool=global_pool,
                                             **(encoder_args or {}))  # fmt: skip
        else:
            self.encoder = StageEncoder(backbone, encoder_stage, in_chans, global_pool,
                                        pretrained, drop_rate, **(encoder_args or {}))  # fmt: skip
        if lstm_layers > 0:
            self.lstm = nn.LSTM(self.encoder.num_features, lstm_hidden, lstm_layers,
                                batch_first=True, bidirectional=True)  # fmt: skip
            self.head = nn.Linear(2 * lstm_hidden, num_classes)
        else:  # no context between samples: each sample is scored on its own
            self.lstm = None
            self.head = nn.Linear(self.encoder.num_features, num_classes)
        self.pooling = pooling

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, C, H, W) -> per-sample logits (B, S, K)."""
        return self._sample_logits(x)[0]

    def _sample_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, samples = x.shape[:2]
        feature_map = self.encoder.forward_features(x.flatten(0, 1))
        features = self.encoder.forward_head(feature_map).view(batch, samples, -1)
        return self.from_features(features), feature_map

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of single samples: (N, C, H, W) -> (N, F)."""
        return self.encoder(images)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Per-sample logits (B, S, K) from encoder features (B, S, F): the part after the
        encoder, so callers that change a few samples re-encode only those (occlusion)."""
        if self.lstm is not None:
            features, _ = self.lstm(features)
        return self.head(features)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Case logits (B, K) and the encoder's last feature map (B*S, F, h, w) (for CAMs)."""
        logits, feature_map = self._sample_logits(x)
        return self.pool(logits), feature_map

    def pool(self, sample_logits: torch.Tensor) -> torch.Tensor:
        return sample_logits.mean(1) if self.pooling == "mean" else sample_logits.amax(1)

    def forward(self, x: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """Case logits (B, K), or per-sample logits (B, S, K) with ``per_sample``."""
        logits = self.sample_logits(x)
        return logits if per_sample else self.pool(logits)


class StageEncoder(nn.Module):
    """A timm encoder ended after one stage (``features_only``, ``out_indices=(stage,)``) with
    global pooling and dropout: the timm encoder interface SliceMIL uses
    (``forward_features``, ``forward_head``, ``num_features``) for backbones cut short, so
    ``drop_rate`` acts as it does on a whole timm encoder. A shallow encoder sees a small
    neighbourhood (resnet10t after stage 2: stride 8, about 20 pixels), so it learns local
    findings rather than each case's organ shape."""

    def __init__(self, backbone: str, stage: int, in_chans: int, global_pool: str = "avg",
                 pretrained: bool = False, drop_rate: float = 0.0,
                 **encoder_args) -> None:  # fmt: skip
        super().__init__()
        import timm

        if global_pool not in ("avg", "max"):
            raise ValueError("global_pool must be 'avg' or 'max' with encoder_stage")
        self.body = timm.create_model(backbone, pretrained=pretrained, in_chans=in_chans,
                                      features_only=True, out_indices=(stage,),
                                      **encoder_args)  # fmt: skip
        self.num_features = self.body.feature_info.channels()[-1]
        self.global_pool = global_pool
        self.drop_rate = drop_rate

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[-1]

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = feature_map.amax((2, 3)) if self.global_pool == "max" else feature_map.mean((2, 3))
        if self.drop_rate:  # as timm's heads: dropout on the pooled features
            pooled = nn.functional.dropout(pooled, self.drop_rate, self.training)
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Crop3D(nn.Module):
    """A MONAI 3D DenseNet on the whole crop: (B, 1, Z, Y, X) -> (B, K)."""

    def __init__(self, num_classes: int, init_features: int = 64, growth_rate: int = 32,
                 block_config: tuple[int, ...] = (6, 12, 24, 16), **_: object) -> None:  # fmt: skip
        super().__init__()
        from monai.networks.nets import DenseNet

        self.net = DenseNet(spatial_dims=3, in_channels=1, out_channels=num_classes,
                            init_features=init_features, growth_rate=growth_rate,
                            block_config=block_config)  # fmt: skip

    def forward(self, x: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        return self.net(x)  # one logit vector per case; per_sample has no meaning in 3D

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Case logits (B, K) and the last dense block's feature map (B, F, z, y, x)."""
        feature_map = self.net.features(x)
        return self.net.class_layers(feature_map), feature_map


@register_model("mil_efficientnetv2_s")
def mil_efficientnetv2_s(num_classes: int, in_chans: int = 5, **kwargs) -> SliceMIL:
    """The published configuration: tf_efficientnetv2_s, BiLSTM(256, 2 layers)."""
    return SliceMIL(num_classes, "tf_efficientnetv2_s", in_chans, 256, 2, **kwargs)


@register_model("mil_timm")
def mil_timm(num_classes: int, backbone: str = "resnet18", in_chans: int = 5,
             **kwargs) -> SliceMIL:  # fmt: skip
    """Any timm backbone by name."""
    return SliceMIL(num_classes, backbone, in_chans, **kwargs)


@register_model("mil_tiny")
def mil_tiny(num_classes: int, in_chans: int = 3, **kwargs) -> SliceMIL:
    """A tiny variant (timm's test_efficientnet, BiLSTM(32, 1 layer)) for CPU tests and the demo."""
    kwargs.setdefault("lstm_hidden", 32)
    kwargs.setdefault("lstm_layers", 1)
    return SliceMIL(num_classes, "test_efficientnet", in_chans, **kwargs)


@register_model("mil_small")
def mil_small(num_classes: int, in_chans: int = 3, **kwargs) -> SliceMIL:
    """timm's resnet10t at half width, max-pooled features, BiLSTM(64, 1 layer), case logit =
    max over samples. Max pooling (over space and over samples) lets a small focal finding
    decide the case. Its receptive field covers the whole 64-pixel slice: trained from scratch
    on the demo cohort it learns fatty liver and cysts but reaches only about 0.8 AUC for the
    small masses and calcifications (README, Training); ``mil_local`` does better."""
    kwargs.setdefault("lstm_hidden", 64)
    kwargs.setdefault("lstm_layers", 1)
    kwargs.setdefault("global_pool", "max")
    kwargs.setdefault("pooling", "max")
    kwargs.setdefault("encoder_args", {"channels": (32, 64, 128, 256), "stem_width": 16})
    return SliceMIL(num_classes, "resnet10t", in_chans, **kwargs)


@register_model("mil_local")
def mil_local(num_classes: int, in_chans: int = 3, **kwargs) -> SliceMIL:
    """The demo model: ``mil_small`` with its encoder ended after the second stage (64
    features on an 8x8 map of a 64-pixel slice, each seeing about 20 pixels, some 55 mm), so each
    feature sees a neighbourhood rather than the whole organ; 0.15 M parameters against
    ``mil_small``'s 1.4 M, and faster. On the demo cohort it learns the focal lesions that
    ``mil_small`` does not (README, Training)."""
    kwargs.setdefault("encoder_stage", 2)
    return mil_small(num_classes, in_chans, **kwargs)


@register_model("cnn3d_densenet121")
def cnn3d_densenet121(num_classes: int, **kwargs) -> Crop3D:
    return Crop3D(num_classes, **kwargs)


@register_model("cnn3d_tiny")
def cnn3d_tiny(num_classes: int, **kwargs) -> Crop3D:
    return Crop3D(num_classes, init_features=8, growth_rate=8, block_config=(2, 2))


def model_input(model_name: str) -> str:
    """``2.5d`` or ``3d``: which input layout a registered model takes."""
    return "3d" if model_name.startswith("cnn3d") else "2.5d"
