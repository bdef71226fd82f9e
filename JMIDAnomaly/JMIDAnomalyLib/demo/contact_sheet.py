"""A PNG contact sheet of the demo cohort: an axial slice through each planted finding."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.imaging.geometry import Grid


def contact_sheet(root: Path, truth: list[dict], path: Path, max_panels: int = 12) -> Path:
    """Draw up to ``max_panels`` findings (CT window -160..240 HU, finding outline in red).

    Volumes are reoriented to LPS through their direction matrices first, so each axial slice
    shows in radiological convention (anterior up, the patient's right on the image's left).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r["case_id"], f) for r in truth for f in r["findings"]][:max_panels]
    columns = 4
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (case, finding) in zip(axes.ravel(), panels, strict=False):
        ct = sitk.DICOMOrient(sitk.ReadImage(str(root / "images" / f"{case}.nii.gz")), "LPS")
        finding_file = root / "findings" / f"{case}.nii.gz"
        findings = sitk.DICOMOrient(sitk.ReadImage(str(finding_file)), "LPS")
        mask = sitk.GetArrayFromImage(findings)
        grid = Grid.from_image(ct)
        k = int(round(grid.physical_to_index([finding["centre_lps"]])[0][2]))
        k = min(max(k, 0), grid.size[2] - 1)
        ax.imshow(sitk.GetArrayViewFromImage(ct)[k], cmap="gray", vmin=-160, vmax=240)
        if (mask[k] == finding["label"]).any():
            ax.contour(mask[k] == finding["label"], levels=[0.5], colors="red", linewidths=0.8)
        side = f" {finding['side']}" if finding["side"] else ""
        size = f" {finding['size_mm']:.0f} mm" if finding["size_mm"] else ""
        ax.set_title(f"{case}: {finding['organ']}{side} {finding['cls']}{size}", fontsize=8)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)
    return path
