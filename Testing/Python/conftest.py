"""Shared fixtures: the real example CTs (fetched once into the cache) and small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Tests run against the source tree even before `pip install -e .`.
sys.path.insert(0, str(REPO / "JMIDAnomaly"))

from JMIDAnomalyLib.demo.reference_data import ReferenceData, fetch_reference_data  # noqa: E402


@pytest.fixture(scope="session")
def reference_data() -> ReferenceData:
    """The TotalSegmentator example data (downloaded on first use, then cached)."""
    return fetch_reference_data()


@pytest.fixture(scope="session")
def example_ct(reference_data):
    """The abdominal CT (122x101x112, 3 mm) as a float32 SimpleITK image in HU."""
    from JMIDAnomalyLib.imaging.volumes import read_ct

    return read_ct(reference_data.ct)


@pytest.fixture(scope="session")
def example_seg(reference_data, example_ct):
    """Its TotalSegmentator v2 label map, on the CT's grid."""
    from JMIDAnomalyLib.imaging.volumes import read_label_map

    return read_label_map(reference_data.ct_seg, reference=example_ct)


@pytest.fixture(scope="session")
def label_names(reference_data) -> dict[int, str]:
    return reference_data.label_names()


@pytest.fixture(scope="session")
def small_ct(reference_data):
    from JMIDAnomalyLib.imaging.volumes import read_ct

    return read_ct(reference_data.ct_small)


@pytest.fixture(scope="session")
def dicom_dir(reference_data) -> Path:
    return reference_data.dicom_dir


@pytest.fixture(scope="session")
def tiny_model(reference_data) -> Path:
    """A real nnU-Net v2 model folder (tiny_nnunet.py), trained once and cached."""
    from tiny_nnunet import cached_model

    return cached_model()


def _jmid_script() -> list[str]:
    script = Path(sys.executable).with_name("jmid")
    if not script.exists():
        pytest.fail(
            f"the jmid command is not installed beside {sys.executable}; run scripts/setup.sh"
        )
    return [str(script)]


@pytest.fixture
def jmid_command() -> list[str]:
    """The installed `jmid` console script (beside this Python), as a command list."""
    return _jmid_script()


DEMO_ARGS = [
    *("--cases", "24", "--seed", "1", "--folds", "2", "--epochs", "1", "--holdout", "1"),
    *("--other-cases", "4"),
]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The main job run once at a reduced size through the installed `jmid demo` (the demo
    test checks it; the module-Logic tests use its bundle, cohort and predictions).

    Returns:
        (command, output folder, the finished process).
    """
    import subprocess

    out = tmp_path_factory.mktemp("demo") / "demo"
    command = [*_jmid_script(), "demo", "--out", str(out), *DEMO_ARGS]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return command, out, result


@pytest.fixture(autouse=True)
def _quiet_vtk_warnings():
    """VTK logs to stderr; keep test output readable."""
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()
    yield


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
