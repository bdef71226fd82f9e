"""A content-keyed cache of organ crops, written once per (CT, segmentation, parameters),
with an index that finds an entry without opening the CT.

Each entry is ``<key>.npz`` (images quantised to uint8 over the HU window, masks bit-packed,
zlib-compressed: about 1 MB per organ at the published grid) and ``<key>.json`` (crop records
and statuses), written under temporary names and renamed; the JSON is written last, so an
interrupted write is simply recomputed next time. ``<key>`` is a hash of the voxels and every
setting (:func:`crop_key`).

The index, ``index/<ab>/<fingerprint>.json``, maps a cheap fingerprint of the input files (path,
size and modification time of the CT, the segmentation and its label table, plus the organs and
crop settings: :func:`input_fingerprint`) to the content key, computed once when the entry is
built. A warm cache is read with a few ``stat`` calls per case and no CT read; changing a file
(or the settings) changes the fingerprint, so the case is read and hashed again. ``verify``
rehashes on request. Index files are one per case, each written atomically, so shards building
one cache in parallel never write the same file and need no merge step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGANS
from JMIDAnomalyLib.imaging.crops import CropConfig, OrganCrop, crop_organs
from JMIDAnomalyLib.imaging.geometry import CropRecord, Grid
from JMIDAnomalyLib.imaging.label_tables import default_label_table, read_segmentation
from JMIDAnomalyLib.imaging.volumes import read_ct

#: Bump when crop_organs changes what it produces.
CROP_VERSION = 2


def voxel_digest(ct: sitk.Image, label_map: sitk.Image, names: Mapping[int, str]) -> str:
    """Hash of a case's inputs: both images' grids and voxels and the label table."""
    digest = hashlib.blake2b(digest_size=16)
    for image in (ct, label_map):
        digest.update(json.dumps(Grid.from_image(image).to_dict(), sort_keys=True).encode())
        digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).data)
    digest.update(json.dumps(sorted((int(k), v) for k, v in names.items())).encode())
    return digest.hexdigest()


def settings_key(inputs, organs: tuple[str, ...], config: CropConfig) -> str:
    """A hash of what identifies the inputs (a :func:`voxel_digest`: the entry key; or file
    stamps: the index key, :func:`input_fingerprint`) with the organs, crop settings and
    :data:`CROP_VERSION`."""
    settings = [inputs, list(organs), config.to_dict(), CROP_VERSION]
    return hashlib.blake2b(
        json.dumps(settings, sort_keys=True).encode(), digest_size=16
    ).hexdigest()


def crop_key(
    ct: sitk.Image,
    label_map: sitk.Image,
    names: Mapping[int, str],
    organs: tuple[str, ...],
    config: CropConfig,
) -> str:
    """Content hash of everything a crop depends on."""
    return settings_key(voxel_digest(ct, label_map, names), organs, config)


def _stamp(path: str | os.PathLike) -> list:
    """(absolute path, size, mtime in ns) of a file; of each file for a folder (DICOM)."""
    path = Path(path).absolute()
    try:
        info = path.stat()
        if not path.is_dir():
            return [str(path), info.st_size, info.st_mtime_ns]
        with os.scandir(path) as entries:
            found = [(e.name, e.stat()) for e in entries if e.is_file()]
        files = sorted((name, st.st_size, st.st_mtime_ns) for name, st in found)
    except FileNotFoundError:
        raise InputError(path, "no such file or folder") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from None
    return [str(path), files]


@dataclass(frozen=True)
class CropInputs:
    """The files one case's crops come from: the CT, its segmentation and the label table
    (empty: the segmentation's own, or the JSON beside it)."""

    ct: str
    seg: str
    seg_labels: str = ""

    def stamps(self) -> dict:
        """:func:`_stamp` of every input file (the label table beside ``seg`` when there is
        one and none is given)."""
        if not self.seg:
            raise InputError(
                self.ct, "no segmentation for this CT (run jmid segment, or fill the seg column)"
            )
        table = self.seg_labels or default_label_table(Path(self.seg))
        return {
            "ct": _stamp(self.ct),
            "seg": _stamp(self.seg),
            "seg_labels": _stamp(table) if Path(table).exists() or self.seg_labels else None,
        }


def input_fingerprint(stamps: Mapping, organs: tuple[str, ...], config: CropConfig) -> str:
    """The index key: a hash of the file stamps, the organs, the crop settings and version."""
    return settings_key(stamps, organs, config)


@dataclass(frozen=True)
class CropRef:
    """Where one crop's image lies in the cache: a member of its entry's ``.npz``, deflated on
    its own, so reading it decompresses nothing else (4 MB at the published grid as uint8; about
    1 MB on disk). Training datasets hold these, not the pixels."""

    npz: str
    member: str
    shape_zyx: tuple[int, int, int]

    def read(self) -> np.ndarray:
        """The (Z, Y, X) float32 image in -1..1."""
        with np.load(self.npz) as data:
            return _dequantise(data[self.member])


def _quantise(image: np.ndarray) -> np.ndarray:
    return np.round((image + 1.0) * 127.5).astype(np.uint8)


def _dequantise(data: np.ndarray) -> np.ndarray:
    return data.astype(np.float32) / 127.5 - 1.0


class CropCache:
    """Crops on disk under ``root``; :meth:`get` computes and stores on a miss."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def index_path(self, fingerprint: str) -> Path:
        """The index file of one fingerprint (two-character subfolders keep folders small)."""
        return self.root / "index" / fingerprint[:2] / f"{fingerprint}.json"

    def indexed_key(self, fingerprint: str) -> str | None:
        """The content key the index holds for ``fingerprint`` when its entry is complete."""
        try:
            key = json.loads(self.index_path(fingerprint).read_text(encoding="utf-8"))["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return key if self.has(key) else None

    def resolve(
        self, inputs: CropInputs, organs: tuple[str, ...], config: CropConfig
    ) -> str | None:
        """The content key of a warm case, from file stamps only (no CT opened); else None."""
        return self.indexed_key(input_fingerprint(inputs.stamps(), organs, config))

    def case(
        self,
        inputs: CropInputs,
        organ_sets: list[tuple[str, ...]],
        config: CropConfig | None = None,
        verify: bool = False,
        arrays: bool = True,
    ) -> list[tuple[list[OrganCrop] | None, str]]:
        """The crops of one case for each organ set (as read back from the cache, or None
        without ``arrays``), and where each came from.

        The index answers without reading the CT (``"index"``); otherwise, or with ``verify``,
        the CT and segmentation are read once and hashed: ``"verified"`` (the index was
        right), ``"stale"`` (it was not: the entry is rebuilt), ``"content"`` (found by content,
        index written), ``"computed"`` (cropped now).
        """
        config = config or CropConfig()
        stamps = inputs.stamps()
        results: list[tuple[list[OrganCrop] | None, str] | None] = []
        fingerprints = [input_fingerprint(stamps, organs, config) for organs in organ_sets]
        indexed = [self.indexed_key(fingerprint) for fingerprint in fingerprints]
        for key in indexed:
            crops = self.load(key) if key and arrays and not verify else None
            found = key and not verify and (crops is not None or not arrays)
            results.append((crops, "index") if found else None)
        if all(results):
            return results  # type: ignore[return-value]
        ct = read_ct(inputs.ct)
        label_map, names = read_segmentation(inputs.seg, ct, inputs.seg_labels or None)
        voxels = voxel_digest(ct, label_map, names)  # hashed once for every organ set
        keys = [settings_key(voxels, organs, config) for organs in organ_sets]
        missing = [i for i, key in enumerate(keys) if results[i] is None and not self.has(key)]
        wanted = tuple(dict.fromkeys(o for i in missing for o in organ_sets[i]))
        # One crop_organs call for every organ still missing (one pass over the label map).
        cropped = crop_organs(ct, label_map, names, wanted, config) if wanted else []
        for i, organs in enumerate(organ_sets):
            if results[i] is not None:
                continue
            crops = [c for organ in organs for c in cropped if c.organ == organ]
            if i in missing:
                self.store(keys[i], crops)
            entry = (keys[i], fingerprints[i], indexed[i])
            results[i] = self._index_entry(*entry, computed=i in missing, arrays=arrays)
        return results  # type: ignore[return-value]

    def _index_entry(
        self, key: str, fingerprint: str, indexed: str | None, computed: bool, arrays: bool
    ):
        """Index ``fingerprint`` to ``key`` (whose entry exists; ``indexed``: what the index
        held before); the crops and their source."""
        crops = self.load(key) if arrays else None
        source = "computed" if computed else "content"
        if indexed == key:
            source = "verified"
        elif indexed is not None:
            source = "stale"  # the files changed under an unchanged stamp: rebuilt
        if source != "verified":
            with atomic_output(self.index_path(fingerprint)) as tmp:
                tmp.write_text(json.dumps({"key": key}), encoding="utf-8")
        return crops, source

    def has(self, key: str) -> bool:
        """Whether the entry ``key`` is complete."""
        return all(p.exists() for p in self.paths(key))

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
        entries = self.refs(key)
        if entries is None:
            return None
        with np.load(self.paths(key)[0]) as data:
            for crop, ref in entries:
                if ref is not None:
                    shape = ref.shape_zyx
                    crop.image = _dequantise(data[ref.member])
                    bits = np.unpackbits(data[f"mask_{crop.key}"])[: int(np.prod(shape))]
                    crop.mask = bits.reshape(shape).astype(np.uint8)
        return [crop for crop, _ in entries]

    def refs(self, key: str) -> list[tuple[OrganCrop, CropRef | None]] | None:
        """The crops under ``key`` without their arrays (records and statuses, from the JSON
        only), each with where its image lies; None when the entry is missing or incomplete."""
        if not self.has(key):
            return None
        npz, meta = self.paths(key)
        out = []
        for s in json.loads(meta.read_text(encoding="utf-8")):
            crop = OrganCrop(
                s["organ"], s["side"], s["status"], s["volume_ml"], message=s["message"]
            )
            ref = None
            if "record" in s:
                crop.record = CropRecord.from_dict(s["record"])
                ref = CropRef(str(npz), f"image_{crop.key}", tuple(crop.record.crop.shape_zyx))
            out.append((crop, ref))
        return out

    def case_refs(
        self, inputs: CropInputs, organs: tuple[str, ...], config: CropConfig
    ) -> list[tuple[OrganCrop, CropRef | None]]:
        """:meth:`refs` of one case's entry: from the index when warm (no CT opened, no array
        read), else built first (:meth:`case`)."""
        fingerprint = input_fingerprint(inputs.stamps(), organs, config)
        key = self.indexed_key(fingerprint)
        if key is None:
            self.case(inputs, [organs], config, arrays=False)
            key = self.indexed_key(fingerprint)
        entries = self.refs(key) if key else None
        if entries is None:
            raise InputError(self.root, f"the cache entry of {inputs.ct} vanished while read")
        return entries
