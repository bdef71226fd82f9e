"""Label tables of segmentation models and selection of our organs from a label map."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGANS, TOTALSEGMENTATOR_ORGANS
from JMIDAnomalyLib.imaging.volumes import volume_stem


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Read a label table: value -> structure name.

    Accepts ``{"1": "spleen", ...}`` (TotalSegmentator style), or an nnU-Net ``dataset.json``
    whose ``"labels"`` maps names to values (``{"background": 0, "spleen": 1}``).

    Raises:
        InputError: unreadable JSON or not a label table.
    """
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such label table file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        table: dict[int, str] = {}
        for name, value in data["labels"].items():
            values = value if isinstance(value, list) else [value]  # region-based labels
            if len(values) != 1 or not str(values[0]).lstrip("-").isdigit():
                raise InputError(path, f"label '{name}' has no single integer value")
            if int(values[0]) != 0:
                table[int(values[0])] = str(name)
        return table
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        return {int(k): str(v) for k, v in data.items() if int(k) != 0}
    raise InputError(path, 'expected {"1": "liver", ...} or an nnU-Net dataset.json with "labels"')


def default_label_table(seg_path: Path) -> Path:
    """``seg.nii.gz`` -> ``seg.json`` (the table ``jmid segment`` writes beside its output)."""
    return seg_path.with_name(volume_stem(seg_path) + ".json")


def label_table(
    seg_path: str | os.PathLike,
    given: str | os.PathLike | None = None,
    option: str = "--seg-labels",
) -> Path:
    """The label table of a label map: ``given``, else the one beside it; a clear error naming
    ``option`` when there is none."""
    table = Path(given) if given else default_label_table(Path(seg_path))
    if not table.is_file():
        raise InputError(table, f"no label table for the segmentation; pass {option}")
    return table


def write_label_names(names: Mapping[int, str], path: str | os.PathLike) -> None:
    """Write a label table ``{"1": "liver", ...}`` (what :func:`read_label_names` reads)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({str(k): v for k, v in names.items()}, indent=1), "utf-8")


def select_organs(
    label_map: sitk.Image,
    names: Mapping[int, str],
    organ_names: Mapping[str, tuple[str, str | None]] = TOTALSEGMENTATOR_ORGANS,
    organs: tuple[str, ...] = ORGANS,
) -> tuple[sitk.Image, dict[int, str]]:
    """Keep only the structures that are our organs, relabelled 1..n in organ order.

    Args:
        label_map: a segmentation model's label map.
        names: its label value -> structure name table.
        organ_names: structure name -> (organ, side), e.g. TotalSegmentator's ``kidney_left``.
        organs: which organs to keep.

    Returns:
        (label map, names): the new label map on the same grid, and value -> structure name for
        the structures present in it (an organ absent from the CT gets no label).
    """
    array = sitk.GetArrayViewFromImage(label_map)
    present = set(np.unique(array).tolist())
    by_name = {v: k for k, v in names.items()}
    wanted = [
        (structure, organ_side)
        for structure, organ_side in organ_names.items()
        if organ_side[0] in organs and by_name.get(structure) in present
    ]
    wanted.sort(key=lambda item: (ORGANS.index(item[1][0]), item[1][1] or ""))
    lut = np.zeros(max(names, default=0) + 1, dtype=np.uint8)
    new_names: dict[int, str] = {}
    for new_value, (structure, _) in enumerate(wanted, start=1):
        lut[by_name[structure]] = new_value
        new_names[new_value] = structure
    if array.max() >= lut.size:
        lut = np.pad(lut, (0, int(array.max()) + 1 - lut.size))
    out = sitk.GetImageFromArray(lut[array])
    out.CopyInformation(label_map)
    return out, new_names
