"""The model bundle: one folder (and a zip) with everything analysis needs.

    bundle/
      bundle.json        format version, organ, classes, model name and arguments, folds,
                         preprocessing (crop config incl. HU window, grid, 2.5D layout),
                         per-class calibration (fitted on the out-of-fold predictions:
                         :mod:`~JMIDAnomalyLib.models.calibration`; absent in older
                         bundles, whose scores are raw) and thresholds (chosen on the
                         calibrated out-of-fold predictions by the training configuration's
                         ``threshold_rule``),
                         training data summary (counts, label-file hash), library versions,
                         and the training configuration
      fold_<k>.pt        state dicts (tensors only)
      domain.pt          per fold, the Gaussian of its training cases' features and its
                         threshold (:mod:`~JMIDAnomalyLib.models.domain`; tensors only;
                         absent in older bundles, which check no case against their domain)

Loading checks every part and names what is missing or inconsistent; weights are read with
``torch.load(weights_only=True)``, so a file holding pickled objects is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.imaging.crops import CropConfig
from JMIDAnomalyLib.models.registry import create_model, model_input

BUNDLE_FORMAT = 1
DOMAIN_FILE = "domain.pt"


def library_versions() -> dict[str, str]:
    """The versions of the libraries a bundle depends on (recorded in ``bundle.json``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("jmid-anomaly", "torch", "timm", "monai", "numpy", "SimpleITK"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def save_bundle(
    folder: str | os.PathLike, meta: dict, states: list[dict], domain: list[dict] | None = None
) -> Path:
    """Write a bundle folder (atomically) and ``<folder>.zip`` beside it; ``domain``: the
    folds' training-domain fits (:func:`~JMIDAnomalyLib.models.domain.fit_folds`)."""
    from JMIDAnomalyLib.models import domain as domains

    folder = Path(folder)
    meta = {"format": BUNDLE_FORMAT, "folds": len(states), "versions": library_versions(), **meta}
    if domain is not None:
        meta["domain"] = {"file": DOMAIN_FILE, "quantile": domains.QUANTILE}
    with atomic_output(folder, is_dir=True) as tmp:
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for k, state in enumerate(states):
            torch.save({name: tensor.cpu() for name, tensor in state.items()}, tmp / f"fold_{k}.pt")
        if domain is not None:
            domains.save(tmp / DOMAIN_FILE, domain)
    with atomic_output(folder.with_suffix(".zip")) as tmp, zipfile.ZipFile(tmp, "w") as z:
        for file in sorted(folder.iterdir()):
            z.write(file, f"{folder.name}/{file.name}")
    return folder


@dataclass
class Bundle:
    """A loaded bundle: its metadata and one model per fold (eval mode, on CPU)."""

    path: Path
    meta: dict
    models: list[torch.nn.Module]
    domain: list[dict] | None = None  # per fold, its training-domain fit (models/domain.py)

    @property
    def organ(self) -> str:
        """The organ the bundle scores."""
        return self.meta["organ"]

    @property
    def classes(self) -> list[str]:
        """Its classes, in model-output order."""
        return self.meta["classes"]

    @property
    def thresholds(self) -> dict[str, float]:
        """Class -> decision threshold (chosen on the out-of-fold predictions)."""
        return self.meta["thresholds"]

    @property
    def calibration(self) -> dict[str, dict]:
        """Class -> calibration map (empty for bundles trained before calibration)."""
        return self.meta.get("calibration", {})

    def calibrate(self, raw):
        """(..., K) raw ensemble probabilities -> calibrated, in class order (float64)."""
        from JMIDAnomalyLib.models.calibration import calibrate

        return calibrate(self.calibration, raw, self.classes)

    @property
    def mirroring(self) -> bool:
        """Whether its scores are the mean over the crop's mirror images (test-time mirroring:
        its calibration and thresholds were fitted on such scores); False for bundles from
        before it."""
        return bool(self.meta.get("test_time_mirroring", False))

    @property
    def crop_config(self) -> CropConfig:
        """The preprocessing its models were trained with."""
        return CropConfig.from_dict(self.meta["preprocessing"])

    @property
    def layout(self) -> str:
        """Its models' input layout (registry metadata): ``2.5d`` or ``3d``."""
        return model_input(self.meta["model"])


_REQUIRED = (
    "format",
    "organ",
    "classes",
    "model",
    "model_kwargs",
    "folds",
    "preprocessing",
    "thresholds",
)


def _check_calibration(calibration, classes: list[str], name: Path) -> None:
    from JMIDAnomalyLib.models.calibration import METHODS

    if not isinstance(calibration, dict) or set(calibration) - set(classes):
        raise InputError(name, "calibration names classes the bundle does not have")
    for cls, entry in calibration.items():
        if not isinstance(entry, dict) or entry.get("method") not in METHODS:
            raise InputError(name, f"calibration of {cls} is not one of {', '.join(METHODS)}")
        required = {"platt": ("a", "b"), "isotonic": ("x", "y")}.get(entry["method"], ())
        if any(k not in entry for k in required):
            raise InputError(name, f"calibration of {cls} lacks {', '.join(required)}")


def load_bundle(path: str | os.PathLike, weights: bool = True) -> Bundle:
    """Load a bundle folder or zip. Raises InputError naming what is wrong.

    ``weights=False`` checks and reads only the metadata (``models`` stays empty)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such bundle")
    if path.is_file():
        work = Path(tempfile.mkdtemp(prefix="jmid-bundle-"))
        try:
            with zipfile.ZipFile(path) as z:
                z.extractall(work)
        except zipfile.BadZipFile:
            shutil.rmtree(work, ignore_errors=True)
            raise InputError(path, "not a bundle (not a zip file)") from None
        inner = [p for p in work.iterdir() if p.is_dir()]
        try:
            return _load_folder(inner[0] if len(inner) == 1 else work, path, weights)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _load_folder(path, path, weights)


def _load_folder(folder: Path, name: Path, weights: bool = True) -> Bundle:
    meta_file = folder / "bundle.json"
    if not meta_file.is_file():
        raise InputError(name, "bundle.json is missing")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(name, f"bundle.json is not valid JSON ({exc.msg})") from None
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise InputError(name, f"bundle.json lacks {', '.join(missing)}")
    if meta["format"] != BUNDLE_FORMAT:
        raise InputError(name, f"bundle format {meta['format']} is not {BUNDLE_FORMAT}")
    if meta["organ"] not in ORGAN_CLASSES or list(meta["classes"]) != list(
        ORGAN_CLASSES[meta["organ"]]
    ):
        raise InputError(name, f"classes do not match the {meta['organ']} class list")
    if set(meta["thresholds"]) != set(meta["classes"]):
        raise InputError(name, "thresholds do not cover the classes")
    _check_calibration(meta.get("calibration", {}), meta["classes"], name)
    try:
        CropConfig.from_dict(meta["preprocessing"])
    except (InputError, TypeError) as exc:
        raise InputError(name, f"bad preprocessing parameters ({exc})") from None
    models = []
    for k in range(int(meta["folds"]) if weights else 0):
        file = folder / f"fold_{k}.pt"
        if not file.is_file():
            raise InputError(name, f"fold_{k}.pt is missing ({meta['folds']} folds expected)")
        state = _read_tensors(file, "weights")
        model = create_model(
            meta["model"], num_classes=len(meta["classes"]), **meta["model_kwargs"]
        )
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(
                file, f"weights do not fit the model '{meta['model']}' ({str(exc)[:160]})"
            ) from None
        models.append(model.eval())
    domain = _load_domain(folder, name, meta) if weights and "domain" in meta else None
    return Bundle(name, meta, models, domain)


def _read_tensors(file: Path, what: str) -> dict:
    """A file of named tensors (``torch.load(weights_only=True)``); InputError otherwise."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            file, "refusing to load: the file holds pickled objects, not only tensors"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise InputError(file, f"not a readable {what} file ({str(exc)[:120]})") from None


def _load_domain(folder: Path, name: Path, meta: dict) -> list[dict]:
    from JMIDAnomalyLib.models import domain as domains

    file = folder / DOMAIN_FILE
    if not file.is_file():
        raise InputError(name, f"{DOMAIN_FILE} is missing (bundle.json names a domain)")
    try:
        return domains.unflatten(_read_tensors(file, "domain"), int(meta["folds"]))
    except KeyError as exc:
        raise InputError(file, f"not a readable domain file (no {exc})") from None
