"""The training job's configuration: one dataclass with a JSON/YAML round trip.

The same object drives ``jmid train --config FILE``, JMIDTrainer's Logic and the model bundle
(which stores it). Paths are strings so the JSON stays portable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError, check_known_keys
from JMIDAnomalyLib.common.organs import ORGANS

#: How a class's threshold is chosen (:attr:`TrainConfig.threshold_rule`).
THRESHOLD_RULES = ("balanced", "youden")

#: Named recipes: the fields a configuration's ``preset`` sets (the file's own keys win).
#: ``published`` is the reference design: tf_efficientnetv2_s (in_chans 5) with a 2-layer
#: BiLSTM of 256, 64x256x256 crops in 32 samples of 5 slices, the per-sample BCE objective,
#: AdamW 2.3e-4 with cosine decay, AMP, 5 folds grouped by patient; ``published_384`` the same
#: on 64x384x384 crops.
TRAIN_PRESETS: dict[str, dict] = {
    "published": {
        "model": "mil_efficientnetv2_s",
        "crop_preset": "published",
        "sample_loss": True,
        "lr": 2.3e-4,
        "weight_decay": 1e-2,
        "amp": True,
        "folds": 5,
        "epochs": 30,
        "batch_size": 8,
    },
}
TRAIN_PRESETS["published_384"] = {
    **TRAIN_PRESETS["published"],
    "crop": {"grid_zyx": [64, 384, 384]},
}

#: The configuration's paths (made absolute against the configuration file's folder).
DATA_PATHS = ("labels_dir", "manifest", "images_dir", "segs_dir", "seg_labels", "out", "crop_cache")


@dataclass
class TrainConfig:
    """Training of one organ's k-fold ensemble.

    Attributes:
        organ: which organ (kidney and adrenal train on left and right crops together).
        labels_dir: output of ``jmid labels`` (``<organ>.csv``).
        manifest: a dataset manifest (``jmid dataset``; :mod:`~JMIDAnomalyLib.imaging.
            manifest`) naming each case's CT, segmentation and label table; when given,
            images_dir, segs_dir and seg_labels are not used.
        images_dir / segs_dir: CTs and organ label maps named ``<case_id>.nii.gz``.
        seg_labels: the label maps' table (any format :func:`~JMIDAnomalyLib.imaging.label_tables.
            read_label_names` reads); empty: each label map's own (its header, or the JSON
            beside it).
        out: output folder (checkpoints, logs, the bundle).
        crop_cache: crop cache folder (default ``<out>/crop_cache``); share it between jobs.
        crop_preset / crop: crop preset name and overrides of its fields.
        model / model_kwargs: a registered model (``JMIDAnomalyLib.models``) and its arguments.
        folds, epochs, batch_size, lr, weight_decay: StratifiedGroupKFold by patient; AdamW
            with cosine decay (published: lr 2.3e-4).
        loss: ``bce`` or ``focal`` (gamma ``focal_gamma``); ``class_weighting`` weights
            positives by negatives/positives; ``balanced_sampling`` oversamples abnormal cases.
        sample_loss: the published objective, BCE on every 2.5D sample's logits with the case
            labels repeated over the samples; default (False) BCE on the pooled case logit,
            the multiple-instance objective, under which a finding seen in one sample can decide
            the case (with repeated labels, the samples of a positive case that do not show the
            finding are trained towards "positive" too, and small focal findings are not learnt).
        augment: the training augmentation (:mod:`~JMIDAnomalyLib.training.augment`: flips,
            rotation and scaling, noise).
        test_time_mirroring: out-of-fold predictions, and every score of the bundle, are the
            mean over the crop's 8 mirror images (:func:`~JMIDAnomalyLib.models.ensemble.
            ensemble_probabilities`; 8 forward passes, as nnU-Net mirrors); only with
            ``augment``, whose flips the models learn. The epochs' validation stays single-pass.
        amp: mixed precision: float16 on CUDA, and training in bfloat16 on a CPU with native
            bfloat16 (AVX512-BF16 or AMX; ``common.devices.training_precision``).
        seed: everything is seeded from it (augmentation per epoch and item, so any
            ``num_workers`` gives the same run).
        num_workers: DataLoader worker processes that read and dequantise the crops and draw
            their augmentation (applied to each batch on the training device); -1 (default):
            one less than the cores available, at least 1, at most 8, but none when the
            model computes on a CPU of 2 cores or fewer; 0: in the training process.
        preset: a named recipe from :data:`TRAIN_PRESETS` (``published``, ``published_384``)
            whose fields apply where a configuration file (:meth:`from_dict`, :meth:`load`)
            does not set them; the saved ``config.json`` holds the resolved values.
        exclude_cases: case ids left out of training (a held-out test set).
        threshold_rule: how each class's threshold is chosen on the calibrated out-of-fold
            predictions: ``balanced`` (default) maximises the lower of sensitivity and
            specificity, ``youden`` maximises their sum (Youden's J), which on a steep curve
            buys a little specificity with much sensitivity.
        min_specificity: either rule chooses among the operating points with at least this
            out-of-fold specificity (0: all), so no class is flagged on most normals where its
            curve is flat.
        specificity_confidence: 0 (default) takes ``min_specificity`` as a point estimate, met
            on the out-of-fold cases and by new cases about half the time; e.g. 0.95 asks for
            the Wilson interval's lower end, so new cases meet it with that confidence (the
            demo's; a lower sensitivity where the constraint binds).
        tensorboard / mlflow: logging (MLflow only when installed).
    """

    organ: str = "liver"
    labels_dir: str = "labels"
    manifest: str = ""
    images_dir: str = "images"
    segs_dir: str = "segs"
    seg_labels: str = "labels.json"
    out: str = "training"
    crop_cache: str = ""
    crop_preset: str = "demo"
    crop: dict = field(default_factory=dict)
    model: str = "mil_tiny"
    model_kwargs: dict = field(default_factory=dict)
    folds: int = 5
    epochs: int = 8
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-2
    loss: str = "bce"
    focal_gamma: float = 2.0
    class_weighting: bool = False
    balanced_sampling: bool = False
    augment: bool = True
    test_time_mirroring: bool = True
    sample_loss: bool = False
    amp: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = -1
    tensorboard: bool = True
    mlflow: bool = False
    exclude_cases: list = field(default_factory=list)
    threshold_rule: str = "balanced"
    min_specificity: float = 0.8
    specificity_confidence: float = 0.0
    preset: str = ""

    @property
    def mirroring(self) -> bool:
        """Whether the bundle's scores are mirrored (test-time mirroring needs the flips)."""
        return self.augment and self.test_time_mirroring

    def __post_init__(self) -> None:
        for f in fields(self):  # a string such as "false" would read as true
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise InputError(f.name, f"must be true or false, not {getattr(self, f.name)!r}")
        if self.organ not in ORGANS:
            raise InputError("organ", f"'{self.organ}' is not one of {', '.join(ORGANS)}")
        if self.loss not in ("bce", "focal"):
            raise InputError("loss", "must be 'bce' or 'focal'")
        if self.folds < 2 or self.epochs < 1 or self.batch_size < 1:
            raise InputError("training", "needs folds >= 2, epochs >= 1 and batch_size >= 1")
        if self.threshold_rule not in THRESHOLD_RULES:
            rules = "' or '".join(THRESHOLD_RULES)
            raise InputError("threshold_rule", f"must be '{rules}', not '{self.threshold_rule}'")
        if not 0 <= self.min_specificity < 1:
            raise InputError("min_specificity", f"must be within 0..1, got {self.min_specificity}")
        if not 0 <= self.specificity_confidence < 1:
            raise InputError(
                "specificity_confidence", f"must be within 0..1, got {self.specificity_confidence}"
            )

    def to_dict(self) -> dict:
        """The configuration as JSON-ready values (``config.json``, the bundle)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        """A configuration from a mapping; unknown keys are an InputError naming ``source``."""
        check_known_keys(data, cls, source)
        preset = data.get("preset") or ""
        if preset and preset not in TRAIN_PRESETS:
            raise InputError(
                source, f"unknown preset '{preset}' (known: {', '.join(TRAIN_PRESETS)})"
            )
        return cls(**{**TRAIN_PRESETS.get(preset, {}), **data})

    @classmethod
    def for_cohort(
        cls,
        data_root: str | Path,
        labels_dir: str | Path,
        out: str | Path,
        crop_cache: str | Path = "",
        **settings,
    ) -> TrainConfig:
        """A configuration for data in the cohort layout: ``data_root/images``,
        ``data_root/segs`` and ``data_root/labels.json`` (what ``jmid cohort`` writes)."""
        data_root = Path(data_root)
        return cls(
            labels_dir=str(labels_dir),
            images_dir=str(data_root / "images"),
            segs_dir=str(data_root / "segs"),
            seg_labels=str(data_root / "labels.json"),
            out=str(out),
            crop_cache=str(crop_cache),
            **settings,
        )

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """From JSON or YAML; relative paths are taken relative to the file's folder."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(path, f"cannot be read ({exc.strerror})") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error becomes one clear message
            raise InputError(path, f"not valid {path.suffix.lstrip('.').upper()} ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(path, "the configuration must be a mapping of keys to values")
        config = cls.from_dict(data, str(path))
        for key in DATA_PATHS:
            if not getattr(config, key):
                continue
            value = Path(getattr(config, key))
            if not value.is_absolute():
                setattr(config, key, str(path.parent / value))
        return config

    def crop_config(self):
        """The crop settings: the preset with the ``crop`` overrides."""
        from JMIDAnomalyLib.imaging.crops import CropConfig

        return CropConfig.from_dict({**CropConfig.preset(self.crop_preset).to_dict(), **self.crop})

    def cache_dir(self) -> Path:
        """The crop cache folder (``crop_cache``, default ``<out>/crop_cache``)."""
        return Path(self.crop_cache) if self.crop_cache else Path(self.out) / "crop_cache"

    def save(self, path: str | Path) -> None:
        """Write the configuration as JSON, atomically."""
        from JMIDAnomalyLib.common.atomic import atomic_output

        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
