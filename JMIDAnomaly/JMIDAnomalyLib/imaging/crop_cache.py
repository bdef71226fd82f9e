"""A content-keyed cache of organ crops, written once per (CT, segmentation, parameters).

Each entry is ``<key>.npz`` (images quantised to uint8 over the HU window, masks bit-packed,
zlib-compressed: about 1 MB per organ at the published grid) and ``<key>.json`` (crop records
and statuses), written under temporary names and renamed; the JSON is written last, so an
interrupted write is simply recomputed next time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.organs import ORGANS
from JMIDAnomalyLib.imaging.crops import CropConfig, OrganCrop, crop_organs
from JMIDAnomalyLib.imaging.geometry import CropRecord, Grid

#: Bump when crop_organs changes what it produces.
CROP_VERSION = 2


def crop_key(
    ct: sitk.Image,
    label_map: sitk.Image,
    names: Mapping[int, str],
    organs: tuple[str, ...],
    config: CropConfig,
) -> str:
    """Content hash of everything a crop depends on."""
    digest = hashlib.blake2b(digest_size=16)
    for image in (ct, label_map):
        digest.update(json.dumps(Grid.from_image(image).to_dict(), sort_keys=True).encode())
        digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).data)
    digest.update(json.dumps(sorted((int(k), v) for k, v in names.items())).encode())
    digest.update(
        json.dumps([list(organs), config.to_dict(), CROP_VERSION], sort_keys=True).encode()
    )
    return digest.hexdigest()


def _quantise(image: np.ndarray) -> np.ndarray:
    return np.round((image + 1.0) * 127.5).astype(np.uint8)


def _dequantise(data: np.ndarray) -> np.ndarray:
    return data.astype(np.float32) / 127.5 - 1.0


class CropCache:
    """Crops on disk under ``root``; :meth:`get` computes and stores on a miss."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def paths(self, key: str) -> tuple[Path, Path]:
        """The entry's files: ``<key>.npz`` (arrays) and ``<key>.json`` (records)."""
        return self.root / f"{key}.npz", self.root / f"{key}.json"

    def get(
        self,
        ct: sitk.Image,
        label_map: sitk.Image,
        names: Mapping[int, str],
        organs: tuple[str, ...] = ORGANS,
        config: CropConfig | None = None,
    ) -> tuple[list[OrganCrop], bool]:
        """The crops of one case, and whether they came from the cache."""
        config = config or CropConfig()
        key = crop_key(ct, label_map, names, organs, config)
        cached = self.load(key)
        if cached is not None:
            return cached, True
        crops = crop_organs(ct, label_map, names, organs, config)
        self.store(key, crops)
        return crops, False

    def store(self, key: str, crops: list[OrganCrop]) -> None:
        """Write one case's crops under ``key`` (arrays first, the JSON last, each atomically)."""
        arrays: dict[str, np.ndarray] = {}
        for crop in crops:
            if crop.image is not None:
                arrays[f"image_{crop.key}"] = _quantise(crop.image)
                arrays[f"mask_{crop.key}"] = np.packbits(crop.mask.astype(bool))
        npz, meta = self.paths(key)
        with atomic_output(npz) as tmp:
            with tmp.open("wb") as f:
                np.savez_compressed(f, **arrays)
        with atomic_output(meta) as tmp:
            tmp.write_text(json.dumps([c.summary() for c in crops], indent=1), encoding="utf-8")

    def load(self, key: str) -> list[OrganCrop] | None:
        """The crops stored under ``key``, or None when the entry is missing or incomplete."""
        npz, meta = self.paths(key)
        if not meta.exists() or not npz.exists():
            return None
        summaries = json.loads(meta.read_text(encoding="utf-8"))
        crops = []
        with np.load(npz) as data:
            for s in summaries:
                crop = OrganCrop(
                    s["organ"], s["side"], s["status"], s["volume_ml"], message=s["message"]
                )
                if "record" in s:
                    crop.record = CropRecord.from_dict(s["record"])
                    shape = crop.record.crop.shape_zyx
                    crop.image = _dequantise(data[f"image_{crop.key}"])
                    bits = np.unpackbits(data[f"mask_{crop.key}"])[: int(np.prod(shape))]
                    crop.mask = bits.reshape(shape).astype(np.uint8)
                crops.append(crop)
        return crops
