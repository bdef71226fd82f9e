"""Rewrite the script and resource lists of JMIDAnomaly/CMakeLists.txt from the files on disk.

Usage: python scripts/update_cmake_sources.py  (Testing/Python/test_structure.py checks the lists)
"""

from __future__ import annotations

import re
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "JMIDAnomaly"


def main() -> None:
    cmake = MODULE / "CMakeLists.txt"
    text = cmake.read_text(encoding="utf-8")
    lib = MODULE / "JMIDAnomalyLib"
    scripts = sorted(p.relative_to(MODULE).as_posix() for p in lib.rglob("*.py"))
    data = sorted(
        p.relative_to(MODULE).as_posix()
        for pattern in ("*.csv", "*.txt")
        for p in lib.rglob(pattern)
    )
    block = (
        "set(MODULE_PYTHON_SCRIPTS\n  ${MODULE_NAME}.py\n"
        + "".join(f"  {f}\n" for f in scripts)
        + "  )"
    )
    text = re.sub(r"set\(MODULE_PYTHON_SCRIPTS\n.*?\n  \)", block, text, flags=re.S)
    block = (
        "set(MODULE_PYTHON_RESOURCES\n  Resources/Icons/${MODULE_NAME}.png\n"
        "  Resources/UI/${MODULE_NAME}.ui\n" + "".join(f"  {f}\n" for f in data) + "  )"
    )
    text = re.sub(r"set\(MODULE_PYTHON_RESOURCES\n.*?\n  \)", block, text, flags=re.S)
    cmake.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
