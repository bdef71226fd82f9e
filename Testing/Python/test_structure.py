"""The extension's structure: layering rules, the .ui file, CMake lists and the jmid command."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import REPO

CORE = REPO / "JMIDAnomaly" / "JMIDAnomalyLib"
CORE_MODULES = sorted(
    "JMIDAnomalyLib." + p.relative_to(CORE).with_suffix("").as_posix().replace("/", ".")
    for p in CORE.rglob("*.py")
    if p.name != "__init__.py"
)
FORBIDDEN_IMPORTS = (
    "qt", "ctk", "PythonQt", "slicer.util", "slicer.app", "slicer.mrmlScene",
    "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n",
)  # fmt: skip  # a table of names
FORBIDDEN_ATTRIBUTES = (
    "util",
    "app",
    "mrmlScene",
    "ScriptedLoadableModule",
    "parameterNodeWrapper",
    "modules",
)


def test_core_never_imports_qt_or_slicer_application_parts():
    problems = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS):
                    problems.append(f"{path.name}:{node.lineno} imports {name}")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "slicer"
                and node.attr in FORBIDDEN_ATTRIBUTES
            ):
                problems.append(f"{path.name}:{node.lineno} uses slicer.{node.attr}")
    assert not problems, problems


def test_importing_every_core_module_loads_no_gui_module():
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(REPO / 'JMIDAnomaly')!r})\n"
        f"for name in {CORE_MODULES!r}: importlib.import_module(name)\n"
        "import slicer\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'PythonQt')\n"
        "       or m in ('slicer.ScriptedLoadableModule', 'slicer.parameterNodeWrapper',\n"
        "                'slicer.i18n')]\n"
        "bad += [a for a in ('app', 'mrmlScene', 'modules') if hasattr(slicer, a)]\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(CORE_MODULES) >= 8


def _ui_widget_names(path: Path) -> set[str]:
    root = ET.parse(path).getroot()
    return {w.get("name") for w in root.iter("widget")}


def test_every_widget_the_module_uses_exists_in_the_ui_file():
    ui = REPO / "JMIDAnomaly" / "Resources" / "UI" / "JMIDAnomaly.ui"
    names = _ui_widget_names(ui)
    code = (REPO / "JMIDAnomaly" / "JMIDAnomaly.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    assert used, "the module uses no widget?"
    assert used <= names, f"missing in {ui.name}: {sorted(used - names)}"
    # Every widget bound to the parameter node names a real parameter.
    root = ET.parse(ui).getroot()
    bound = {
        p.find("string").text
        for p in root.iter("property")
        if p.get("name") == "SlicerParameterName"
    }
    tree = ast.parse(code)
    params = next(
        {n.target.id for n in c.body if isinstance(n, ast.AnnAssign)}
        for c in ast.walk(tree)
        if isinstance(c, ast.ClassDef) and c.name == "JMIDAnomalyParameterNode"
    )
    assert bound <= params, sorted(bound - params)


def test_module_files_follow_the_slicer_template():
    for module, classes, hidden in (
        (
            "JMIDAnomaly",
            {"JMIDAnomaly", "JMIDAnomalyWidget", "JMIDAnomalyLogic", "JMIDAnomalyTest"},
            False,
        ),
        ("JMIDTrainer", {"JMIDTrainer", "JMIDTrainerLogic", "JMIDTrainerTest"}, True),
    ):
        source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
        tree = ast.parse(source)
        defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        assert classes <= defined, (module, classes - defined)
        assert not any(n.endswith("Widget") for n in defined - classes) and (
            hidden == (f"{module}Widget" not in defined)
        )
        assert ("self.parent.hidden = True" in source) == hidden


def test_cmake_lists_every_script_and_resource():
    cmake = (REPO / "JMIDAnomaly" / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+(JMIDAnomalyLib/\S+\.(?:py|csv|txt))$", cmake, re.M))
    on_disk = {
        p.relative_to(REPO / "JMIDAnomaly").as_posix()
        for pattern in ("*.py", "*.csv", "*.txt")
        for p in CORE.rglob(pattern)
    }
    assert listed == on_disk, {
        "not listed": sorted(on_disk - listed),
        "gone": sorted(listed - on_disk),
    }
    for resource in ("Resources/Icons/JMIDAnomaly.png", "Resources/UI/JMIDAnomaly.ui"):
        assert resource.replace("JMIDAnomaly.", "${MODULE_NAME}.") in cmake
        assert (REPO / "JMIDAnomaly" / resource).is_file()
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(JMIDAnomaly)" in top and "add_subdirectory(JMIDTrainer)" in top
    assert re.search(r'EXTENSION_DEPENDS\s+"?PyTorch', top)
    assert (REPO / "Resources" / "Icons" / "JMIDAnomaly.png").is_file()


def test_jmid_help_lists_the_subcommands(jmid_command):
    result = subprocess.run([*jmid_command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("demo", "fetch-examples", "info", "scene"):
        assert command in result.stdout


def test_code_passes_ruff():
    ruff = Path(sys.executable).with_name("ruff")
    targets = [str(REPO / d) for d in ("JMIDAnomaly", "JMIDTrainer", "Testing", "scripts")]
    for command in ([str(ruff), "check", *targets], [str(ruff), "format", "--check", *targets]):
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_slicer_requirements_agree_with_the_pinned_test_environment(tmp_path):
    from JMIDAnomalyLib.apps.dependencies import missing_requirements, read_requirements
    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    for line in read_requirements():
        requirement = Requirement(line)
        assert requirement.name.lower() in pins, f"{requirement.name} is not pinned for the tests"
        assert requirement.specifier.contains(pins[requirement.name.lower()]), line
    # The test environment satisfies the list; a broken list is reported, not ignored.
    assert missing_requirements() == []
    bad = tmp_path / "requirements.txt"
    bad.write_text("# comment\nnumpy<1.0  # too old\nno-such-package-jmid>=1\n")
    assert [m.split()[0] for m in missing_requirements(bad, include_torch=False)] == [
        "numpy<1.0",
        "no-such-package-jmid>=1",
    ]


def test_extension_index_entry_matches_the_cmake_metadata():
    import json

    entry = json.loads((REPO / "Resources" / "ExtensionIndex" / "JMIDAnomaly.json").read_text())
    assert {"$schema", "category", "scm_url"} <= set(entry)
    allowed = {
        "$schema",
        "build_dependencies",
        "build_subdirectory",
        "category",
        "scm_revision",
        "scm_type",
        "scm_url",
        "tier",
    }
    assert set(entry) <= allowed, "the catalog schema allows no other properties"
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    meta = dict(re.findall(r'set\(EXTENSION_(\w+) "([^"]*)"\)', top))
    assert entry["category"] == meta["CATEGORY"]
    assert entry["build_dependencies"] == meta["DEPENDS"].split()
    assert entry["scm_url"].removesuffix(".git") == meta["HOMEPAGE"]


def _lint_imports(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess:
    """import-linter on the contracts of pyproject.toml, for the JMIDAnomalyLib under
    ``package_parent``."""
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    command = [str(lint), "--no-cache", str(REPO / "pyproject.toml")]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)


def test_layers_hold_and_no_subpackage_has_an_import_cycle(tmp_path):
    result = _lint_imports(REPO / "JMIDAnomaly", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout
    # The same contracts catch an upward import and a cycle (in a copy of the core).
    for module, line in (
        ("common/organs.py", "from JMIDAnomalyLib.apps import trainer"),
        ("imaging/geometry.py", "from JMIDAnomalyLib.imaging import volumes"),
    ):
        copy = tmp_path / module.replace("/", "_")
        shutil.copytree(CORE, copy / "JMIDAnomalyLib", ignore=shutil.ignore_patterns("__pycache__"))
        target = copy / "JMIDAnomalyLib" / module
        target.write_text(target.read_text() + f"\n{line}  # noqa\n")
        result = _lint_imports(copy, tmp_path)
        assert result.returncode != 0 and "broken" in result.stdout, (module, result.stdout)


def test_core_files_and_functions_stay_small():
    """No core file over 400 lines, no function over 60 lines (DESIGN.md: style)."""
    long_files, long_functions = [], []
    for path in CORE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > 400:
            long_files.append(path.relative_to(CORE).as_posix())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 60:
                    long_functions.append(f"{path.relative_to(CORE).as_posix()}:{node.name}")
    assert not long_files and not long_functions, (long_files, long_functions)
    for module in ("JMIDAnomaly/JMIDAnomaly.py", "JMIDTrainer/JMIDTrainer.py"):
        assert len((REPO / module).read_text(encoding="utf-8").splitlines()) < 400, module


def _own_python_files():
    """The project's own Python files: the modules, the trainer, the tests and the scripts."""
    for folder in ("JMIDAnomaly", "JMIDTrainer", "Testing", "scripts"):
        yield from (REPO / folder).rglob("*.py")


def test_no_array_view_of_an_image_nobody_holds():
    """``sitk.GetArrayViewFromImage`` does not keep its image alive: a view of a call's result
    (``GetArrayViewFromImage(read_ct(p))``) reads freed memory once the image is collected (it gave
    a test garbage values on CI and not here). Such a view must be of a named image."""
    temporaries = []
    for path in _own_python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", ""))
                == "GetArrayViewFromImage"
                and node.args
                and isinstance(node.args[0], ast.Call)
            ):
                temporaries.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno}")
    assert not temporaries, temporaries


def test_the_formatter_owns_the_layout():
    """A handful of `fmt: skip` at most, each for a table and saying so."""
    skips = []
    for path in _own_python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            marker = re.search(r"#\s*fmt:\s*(?:skip|off)(.*)$", line)
            if marker:
                skips.append((f"{path.name}:{number}", marker.group(1)))
    assert len(skips) <= 10, skips
    assert all("#" in reason for _, reason in skips), f"each skip says why: {skips}"


def test_public_core_api_is_documented():
    """Every public class, function and method of the core has a docstring."""
    missing = []

    def visit(body, path, prefix=""):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name.startswith("_"):
                    continue
                if ast.get_docstring(node) is None:
                    missing.append(f"{path.relative_to(CORE).as_posix()}:{prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, path, f"{prefix}{node.name}.")

    for path in CORE.rglob("*.py"):
        visit(ast.parse(path.read_text(encoding="utf-8")).body, path)
    assert not missing, missing
