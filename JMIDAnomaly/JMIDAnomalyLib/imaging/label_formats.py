"""The formats label tables come in (value -> structure name), one parser each.

:func:`~JMIDAnomalyLib.imaging.label_tables.read_label_names` picks the parser by the file:

- JSON: ``{"1": "liver", ...}`` (TotalSegmentator style) or an nnU-Net ``dataset.json``;
- CSV / TSV with an id column (``id``, ``value``, ``index``, ``label_value`` or ``label``) and a
  name column (``name``, ``structure``, ``label_name``, ``structure_name`` or ``label``);
- Slicer colour tables (``.ctbl``, ``.txt``): ``value name R G B A`` lines, ``#`` comments;
- NIfTI label maps that carry their table in a header extension, as TotalSegmentator writes
  them (a CaretExtension XML ``LabelTable``);
- Slicer segmentations (``.seg.nrrd``): the ``Segment<N>_Name`` / ``_LabelValue`` / ``_Layer``
  fields of the NRRD header.

Label value 0 is background and never part of a table.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError

ID_COLUMNS = ("id", "value", "index", "label_value", "label")
NAME_COLUMNS = ("name", "structure", "label_name", "structure_name", "label")
COLOR_TABLE_SUFFIXES = (".ctbl", ".txt")


def parse_json_table(path: Path, text: str) -> dict[int, str]:
    """``{"1": "liver"}`` or an nnU-Net ``dataset.json`` (``"labels": {"liver": 1}``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        table: dict[int, str] = {}
        for name, value in data["labels"].items():
            values = value if isinstance(value, list) else [value]  # region-based labels
            if len(values) != 1 or not str(values[0]).lstrip("-").isdigit():
                raise InputError(path, f"label '{name}' has no single integer value")
            if int(values[0]) != 0:
                table[int(values[0])] = str(name)
        return table
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        return {int(k): str(v) for k, v in data.items() if int(k) != 0}
    raise InputError(path, 'expected {"1": "liver", ...} or an nnU-Net dataset.json with "labels"')


def parse_csv_table(path: Path, text: str) -> dict[int, str]:
    """A CSV or TSV table with a header naming an id column and a name column."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows:
        raise InputError(path, "the label table is empty")
    header = [h.strip().lower() for h in rows[0]]
    id_col = next((header.index(c) for c in ID_COLUMNS if c in header), None)
    names = [c for c in NAME_COLUMNS if c in header and header.index(c) != id_col]
    if id_col is None or not names:
        raise InputError(
            path,
            f"expected a header with an id column ({', '.join(ID_COLUMNS)}) and a name column "
            f"({', '.join(NAME_COLUMNS)}); found {', '.join(header) or 'nothing'}",
        )
    name_col = header.index(names[0])
    table: dict[int, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            value, name = int(row[id_col]), row[name_col].strip()
        except (ValueError, IndexError):
            raise InputError(path, f"line {number}: no integer id and name") from None
        if value != 0 and name:
            table[value] = name
    return table


def parse_color_table(path: Path, text: str) -> dict[int, str]:
    """A Slicer colour table: ``value name R G B A`` per line, ``#`` starts a comment."""
    table: dict[int, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[0].lstrip("-").isdigit():
            raise InputError(path, f"line {number}: expected 'value name R G B A'")
        if int(fields[0]) != 0 and fields[1] not in ("(none)", "invalid"):
            table[int(fields[0])] = fields[1]
    return table


def nifti_extension_table(path: Path) -> dict[int, str] | None:
    """The table in a NIfTI file's header extensions (a CaretExtension XML ``LabelTable``, as
    TotalSegmentator writes it); None when the file carries none. Reads the header only."""
    try:
        import nibabel as nib  # nibabel 5: header extensions, read without the voxel data
    except ImportError:  # Slicer before its dependencies are installed
        return None

    try:
        header = nib.load(str(path)).header
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(path, f"cannot be read as NIfTI ({exc})") from None
    for extension in getattr(header, "extensions", ()):
        content = extension.get_content()
        if isinstance(content, bytes) and b"<LabelTable" in content:
            return _caret_labels(path, content)
    return None


def _caret_labels(path: Path, content: bytes) -> dict[int, str]:
    try:
        root = ET.fromstring(content.decode("utf-8", errors="replace").strip("\x00 \n"))
    except ET.ParseError as exc:
        raise InputError(path, f"the header's label table is not valid XML ({exc})") from None
    table = {}
    for label in root.iter("Label"):
        key, name = label.get("Key", ""), (label.text or "").strip()
        if key.lstrip("-").isdigit() and int(key) != 0 and name:
            table[int(key)] = name
    return table


def seg_nrrd_segments(fields: dict[str, str]) -> list[dict]:
    """The segments of a Slicer ``.seg.nrrd`` header: name, label value, layer, in file order.

    Args:
        fields: the NRRD header's key/value fields (SimpleITK metadata).
    """
    segments = []
    index = 0
    while f"Segment{index}_Name" in fields:
        prefix = f"Segment{index}_"
        segments.append(
            {
                "name": fields[prefix + "Name"],
                "value": int(fields.get(prefix + "LabelValue", index + 1)),
                "layer": int(fields.get(prefix + "Layer", 0)),
            }
        )
        index += 1
    return segments
