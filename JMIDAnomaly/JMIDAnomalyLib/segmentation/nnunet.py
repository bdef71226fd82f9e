"""Organ segmentation with any nnU-Net v2 model folder, in memory.

:class:`OrganSegmenter` follows nnU-Net's predictor: configure once, load weights once, segment
many CTs. Checkpoints are read with ``torch.load(weights_only=True)`` (tensors and plain values
only; a checkpoint that needs arbitrary unpickling is refused), then handed to
``nnUNetPredictor.manual_initialization``: the network comes from the folder's ``plans.json``
exactly as ``initialize_from_trained_model_folder`` builds it.

Label names come from the model's ``dataset.json``;
:func:`JMIDAnomalyLib.imaging.crops.organ_targets` maps them to our organs (TotalSegmentator v2
names out of the box).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.devices import pick_device
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.imaging.geometry import Grid, resample_to_grid

logger = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> dict:
    """A nnU-Net checkpoint without unpickling code: tensors, containers, numbers, strings,
    numpy scalars and torch devices only (``torch.load(weights_only=True)`` with numpy's scalar
    types allowed, which nnU-Net's training logs contain).

    Raises:
        InputError: the file needs arbitrary unpickling, or is not a checkpoint.
    """
    import torch

    core = getattr(np, "_core", None) or np.core
    numpy_safe = [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct]
    numpy_safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:
        with torch.serialization.safe_globals(numpy_safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(
            path, f"refusing to load: the checkpoint holds pickled objects ({exc})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise InputError(path, f"not a readable PyTorch checkpoint ({exc})") from None


class OrganSegmenter:
    """Segment CTs with an nnU-Net v2 model folder.

    Args:
        model_dir: the trainer output folder (``dataset.json``, ``plans.json``, ``fold_X/``).
        folds: folds to ensemble; default all ``fold_*`` folders with the checkpoint.
        checkpoint: checkpoint file name in each fold folder.
        step_size: sliding-window step as a fraction of the patch (nnU-Net's tile_step_size).
        mirroring: test-time mirroring; default on for GPUs, off on the CPU (8x slower there).
        device: ``auto``, ``cuda``, ``mps`` or ``cpu``.
        orientation: reorient the CT to this DICOM orientation code before predicting (the
            orientation the model was trained in; TotalSegmentator uses ``RAS`` canonical), and
            map the result back exactly. None keeps the CT as it is.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        folds: tuple[int | str, ...] | None = None,
        checkpoint: str = "checkpoint_final.pth",
        step_size: float = 0.5,
        mirroring: bool | None = None,
        device: str = "auto",
        orientation: str | None = None,
    ) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        model_dir = Path(model_dir)
        for required in ("dataset.json", "plans.json"):
            if not (model_dir / required).is_file():
                raise InputError(model_dir, f"not an nnU-Net model folder: {required} is missing")
        self.dataset_json = json.loads((model_dir / "dataset.json").read_text(encoding="utf-8"))
        plans_manager = PlansManager(
            json.loads((model_dir / "plans.json").read_text(encoding="utf-8"))
        )
        parameters, first = _fold_weights(model_dir, folds, checkpoint)
        configuration = plans_manager.get_configuration(first["init_args"]["configuration"])
        network = _network(
            model_dir, first["trainer_name"], plans_manager, configuration, self.dataset_json
        )
        network.load_state_dict(parameters[0])
        self.device = pick_device(device)
        use_mirroring = self.device.type != "cpu" if mirroring is None else mirroring
        self.predictor = nnUNetPredictor(
            tile_step_size=step_size,
            use_gaussian=True,
            use_mirroring=use_mirroring,
            perform_everything_on_device=self.device.type == "cuda",
            device=self.device,
            verbose=False,
            allow_tqdm=False,
        )
        self.predictor.manual_initialization(
            network,
            plans_manager,
            configuration,
            parameters,
            self.dataset_json,
            first["trainer_name"],
            first.get("inference_allowed_mirroring_axes"),
        )
        self.orientation = orientation
        self.model_dir = model_dir

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> structure name, from the model's dataset.json."""
        out = {}
        for name, value in self.dataset_json.get("labels", {}).items():
            values = value if isinstance(value, list) else [value]
            if len(values) == 1 and int(values[0]) != 0:
                out[int(values[0])] = str(name)
        return out

    def segment_array(
        self, array_zyx: np.ndarray, spacing_xyz: tuple[float, float, float]
    ) -> np.ndarray:
        """Numpy in, numpy out: a (z, y, x) CT in HU with its (x, y, z) spacing in mm ->
        a (z, y, x) uint8/uint16 label map. No files are written."""
        image = np.asarray(array_zyx, dtype=np.float32)[None]
        properties = {"spacing": [float(s) for s in spacing_xyz[::-1]]}
        labels = self.predictor.predict_single_npy_array(image, properties, None, None, False)
        return labels.astype(np.uint16 if labels.max() > 255 else np.uint8)

    def segment(self, ct: sitk.Image, progress: Progress | None = None) -> sitk.Image:
        """Segment a CT (any orientation); the label map lies on the CT's grid."""
        if progress:
            progress(0.0, "segmenting organs")
        work = sitk.DICOMOrient(ct, self.orientation) if self.orientation else ct
        labels = self.segment_array(sitk.GetArrayViewFromImage(work), work.GetSpacing())
        out = Grid.from_image(work).image_from_array(labels)
        if self.orientation:
            out = resample_to_grid(out, Grid.from_image(ct), "nearest")
        if progress:
            progress(1.0, "segmentation done")
        return out


def _fold_weights(
    model_dir: Path, folds: tuple[int | str, ...] | None, checkpoint: str
) -> tuple[list[dict], dict]:
    """Every fold's network weights, and the first fold's checkpoint (trainer name, plans)."""
    if folds is None:
        found = (p for p in model_dir.glob("fold_*") if (p / checkpoint).is_file())
        folds = tuple(sorted(p.name.removeprefix("fold_") for p in found))
    if not folds:
        raise InputError(model_dir, f"no fold_*/{checkpoint} in the model folder")
    parameters, first = [], None
    for fold in folds:
        path = model_dir / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise InputError(path, "checkpoint missing")
        data = load_checkpoint(path)
        first = first or data
        parameters.append(data["network_weights"])
    return parameters, first


def _network(model_dir: Path, trainer_name: str, plans_manager, configuration, dataset_json):
    """The network exactly as nnU-Net's trainer class builds it from the plans."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise InputError(model_dir, f"unknown nnU-Net trainer '{trainer_name}'")
    label_manager = plans_manager.get_label_manager(dataset_json)
    n_inputs = determine_num_input_channels(plans_manager, configuration, dataset_json)
    n_outputs = label_manager.num_segmentation_heads
    build = trainer_class.build_network_architecture
    if "plans_manager" in inspect.signature(build).parameters:
        return build(
            plans_manager, configuration, n_inputs, n_outputs, enable_deep_supervision=False
        )
    return build(  # the older signature
        configuration.network_arch_class_name,
        configuration.network_arch_init_kwargs,
        configuration.network_arch_init_kwargs_req_import,
        n_inputs,
        n_outputs,
        enable_deep_supervision=False,
    )
