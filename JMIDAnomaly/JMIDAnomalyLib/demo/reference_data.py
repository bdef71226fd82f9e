"""Real abdominal CTs for tests, benchmarks and the demo, from TotalSegmentator's sources.

The TotalSegmentator source distribution on PyPI (Apache-2.0) carries real CTs with organ label
maps under ``tests/reference_files/``. :func:`fetch_reference_data` downloads it once with pip,
extracts the files we use into a cache outside git, and writes ``labels_total_v2.json`` (label
value -> structure name of the "total" task) from the package's own class map.

Cache folder: ``$JMID_CACHE_DIR`` or ``~/.cache/jmid``. To work offline, point
``$JMID_REFERENCE_SDIST`` at a downloaded ``totalsegmentator-2.18.0.tar.gz``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import JMIDError

logger = logging.getLogger(__name__)

TOTALSEGMENTATOR_VERSION = "2.18.0"
_PREFIX = f"totalsegmentator-{TOTALSEGMENTATOR_VERSION}/"
_WANTED = (
    "tests/reference_files/example_ct.nii.gz",
    "tests/reference_files/example_seg_fast_force_split.nii.gz",
    "tests/reference_files/example_ct_sm.nii.gz",
    "tests/reference_files/example_seg.nii.gz",
    "tests/reference_files/example_mr_sm.nii.gz",
    "tests/reference_files/example_seg_dicom.nii.gz",
    "tests/reference_files/example_ct_dicom/",
    "LICENSE",
)
_CLASS_MAP_FILE = "totalsegmentator/map_to_binary.py"


@dataclass(frozen=True)
class ReferenceData:
    """Paths of the real example data (all under one cache folder).

    Attributes:
        ct: abdominal CT, 122x101x112 voxels at 3 mm.
        ct_seg: its TotalSegmentator v2 label map (117 structures, "fast" model).
        ct_small: a 30-slice part of the same CT.
        ct_small_seg: its label map.
        dicom_dir: a 20-slice DICOM CT series (a different patient), 0.98x0.98x2 mm.
        dicom_seg: TotalSegmentator's NIfTI label map of the DICOM series (same physical grid).
        mr_small: an MR volume (for rejection tests).
        labels_json: label value -> structure name of the "total" task.
    """

    root: Path

    @property
    def ct(self) -> Path:
        """The abdominal CT (122x101x112, 3 mm), NIfTI."""
        return self.root / "example_ct.nii.gz"

    @property
    def ct_seg(self) -> Path:
        """Its TotalSegmentator label map (fast, force split), on the CT's grid."""
        return self.root / "example_seg_fast_force_split.nii.gz"

    @property
    def ct_small(self) -> Path:
        """The small CT (122x101x30), NIfTI."""
        return self.root / "example_ct_sm.nii.gz"

    @property
    def ct_small_seg(self) -> Path:
        """Its TotalSegmentator label map with the label names embedded."""
        return self.root / "example_seg.nii.gz"

    @property
    def dicom_dir(self) -> Path:
        """The 20-slice DICOM series folder."""
        return self.root / "example_ct_dicom"

    @property
    def dicom_seg(self) -> Path:
        """The DICOM series' organ label map."""
        return self.root / "example_seg_dicom.nii.gz"

    @property
    def mr_small(self) -> Path:
        """A small MR volume (not a CT: the HU checks refuse it)."""
        return self.root / "example_mr_sm.nii.gz"

    @property
    def labels_json(self) -> Path:
        """TotalSegmentator v2's label table (value -> structure name JSON)."""
        return self.root / "labels_total_v2.json"

    def label_names(self) -> dict[int, str]:
        """Label value -> TotalSegmentator v2 structure name."""
        data = json.loads(self.labels_json.read_text(encoding="utf-8"))
        return {int(k): v for k, v in data.items()}


def cache_dir() -> Path:
    """The cache folder for downloaded reference data."""
    env = os.environ.get("JMID_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "jmid"


def _download_sdist(target_dir: Path) -> Path:
    local = os.environ.get("JMID_REFERENCE_SDIST")
    if local:
        if not Path(local).is_file():
            raise JMIDError(f"{local}: JMID_REFERENCE_SDIST does not name a file")
        return Path(local)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(target_dir),
        f"totalsegmentator=={TOTALSEGMENTATOR_VERSION}",
    ]
    logger.info(
        "downloading totalsegmentator==%s (source) for its example CTs", TOTALSEGMENTATOR_VERSION
    )
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(target_dir.glob("totalsegmentator-*.tar.gz"))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise JMIDError(
            f"could not download totalsegmentator=={TOTALSEGMENTATOR_VERSION} from the package "
            f"registry (is it reachable?); pip said: {' | '.join(tail)}. Offline, set "
            "JMID_REFERENCE_SDIST to a downloaded totalsegmentator-2.18.0.tar.gz"
        )
    return found[0]


def _total_class_map(source: str) -> dict[int, str]:
    """Read class_map['total'] from map_to_binary.py without executing it."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "class_map" for t in node.targets
        ):
            mapping = ast.literal_eval(node.value)
            return {int(k): str(v) for k, v in mapping["total"].items()}
    raise JMIDError("the TotalSegmentator source has no class_map")


def _extract(sdist: Path, out: Path) -> None:
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix(_PREFIX)
                if not member.isfile():
                    continue
                if name == _CLASS_MAP_FILE:
                    text = tar.extractfile(member).read().decode("utf-8")
                    labels = _total_class_map(text)
                    (out / "labels_total_v2.json").write_text(
                        json.dumps(labels, indent=1, sort_keys=False), encoding="utf-8"
                    )
                    continue
                if not any(name == w or (w.endswith("/") and name.startswith(w)) for w in _WANTED):
                    continue
                relative = name.removeprefix("tests/reference_files/")
                target = out / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise JMIDError(
            f"{sdist}: not a readable TotalSegmentator source archive ({exc})"
        ) from None


def fetch_reference_data(cache: Path | None = None) -> ReferenceData:
    """Return the reference data, downloading and extracting it on first use.

    Raises:
        JMIDError: the registry is unreachable or the archive is unusable.
    """
    root = (cache or cache_dir()) / f"totalsegmentator-{TOTALSEGMENTATOR_VERSION}"
    data = ReferenceData(root)
    if (root / ".complete").exists():
        return data
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as download:
        sdist = _download_sdist(Path(download))
        with atomic_output(root, is_dir=True) as tmp:
            _extract(sdist, tmp)
            missing = [
                w for w in _WANTED if not (tmp / w.removeprefix("tests/reference_files/")).exists()
            ]
            if missing or not (tmp / "labels_total_v2.json").exists():
                raise JMIDError(f"{sdist}: the archive lacks {missing or ['the class map']}")
            (tmp / ".complete").write_text(TOTALSEGMENTATOR_VERSION)
    return data
