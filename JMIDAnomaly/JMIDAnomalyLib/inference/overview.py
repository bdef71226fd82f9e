"""``overview.png``: axial and coronal slices through each analyzed organ, with the organ's
outline, its heatmap as a colour overlay and its scores.

Slices are shown in the radiological convention (patient's right on the image's left, anterior
up in axial views, superior up in coronal views) whatever the CT's orientation, with the
physical aspect ratio.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output


def _lps(image: sitk.Image) -> tuple[np.ndarray, tuple]:
    oriented = sitk.DICOMOrient(image, "LPS")  # i: R->L, j: A->P, k: I->S
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()


def render_overview(
    path: str | os.PathLike,
    ct: sitk.Image,
    label_map: sitk.Image,
    label_names: dict[int, str],
    results: Sequence,
    window: tuple[float, float] = (-160.0, 240.0),
) -> None:
    """Write the overview PNG (atomically).

    Args:
        path: the PNG to write.
        ct: the CT in HU; label_map: its organ labels (same grid); label_names: value -> name.
        results: :class:`~JMIDAnomalyLib.inference.predictor.OrganResult` per organ; those with
            scores get a row (axial and coronal slice through the heatmap's hottest voxel).
        window: the CT display window (HU).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from JMIDAnomalyLib.imaging.crops import organ_targets

    ct_array, spacing = _lps(ct)
    labels, _ = _lps(label_map)
    shown = [r for r in results if r.scores]
    values_of = {
        (t.organ, t.side): t.labels
        for t in organ_targets(label_names, tuple({r.organ for r in shown}))
    }
    fig, axes = plt.subplots(
        max(len(shown), 1), 2, figsize=(9, 4.2 * max(len(shown), 1)), squeeze=False
    )
    for ax_row, result in zip(axes, shown, strict=False):
        organ_mask = np.isin(labels, values_of.get((result.organ, result.side), ()))
        views = _views(ct_array, organ_mask, _heat_lps(result, ct), spacing)
        for ax, view in zip(ax_row, views, strict=True):
            _draw(ax, result, *view, window)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no organ could be analyzed", ha="center")
        for ax in axes[0]:
            ax.axis("off")
    fig.suptitle("JMID Anomaly: * = at or above the bundle's threshold", fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _heat_lps(result, ct: sitk.Image) -> np.ndarray | None:
    """The positive part of an organ's heatmap, in the LPS-ordered array of :func:`_lps`."""
    from JMIDAnomalyLib.imaging.geometry import Grid

    if result.heatmap is None:
        return None
    heat, _ = _lps(Grid.from_image(ct).image_from_array(result.heatmap))
    return np.clip(heat, 0, None)


def _views(ct_array, organ_mask, heat, spacing) -> tuple:
    """(name, image, mask, overlay, aspect) of the axial and coronal slices through the
    heatmap's hottest voxel (the organ's, without a heatmap); superior up in coronal views."""
    focus = heat if heat is not None and heat.max() > 0 else organ_mask.astype(float)
    if focus.max() > 0:
        k, j, _ = np.unravel_index(int(np.argmax(focus)), focus.shape)
    else:
        k, j = organ_mask.shape[0] // 2, organ_mask.shape[1] // 2
    axial = (
        "axial",
        ct_array[k],
        organ_mask[k],
        None if heat is None else heat[k],
        spacing[1] / spacing[0],
    )
    coronal = (
        "coronal",
        ct_array[:, j][::-1],
        organ_mask[:, j][::-1],
        None if heat is None else heat[:, j][::-1],
        spacing[2] / spacing[0],
    )
    return axial, coronal


def _draw(ax, result, name, image, mask, overlay, aspect, window) -> None:
    """One slice: the CT, the organ's outline, the heatmap overlay and a title."""
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect)
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=0.6)
    if overlay is not None and overlay.max() > 0:
        masked = np.ma.masked_less_equal(overlay, 0.05 * overlay.max())
        ax.imshow(masked, cmap="hot", alpha=0.55, aspect=aspect, vmin=0, vmax=float(overlay.max()))
    if name == "axial":
        top = result.abnormal[:3]
        detail = ", ".join(f"{s.cls} {s.probability:.2f}{'*' if s.flag else ''}" for s in top)
    else:
        cls = result.explained_class
        detail = f"heatmap: {cls}" if cls else "no heatmap"
    ax.set_title(f"{result.key} ({name})\n{detail}", fontsize=8)
    ax.axis("off")
