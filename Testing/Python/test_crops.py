"""Organ crops on the real example CT: whole organ inside, exact mapping back, sides, statuses."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.crop_cache import CropCache
from JMIDAnomalyLib.imaging.crops import CropConfig, crop_organs, sample_indices
from JMIDAnomalyLib.imaging.geometry import Grid, centroid_lps, map_to_source

DEMO = CropConfig.preset("demo")


def organ_mask(seg, names, structure):
    value = {v: k for k, v in names.items()}[structure]
    return sitk.GetArrayViewFromImage(seg) == value


@pytest.fixture(scope="module")
def published_crops(example_ct, example_seg, label_names):
    return {c.key: c for c in crop_organs(example_ct, example_seg, label_names)}


ORGAN_STRUCTURES = [
    ("liver", "liver"),
    ("spleen", "spleen"),
    ("pancreas", "pancreas"),
    ("kidney_left", "kidney_left"),
    ("kidney_right", "kidney_right"),
    ("adrenal_left", "adrenal_gland_left"),
]


@pytest.mark.parametrize("key,structure", ORGAN_STRUCTURES)
def test_crop_holds_the_whole_organ_and_maps_back_exactly(
    published_crops, example_ct, example_seg, label_names, key, structure
):
    crop = published_crops[key]
    source = organ_mask(example_seg, label_names, structure)
    assert crop.image.shape == (64, 256, 256) and crop.image.dtype == np.float32
    assert -1.0 <= crop.image.min() and crop.image.max() <= 1.0
    kji = np.argwhere(source)
    lower, upper = np.asarray(crop.record.index_lower), np.asarray(crop.record.index_upper)
    assert np.all(kji.min(0)[::-1] >= lower) and np.all(kji.max(0)[::-1] <= upper), "organ cut off"
    back = map_to_source(crop.mask, crop.record, "nearest") > 0.5
    dice = 2 * np.sum(back & source) / (back.sum() + source.sum())
    assert dice > 0.95, f"{key}: mapped-back mask Dice {dice:.3f}"
    grid = Grid.from_image(example_ct)
    assert np.linalg.norm(centroid_lps(back, grid) - centroid_lps(source, grid)) < 1.0


def test_left_and_right_land_on_the_correct_side(published_crops):
    def centre_x(key):
        crop = published_crops[key]
        return centroid_lps(crop.mask, crop.record.crop)[0]

    # LPS x grows towards the patient's left.
    assert centre_x("kidney_left") > 30 and centre_x("kidney_right") < -30
    assert centre_x("adrenal_left") > centre_x("adrenal_right")


def test_a_single_kidney_label_is_split_by_physical_side(example_ct, example_seg, label_names):
    by_name = {v: k for k, v in label_names.items()}
    array = sitk.GetArrayFromImage(example_seg)
    merged = np.zeros_like(array)
    merged[np.isin(array, [by_name["kidney_left"], by_name["kidney_right"]])] = 1
    seg = sitk.GetImageFromArray(merged)
    seg.CopyInformation(example_seg)
    split = {c.key: c for c in crop_organs(example_ct, seg, {1: "kidney"}, ("kidney",), DEMO)}
    reference = {
        c.key: c for c in crop_organs(example_ct, example_seg, label_names, ("kidney",), DEMO)
    }
    for side in ("kidney_left", "kidney_right"):
        assert split[side].record.index_lower == reference[side].record.index_lower
        assert split[side].record.index_upper == reference[side].record.index_upper
        np.testing.assert_array_equal(split[side].mask, reference[side].mask)


def test_absent_small_and_partial_organs_are_reported(example_ct, example_seg, label_names):
    by_name = {v: k for k, v in label_names.items()}
    array = sitk.GetArrayFromImage(example_seg)
    array[array == by_name["gallbladder"]] = 0  # cholecystectomy
    pancreas = np.argwhere(array == by_name["pancreas"])
    array[array == by_name["pancreas"]] = 0
    array[tuple(pancreas[:3].T)] = by_name["pancreas"]  # a 3-voxel fragment
    seg = sitk.GetImageFromArray(array)
    seg.CopyInformation(example_seg)
    crops = {c.key: c for c in crop_organs(example_ct, seg, label_names, config=DEMO)}
    assert crops["gallbladder"].status == "absent" and crops["gallbladder"].image is None
    assert (
        crops["pancreas"].status == "too_small" and "implausibly small" in crops["pancreas"].message
    )
    assert crops["esophagus"].status == "absent"
    assert crops["liver"].status == "partial"  # the example CT cuts the liver's dome
    assert crops["kidney_left"].status == "ok"


def test_crops_follow_physical_space_in_any_orientation(example_ct, example_seg, label_names):
    reference = {c.key: c for c in crop_organs(example_ct, example_seg, label_names, config=DEMO)}
    for orientation in ("LPS", "LAS", "RSP"):
        ct = sitk.DICOMOrient(example_ct, orientation)
        seg = sitk.DICOMOrient(example_seg, orientation)
        crops = {c.key: c for c in crop_organs(ct, seg, label_names, config=DEMO)}
        for key in ("liver", "kidney_left", "spleen"):
            a = centroid_lps(reference[key].mask, reference[key].record.crop)
            b = centroid_lps(crops[key].mask, crops[key].record.crop)
            assert np.linalg.norm(a - b) < 2.0, (orientation, key, a, b)


def test_mask_mode_sets_air_outside_box_mode_keeps_tissue(example_ct, example_seg, label_names):
    mask = {c.key: c for c in crop_organs(example_ct, example_seg, label_names, ("spleen",), DEMO)}
    box_config = replace(DEMO, mode="box")
    box = {
        c.key: c for c in crop_organs(example_ct, example_seg, label_names, ("spleen",), box_config)
    }
    outside = mask["spleen"].image[mask["spleen"].mask == 0]
    assert np.mean(outside == -1.0) > 0.5
    assert np.mean(box["spleen"].image == -1.0) < np.mean(mask["spleen"].image == -1.0)


def test_negative_margin_keeps_the_interior_and_fill_hides_the_outline(
    example_ct, example_seg, label_names
):
    """margin_mm < 0 erodes the kept region; fill_hu replaces air outside it."""
    from scipy.ndimage import binary_erosion

    def liver(config):
        return crop_organs(example_ct, example_seg, label_names, ("liver",), config)[0]

    whole = liver(replace(DEMO, margin_mm=0.0))  # same box: an eroding margin never shrinks it
    inner = liver(replace(DEMO, margin_mm=-6.0, fill_hu=100.0))
    assert inner.image.shape == whole.image.shape and np.array_equal(inner.mask, whole.mask)
    fill = (100.0 + 200.0) / 600.0 * 2.0 - 1.0  # 100 HU in the -200..400 window
    assert np.allclose(inner.image[inner.mask == 0], fill)  # outside the organ: tissue, not air
    assert not np.any(inner.image == -1.0)
    border = inner.mask.astype(bool) & ~binary_erosion(inner.mask, iterations=1)
    assert np.allclose(inner.image[border], fill)  # the organ's outline is hidden too
    # Deep inside (away from the outline and from the vessels the liver label leaves out) the
    # CT is untouched.
    deep = binary_erosion(inner.mask, iterations=6)
    assert deep.sum() > 500 and np.array_equal(inner.image[deep], whole.image[deep])
    with pytest.raises(InputError):
        replace(DEMO, mode="box", margin_mm=-1.0)
    with pytest.raises(InputError):
        replace(DEMO, mode="box", fill_hu=0.0)


def test_median_fill_follows_the_organs_own_attenuation(example_ct, example_seg, label_names):
    """fill_hu "median" fills with the median of the kept voxels, so a liver darkened by 50 HU
    (a fatty liver) is framed by its own attenuation, not by a normal liver's."""
    darker = sitk.GetArrayFromImage(example_ct).astype(np.float32)
    darker[organ_mask(example_seg, label_names, "liver")] -= 50.0
    fatty = sitk.GetImageFromArray(darker)
    fatty.CopyInformation(example_ct)
    config = replace(DEMO, margin_mm=-3.0, fill_hu="median")
    fills = []
    for ct in (example_ct, fatty):
        crop = crop_organs(ct, example_seg, label_names, ("liver",), config)[0]
        outside = crop.image[crop.mask == 0]
        assert np.all(outside == outside[0])
        kept = crop.image[(crop.mask == 1) & (crop.image != outside[0])]
        assert kept.size > 1000 and abs(float(np.median(kept)) - outside[0]) < 2 / 600
        fills.append(float(outside[0]))
    assert abs((fills[0] - fills[1]) * 300 - 50.0) < 3.0  # in HU: the fill drops with the liver
    with pytest.raises(InputError, match="median"):
        replace(DEMO, fill_hu="mean")
    # The command line's value (jmid crop --fill-hu, bench_training --fill-hu): HU or median.
    from argparse import ArgumentTypeError

    from JMIDAnomalyLib.imaging.crops import fill_hu_arg

    assert fill_hu_arg("median") == "median" and fill_hu_arg("-20") == -20.0
    with pytest.raises(ArgumentTypeError, match="must be HU or 'median', not 'mean'"):
        fill_hu_arg("mean")


def test_25d_samples():
    idx = sample_indices(64, 32, 5)
    assert idx.shape == (32, 5) and idx.min() == 0 and idx.max() == 63
    assert np.all(np.diff(idx, axis=1) == 1)
    volume = np.arange(64)[:, None, None] * np.ones((64, 8, 8))
    import torch
    from JMIDAnomalyLib.models.inputs import model_batch
    from JMIDAnomalyLib.models.registry import LAYOUT_25D

    stacks = model_batch(torch.from_numpy(volume)[None], LAYOUT_25D, 32, 5)[0].numpy()
    assert stacks.shape == (32, 5, 8, 8) and stacks[0, :, 0, 0].tolist() == [0, 1, 2, 3, 4]


def test_batch_augmentation_is_monais_affine_and_seeded_per_item(published_crops):
    """The training augmentation, applied to a batch of real liver crops at once, is MONAI's
    Affine about each crop's centre (scaling, and rotation about each axis) and its Flip along
    each axis; its draws repeat for the same (seed, epoch, item) and differ between items."""
    import torch
    from JMIDAnomalyLib.training import augment
    from monai.transforms import Affine, Flip

    crop = torch.from_numpy(published_crops["liver"].image[:, ::4, ::4].copy())  # (64, 64, 64)
    crop = crop[8:40, :, 4:52]  # not a cube, so voxel space differs from normalised space
    # (rotation about x, y, z; scaling along x, y, z) -> MONAI's (rotation, scaling) per array
    # axis (z, y, x)
    cases = [
        ((0.0, 0.0, 0.0), (1.1, 0.9, 1.05), (0.0, 0.0, 0.0), (1.05, 0.9, 1.1)),
        ((0.1, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, -0.1), (1.0, 1.0, 1.0)),
        ((0.0, -0.08, 0.0), (1.0, 1.0, 1.0), (0.0, -0.08, 0.0), (1.0, 1.0, 1.0)),
        ((0.0, 0.0, 0.1), (1.0, 1.0, 1.0), (-0.1, 0.0, 0.0), (1.0, 1.0, 1.0)),
    ]
    params = torch.tensor([[1.0, *r, *s, 0.0, 0.0, 0.0] for r, s, _, _ in cases], dtype=float)
    ours = augment.apply(crop[None].repeat(len(cases), 1, 1, 1), params)
    for k, (_, _, rotation, scaling) in enumerate(cases):
        theirs = Affine(rotate_params=rotation, scale_params=scaling, padding_mode="border")
        expected = torch.as_tensor(theirs(crop[None], mode="bilinear")[0]).clamp(-1, 1)
        assert torch.allclose(ours[k], expected, atol=1e-4), k
        assert not torch.allclose(ours[k], crop, atol=0.05)
    draws = [augment.draw(0, epoch, item) for epoch, item in [(0, 1), (0, 1), (0, 2), (1, 1)]]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[3])
    noisy = torch.tensor([[0.0] * 7 + [1.0, 0.03, 42.0]] * 2, dtype=float)
    first, second = augment.apply(crop[None].repeat(2, 1, 1, 1), noisy)
    assert torch.equal(first, second) and 0.02 < float((first - crop).std()) < 0.04
    # A negative scale flips along that axis, as MONAI's Flip (x, y, z: array axes 2, 1, 0).
    for axes in ([0], [1], [2], [0, 2]):
        scales = [-1.0 if a in axes else 1.0 for a in range(3)]
        flip = torch.tensor([[1.0, 0.0, 0.0, 0.0, *scales, 0.0, 0.0, 0.0]], dtype=float)
        expected = torch.as_tensor(Flip(spatial_axis=[2 - a for a in axes])(crop[None])[0])
        assert torch.allclose(augment.apply(crop[None], flip)[0], expected, atol=1e-5), axes
    # Each axis is flipped in about half the draws; a flipped crop is always moved.
    many = torch.stack([augment.draw(0, 0, item) for item in range(400)])
    flipped = many[:, 4:7] < 0
    assert ((flipped.float().mean(0) - 0.5).abs() < 0.08).all()
    assert (many[flipped.any(1), 0] == 1).all() and (many[:, 4:7].abs() >= 0.9).all()


def test_cache_writes_once_and_reloads(example_ct, example_seg, label_names, tmp_path):
    cache = CropCache(tmp_path)
    first, hit = cache.get(example_ct, example_seg, label_names, ("liver", "kidney"), DEMO)
    assert not hit
    again, hit = cache.get(example_ct, example_seg, label_names, ("liver", "kidney"), DEMO)
    assert hit
    for a, b in zip(first, again, strict=True):
        assert a.key == b.key and a.status == b.status
        if a.image is not None:
            np.testing.assert_allclose(a.image, b.image, atol=1 / 127.5)
            np.testing.assert_array_equal(a.mask, b.mask)
            assert a.record == b.record
    # Other parameters: another entry. An interrupted write (no .json) is recomputed.
    _, hit = cache.get(
        example_ct, example_seg, label_names, ("liver", "kidney"), replace(DEMO, margin_mm=6)
    )
    assert not hit
    for meta in tmp_path.glob("*.json"):
        meta.unlink()
    _, hit = cache.get(example_ct, example_seg, label_names, ("liver", "kidney"), DEMO)
    assert not hit
    assert not list(tmp_path.glob(".*tmp*"))


def test_crop_command_writes_overlayable_volumes(reference_data, tmp_path):
    out = tmp_path / "crops"
    status = main(
        [
            "crop",
            "--ct",
            str(reference_data.ct),
            "--seg",
            str(reference_data.ct_seg),
            "--labels",
            str(reference_data.labels_json),
            "--organs",
            "liver,spleen",
            "--preset",
            "demo",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    liver = sitk.ReadImage(str(out / "liver.nii.gz"))
    assert liver.GetSize() == (64, 64, 40)
    assert sorted(p.name for p in out.iterdir()) == [
        "crops.json",
        "liver.nii.gz",
        "liver_mask.nii.gz",
        "spleen.nii.gz",
        "spleen_mask.nii.gz",
    ]
    assert (
        main(
            [
                "crop",
                "--ct",
                str(reference_data.ct),
                "--seg",
                str(reference_data.ct_seg),
                "--out",
                str(tmp_path / "x"),
                "--organs",
                "lung",
            ]
        )
        == 2
    )
