"""Planting findings into a CT at known physical positions (the demo cohort's ground truth).

Each planter edits the CT (and, for enlargement, the organ label map) inside one organ and
returns a :class:`PlantedFinding` with its mask, class, size and centre in LPS mm. Sizes and
contrasts are drawn from ranges wide enough that the smallest findings are hard to see.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from JMIDAnomalyLib.common.organs import organ_key
from JMIDAnomalyLib.imaging.geometry import Grid


@dataclass
class PlantedFinding:
    """A finding put into a case.

    Attributes:
        organ, side, cls: where and what (``cls`` is a class key of the organ).
        size_mm: largest diameter (for diffuse changes: 0).
        centre_lps: physical centre in mm (LPS).
        label: value of this finding in the case's finding mask.
        contrast_hu: attenuation change applied.
        reported: whether the report mentions it (label noise leaves some out).
    """

    organ: str
    side: str | None
    cls: str
    size_mm: float
    centre_lps: tuple[float, float, float]
    label: int
    contrast_hu: float
    reported: bool = True

    def to_dict(self) -> dict:
        """The finding as a ``truth.json`` record (LPS centre in mm, size in mm)."""
        out = asdict(self)
        out["centre_lps"] = [round(v, 2) for v in self.centre_lps]
        out["size_mm"] = round(self.size_mm, 1)
        out["contrast_hu"] = round(self.contrast_hu, 1)
        return out


#: (organ, class) -> planter name; the classes the demo cohort plants.
FINDING_KINDS: tuple[tuple[str, str], ...] = (
    ("liver", "cyst"),
    ("liver", "SOL"),
    ("liver", "fatty_liver"),
    ("liver", "calcification"),
    ("spleen", "deformation"),
    ("spleen", "cyst"),
    ("kidney", "cyst"),
    ("kidney", "calcification"),
    ("pancreas", "SOL"),
    ("pancreas", "pancreatic_duct_dilation"),
    ("gallbladder", "gallstone"),
)


#: Scale (voxels) below which a CT's variation counts as its noise, kept inside a lesion that
#: replaces the tissue (:meth:`Planter.lesion`).
NOISE_SIGMA_VOXELS = 1.0


class Planter:
    """Plants findings into one case (CT array in HU and organ masks, both (z, y, x))."""

    def __init__(
        self,
        ct: np.ndarray,
        organ_masks: dict[str, np.ndarray],
        grid: Grid,
        rng: np.random.Generator,
        finding_mask: np.ndarray,
    ) -> None:
        self.ct = ct
        self.masks = organ_masks
        self.grid = grid
        self.rng = rng
        self.finding_mask = finding_mask
        self.spacing_zyx = np.asarray(grid.spacing)[::-1]
        kji = np.indices(ct.shape, sparse=True)
        self._kji = kji
        # How much of each voxel is tissue a finding put in place of the organ's (0..1): a cyst,
        # stone, duct or mass keeps its attenuation when the liver around it turns fatty.
        self._replaced = np.zeros(ct.shape, np.float32)
        # The fatty liver's drop at each voxel (HU), once planted: a mass planted after it is
        # drawn on the liver's attenuation before the drop.
        self._fat: np.ndarray | None = None
        # Labels of findings that cover a whole organ (fatty liver): a focal finding planted
        # after one takes its voxels in the finding mask, as it would be drawn on that organ.
        self._diffuse: list[int] = []

    def _distance_mm(self, centre_kji: np.ndarray) -> np.ndarray:
        k, j, i = self._kji
        s = self.spacing_zyx
        return np.sqrt(
            ((k - centre_kji[0]) * s[0]) ** 2
            + ((j - centre_kji[1]) * s[1]) ** 2
            + ((i - centre_kji[2]) * s[2]) ** 2
        )

    def _noise(self) -> np.ndarray:
        """The CT's noise: what it holds at scales below :data:`NOISE_SIGMA_VOXELS`. Tissue that
        a finding puts in place of the organ's keeps it, as a real cyst, stone or duct does: a
        flat value (every voxel the same HU) is a cue that no real CT gives a model."""
        return self.ct - ndimage.gaussian_filter(self.ct, NOISE_SIGMA_VOXELS)

    def _centre(self, organ_key: str, radius_mm: float) -> np.ndarray | None:
        """A random voxel deep enough inside the organ for a lesion of this radius."""
        mask = self.masks[organ_key]
        box = ndimage.find_objects(mask.astype(np.uint8))
        if not box or box[0] is None:
            return None
        # The organ's box with a rim of background: the same depths as on the whole CT.
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box[0])
        depth = ndimage.distance_transform_edt(mask[box], sampling=self.spacing_zyx)
        candidates = np.argwhere(depth >= min(radius_mm * 0.8, depth.max() * 0.7))
        if len(candidates) == 0:
            return None
        offset = np.array([b.start for b in box])
        return (candidates[self.rng.integers(len(candidates))] + offset).astype(float)

    def _finish(
        self, organ, side, cls, size, centre_kji, region, contrast, diffuse: bool = False
    ) -> PlantedFinding:
        """Record a finding: its label in the finding mask (a focal one over a diffuse one, else
        the first planted keeps a voxel) and its centre in LPS mm."""
        label = int(self.finding_mask.max()) + 1
        free = self.finding_mask == 0
        if diffuse:
            self._diffuse.append(label)
        elif self._diffuse:
            free |= np.isin(self.finding_mask, self._diffuse)
        self.finding_mask[region & free] = label
        inside = np.argwhere(region)
        if not region[tuple(np.round(centre_kji).astype(int))]:
            # A curved organ's centroid can fall outside it: take the nearest voxel of the finding.
            distances = np.linalg.norm((inside - centre_kji) * self.spacing_zyx, axis=1)
            centre_kji = inside[np.argmin(distances)].astype(float)
        centre = self.grid.index_to_physical([centre_kji[::-1]])[0]
        centre = tuple(float(v) for v in centre)
        return PlantedFinding(organ, side, cls, float(size), centre, label, float(contrast))

    def lesion(
        self,
        organ: str,
        side: str | None,
        cls: str,
        diameter: tuple[float, float],
        value: tuple[float, float],
        soft: bool = False,
        absolute: bool = True,
    ) -> PlantedFinding | None:
        """A round lesion: ``absolute`` sets the HU (cyst, stone; with the CT's noise), else
        adds to the organ's own attenuation (mass: its contrast to a normal liver, which it
        keeps when the liver turns fatty, before or after it is planted)."""
        key = organ_key(organ, side)
        size = float(self.rng.uniform(*diameter))
        radius = size / 2
        centre = self._centre(key, radius)
        if centre is None:
            return None
        distance = self._distance_mm(centre)
        target = float(self.rng.uniform(*value))
        if soft:  # soft edge: full effect inside 0.6 r, fading to nothing at 1.3 r
            weight = np.clip((1.3 * radius - distance) / (0.7 * radius), 0.0, 1.0)
        else:
            weight = (distance <= radius).astype(float)
        region = weight > 0.5
        if absolute:
            contrast = target - float(np.median(self.ct[self.masks[key] > 0]))
            self.ct[:] = self.ct * (1 - weight) + (target + self._noise()) * weight
        else:
            contrast = target
            shift = target if self._fat is None else target - self._fat
            self.ct[:] = self.ct + shift * weight
        # Either kind is tissue in place of the organ's: it keeps its attenuation in a fatty liver.
        np.maximum(self._replaced, weight, out=self._replaced)
        return self._finish(organ, side, cls, size, centre, region, contrast)

    def fatty_liver(self) -> PlantedFinding | None:
        """Lower the liver's attenuation (fatty liver); returns the finding. The parenchyma
        drops; a cyst, calcification or mass planted before keeps its own attenuation, as
        water, calcium and tumour tissue (which holds no hepatocellular fat) do in a fatty
        liver, so a hypoattenuating mass there looks iso- or less hypoattenuating rather than
        water-dense."""
        mask = self.masks["liver"] > 0
        drop = float(self.rng.uniform(-70, -35))
        self._fat = np.zeros(self.ct.shape, np.float32)
        self._fat[mask] = drop * (1.0 - self._replaced[mask])
        self.ct[mask] += self._fat[mask]
        centre = np.argwhere(mask).mean(axis=0)
        return self._finish("liver", None, "fatty_liver", 0.0, centre, mask, drop, diffuse=True)

    def enlarge(self, organ: str, labels: np.ndarray, organ_value: int) -> PlantedFinding | None:
        """Organ enlargement: grow the organ by 4-9 mm, filled with its own attenuation."""
        mask = self.masks[organ] > 0
        grow = float(self.rng.uniform(4, 9))
        radius = np.maximum(np.round(grow / self.spacing_zyx).astype(int), 1)
        # Dilation by a box, as a separable maximum filter: the same voxels as binary_dilation
        # with np.ones(2 * radius + 1), 20x faster.
        size = tuple(int(v) for v in 2 * radius + 1)
        grown = ndimage.maximum_filter(mask.view(np.uint8), size, mode="constant", cval=0) > 0
        body = self.ct > -300  # stay inside soft tissue
        added = grown & ~mask & body
        values = self.ct[mask]
        noise = self.rng.normal(0, float(values.std()) * 0.3, int(added.sum()))
        self.ct[added] = float(np.median(values)) + noise
        labels[added] = organ_value
        self.masks[organ] = (mask | added).astype(np.uint8)
        centre = np.argwhere(mask).mean(axis=0)
        return self._finish(organ, None, "deformation", 2 * grow, centre, added, 0.0)

    def duct(self) -> PlantedFinding | None:
        """Pancreatic duct dilation: a low-density tube along the pancreas' long axis."""
        mask = self.masks["pancreas"] > 0
        kji = np.argwhere(mask)
        if len(kji) < 20:
            return None
        points = kji * self.spacing_zyx
        centre = points.mean(axis=0)
        axis = np.linalg.svd(points - centre, full_matrices=False)[2][0]
        k, j, i = self._kji
        rel = (
            np.stack(
                np.broadcast_arrays(
                    k * self.spacing_zyx[0], j * self.spacing_zyx[1], i * self.spacing_zyx[2]
                ),
                axis=-1,
            )
            - centre
        )
        along = rel @ axis
        across = np.linalg.norm(rel - along[..., None] * axis, axis=-1)
        diameter = float(self.rng.uniform(3.0, 7.0))
        tube = (across <= diameter / 2) & mask
        if tube.sum() < 3:
            return None
        value = float(self.rng.uniform(0, 20))
        self.ct[tube] = value + self._noise()[tube]
        self._replaced[tube] = 1.0
        contrast = value - float(np.median(self.ct[mask]))
        return self._finish(
            "pancreas",
            None,
            "pancreatic_duct_dilation",
            diameter,
            centre / self.spacing_zyx,
            tube,
            contrast,
        )
