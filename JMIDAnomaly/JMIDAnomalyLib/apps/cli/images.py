"""``jmid info``, ``scene``, ``segment`` and ``crop``: volumes, scenes, segmentation, crops."""

from __future__ import annotations

import argparse
from pathlib import Path

from JMIDAnomalyLib.apps.cli.options import (
    Command,
    add_batch_options,
    build_segmenter,
    organ_list,
)
from JMIDAnomalyLib.common.organs import ORGANS


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path, help="CT volume file or DICOM folder")


def _run_info(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from JMIDAnomalyLib.imaging.geometry import Grid
    from JMIDAnomalyLib.imaging.volumes import read_ct

    image = read_ct(args.ct)
    grid = Grid.from_image(image)
    values = sitk.GetArrayViewFromImage(image)
    print(f"size (x, y, z):     {grid.size}")
    print(f"spacing (mm):       {tuple(round(v, 4) for v in grid.spacing)}")
    print(f"origin (LPS, mm):   {tuple(round(v, 3) for v in grid.origin)}")
    print(f"direction (LPS):    {tuple(round(v, 4) for v in grid.direction)}")
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    print(f"HU 1/50/99 %:       {p1:.0f} / {p50:.0f} / {p99:.0f}")
    return 0


def _add_scene(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path, help="CT volume file or DICOM folder")
    parser.add_argument("--seg", type=Path, help="organ label map on the CT's grid")
    parser.add_argument(
        "--labels", type=Path, help="label table JSON (value -> name, or dataset.json)"
    )
    parser.add_argument(
        "--all-structures",
        action="store_true",
        help="keep every structure of the label map (default: only the seven abdominal organs)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output scene, .mrb or .mrml")


def _run_scene(args: argparse.Namespace) -> int:
    from slicer import vtkMRMLScene

    from JMIDAnomalyLib.imaging.label_tables import read_segmentation, select_organs
    from JMIDAnomalyLib.imaging.volumes import read_ct
    from JMIDAnomalyLib.scene.cases import add_case_to_scene
    from JMIDAnomalyLib.scene.mrml import save_scene

    ct = read_ct(args.ct)
    label_map, names = None, None
    if args.seg:
        label_map, names = read_segmentation(args.seg, ct, args.labels, "--labels", required=False)
        if not args.all_structures and names:
            label_map, names = select_organs(label_map, names)
    scene = vtkMRMLScene()
    add_case_to_scene(scene, ct, label_map, names)
    print(save_scene(scene, args.out))
    return 0


def _add_segment(parser: argparse.ArgumentParser) -> None:
    add_batch_options(parser)
    parser.add_argument(
        "--model", required=True, type=Path, help="nnU-Net v2 model (trainer output) folder"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output label map (.nii.gz, .nrrd, .mha); with --manifest a folder of "
        "<case_id>.nii.gz and <case_id>.json",
    )
    parser.add_argument("--folds", help="comma-separated folds (default: all in the folder)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument(
        "--step-size", type=float, default=0.5, help="sliding-window step (fraction of patch)"
    )
    parser.add_argument(
        "--mirroring",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time mirroring (default: on for GPU, off for CPU)",
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument(
        "--orientation",
        default="none",
        help="reorient to this DICOM code first (RAS: TotalSegmentator)",
    )


def _run_segment(args: argparse.Namespace) -> int:
    if args.manifest:
        from JMIDAnomalyLib.apps.cli.datasets import segment_manifest

        return segment_manifest(args)
    from JMIDAnomalyLib.common.progress import console_progress
    from JMIDAnomalyLib.imaging.label_tables import default_label_table, write_label_names
    from JMIDAnomalyLib.imaging.volumes import read_ct, write_image

    segmenter = build_segmenter(args, args.device)
    labels = segmenter.segment(read_ct(args.ct), progress=console_progress("segment"))
    write_image(labels, args.out)
    table = default_label_table(args.out)
    write_label_names(segmenter.label_names, table)
    print(f"label map written to {args.out} (label table {table.name})")
    return 0


def _add_crop(parser: argparse.ArgumentParser) -> None:
    add_batch_options(parser)
    parser.add_argument("--seg", type=Path, help="organ label map on the CT's grid (with --ct)")
    parser.add_argument(
        "--labels",
        type=Path,
        help="label table JSON (default: SEG's name with .json, as jmid segment writes)",
    )
    parser.add_argument(
        "--organs", default=",".join(ORGANS), help="comma-separated organs (default all)"
    )
    parser.add_argument(
        "--preset",
        choices=("published", "demo"),
        default="published",
        help="grid and 2.5D layout: published 64x256x256, demo 40x64x64",
    )
    parser.add_argument("--mode", choices=("mask", "box"), help="mask (default) or bounding box")
    parser.add_argument(
        "--margin-mm",
        type=float,
        help="mask dilation / box margin (default 3 mm; negative: mask erosion)",
    )
    parser.add_argument(
        "--fill-hu",
        type=_fill_hu,
        help="HU outside the mask, or 'median': the organ's own (default: air)",
    )
    parser.add_argument("--out", type=Path, help="output folder (with --ct)")
    parser.add_argument(
        "--cache", type=Path, help="with --manifest: the crop cache folder to fill (jmid train's)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="with --manifest: worker processes of one core each (default: the cores available)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="with --manifest: rehash every case, rebuilding entries whose files changed",
    )


def _fill_hu(text: str) -> float | str:
    from JMIDAnomalyLib.imaging.crops import fill_hu_arg  # imported when the option is given

    return fill_hu_arg(text)


def _run_crop(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from JMIDAnomalyLib.imaging.crop_export import crop_case
    from JMIDAnomalyLib.imaging.crops import CropConfig

    config = CropConfig.preset(args.preset)
    overrides = {
        k: v
        for k, v in (("mode", args.mode), ("margin_mm", args.margin_mm), ("fill_hu", args.fill_hu))
        if v is not None
    }
    config = replace(config, **overrides)
    if args.manifest:
        from JMIDAnomalyLib.apps.cli.datasets import crop_manifest

        return crop_manifest(args, config)
    if not args.seg or not args.out:
        from JMIDAnomalyLib.common.errors import InputError

        raise InputError("--ct", "jmid crop --ct needs --seg and --out")
    organs = tuple(organ_list(args.organs))
    crops = crop_case(args.ct, args.seg, args.out, organs, config, args.labels)
    for crop in crops:
        size = "x".join(map(str, crop.record.crop.shape_zyx)) if crop.record else "-"
        print(
            f"{crop.key:14s} {crop.status:10s} {crop.volume_ml:9.1f} ml  {size:12s} {crop.message}"
        )
    print(f"crops written to {args.out}")
    return 0


COMMANDS: dict[str, Command] = {
    "info": ("read and validate a CT; print its geometry", _add_info, _run_info),
    "scene": ("write a Slicer scene with a CT and its organ segmentation", _add_scene, _run_scene),
    "segment": ("segment organs with an nnU-Net v2 model folder", _add_segment, _run_segment),
    "crop": ("crop organs from a CT for the classifier", _add_crop, _run_crop),
}
