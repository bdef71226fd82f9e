"""The reference 2.5D multiple-instance models (``mil_*``).

A timm encoder reads each sample of adjacent slices (``in_chans`` = slices per sample), a
bidirectional LSTM runs over the samples, a linear head gives per-sample multi-label logits; the
case logit is the mean over samples (``pooling="max"`` as an option). ``encoder_stage`` ends the
encoder after a stage (timm ``features_only``) for a small receptive field. ``mil_local`` is the
demo's CPU-sized variant.

Input (B, S, C, H, W) = (batch, samples, slices, y, x); output case logits (B, K), per-sample
logits (B, S, K) from :meth:`SliceMIL.sample_logits`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from JMIDAnomalyLib.models.registry import LAYOUT_25D, register_model


def _timm():
    """timm, imported without its warning: timm 1.0.22 (pinned, requirements/constraints.txt)
    decorates an HRNet class, which no model here builds, with ``torch.jit.interface``, which
    torch 2.14 deprecates; every run that built a model printed that FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`torch.jit.interface` is deprecated", category=FutureWarning
        )
        import timm
    return timm


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
        timm = _timm()

        if pooling not in ("mean", "max"):
            raise ValueError("pooling must be 'mean' or 'max'")
        if encoder_stage is None:
            self.encoder = timm.create_model(
                backbone,
                pretrained=pretrained,
                in_chans=in_chans,
                num_classes=0,
                drop_rate=drop_rate,
                global_pool=global_pool,
                **(encoder_args or {}),
            )
        else:
            self.encoder = StageEncoder(
                backbone,
                encoder_stage,
                in_chans,
                global_pool,
                pretrained,
                drop_rate,
                **(encoder_args or {}),
            )
        if lstm_layers > 0:
            self.lstm = nn.LSTM(
                self.encoder.num_features,
                lstm_hidden,
                lstm_layers,
                batch_first=True,
                bidirectional=True,
            )
            self.head = nn.Linear(2 * lstm_hidden, num_classes)
        else:  # no context between samples: each sample is scored on its own
            self.lstm = None
            self.head = nn.Linear(self.encoder.num_features, num_classes)
        self.pooling = pooling
        # NHWC: the convolutions run about 30% faster on the CPU (oneDNN; 2 cores: a demo
        # training step 0.112 -> 0.078 s) and as fast or faster on GPUs under AMP.
        self.encoder.to(memory_format=torch.channels_last)

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, C, H, W) -> per-sample logits (B, S, K)."""
        return self._sample_logits(x)[0]

    def _sample_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, samples = x.shape[:2]
        images = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        feature_map = self.encoder.forward_features(images)
        features = self.encoder.forward_head(feature_map).view(batch, samples, -1)
        return self.from_features(features), feature_map

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of single samples: (N, C, H, W) -> (N, F)."""
        return self.encoder(images.contiguous(memory_format=torch.channels_last))

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
        """Case logits (B, K) from per-sample logits (B, S, K): mean or max over samples."""
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

    def __init__(
        self,
        backbone: str,
        stage: int,
        in_chans: int,
        global_pool: str = "avg",
        pretrained: bool = False,
        drop_rate: float = 0.0,
        **encoder_args,
    ) -> None:
        super().__init__()
        timm = _timm()

        if global_pool not in ("avg", "max"):
            raise ValueError("global_pool must be 'avg' or 'max' with encoder_stage")
        self.body = timm.create_model(
            backbone,
            pretrained=pretrained,
            in_chans=in_chans,
            features_only=True,
            out_indices=(stage,),
            **encoder_args,
        )
        self.num_features = self.body.feature_info.channels()[-1]
        self.global_pool = global_pool
        self.drop_rate = drop_rate

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the stage's feature map (N, F, h, w)."""
        return self.body(x)[-1]

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, F) of a feature map, with dropout in training."""
        pooled = feature_map.amax((2, 3)) if self.global_pool == "max" else feature_map.mean((2, 3))
        if self.drop_rate:  # as timm's heads: dropout on the pooled features
            pooled = nn.functional.dropout(pooled, self.drop_rate, self.training)
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> pooled features (N, F)."""
        return self.forward_head(self.forward_features(x))


@register_model(LAYOUT_25D, "mil_efficientnetv2_s")
def mil_efficientnetv2_s(num_classes: int, in_chans: int = 5, **kwargs) -> SliceMIL:
    """The published configuration: tf_efficientnetv2_s, BiLSTM(256, 2 layers)."""
    return SliceMIL(num_classes, "tf_efficientnetv2_s", in_chans, 256, 2, **kwargs)


@register_model(LAYOUT_25D, "mil_timm")
def mil_timm(num_classes: int, backbone: str = "resnet18", in_chans: int = 5, **kwargs) -> SliceMIL:
    """Any timm backbone by name."""
    return SliceMIL(num_classes, backbone, in_chans, **kwargs)


@register_model(LAYOUT_25D, "mil_tiny")
def mil_tiny(num_classes: int, in_chans: int = 3, **kwargs) -> SliceMIL:
    """A tiny variant (timm's test_efficientnet, BiLSTM(32, 1 layer)) for CPU tests and the demo."""
    kwargs.setdefault("lstm_hidden", 32)
    kwargs.setdefault("lstm_layers", 1)
    return SliceMIL(num_classes, "test_efficientnet", in_chans, **kwargs)


@register_model(LAYOUT_25D, "mil_small")
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


@register_model(LAYOUT_25D, "mil_local")
def mil_local(num_classes: int, in_chans: int = 3, **kwargs) -> SliceMIL:
    """The demo model: ``mil_small`` with its encoder ended after the second stage (64
    features on an 8x8 map of a 64-pixel slice, each seeing about 20 pixels, some 55 mm), so each
    feature sees a neighbourhood rather than the whole organ; 0.15 M parameters against
    ``mil_small``'s 1.4 M, and faster. On the demo cohort it learns the focal lesions that
    ``mil_small`` does not (README, Training)."""
    kwargs.setdefault("encoder_stage", 2)
    return mil_small(num_classes, in_chans, **kwargs)
