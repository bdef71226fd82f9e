"""The organs the product analyses, their class lists, colours and segmentation-model names.

Class lists follow DESIGN.md (the published reference design); the order is the column order
of label files and model outputs.
"""

from __future__ import annotations

import colorsys
import hashlib

#: Organs in display order.
ORGANS: tuple[str, ...] = (
    "liver",
    "gallbladder",
    "pancreas",
    "spleen",
    "kidney",
    "adrenal",
    "esophagus",
)

#: Organs analysed per side (left and right are separate cases).
SIDED_ORGANS: frozenset[str] = frozenset({"kidney", "adrenal"})

#: Default class keys per organ, in model-output order.
ORGAN_CLASSES: dict[str, tuple[str, ...]] = {
    "liver": (
        "cyst", "fatty_liver", "bile_duct_dilation", "SOL", "deformation", "calcification",
        "pneumobilia", "other_abnormality", "nofinding",
    ),
    "gallbladder": (
        "SOL", "enlargement", "deformation", "gallstone", "wall_thickening", "polyp",
        "other_abnormality", "nofinding",
    ),
    "pancreas": (
        "cyst", "SOL", "enlargement", "atrophy", "calcification", "pancreatic_duct_dilation",
        "other_abnormality", "nofinding",
    ),
    "spleen": ("cyst", "SOL", "deformation", "calcification", "other_abnormality", "nofinding"),
    "kidney": (
        "cyst", "SOL", "enlargement", "atrophy", "deformation", "calcification",
        "other_abnormality", "nofinding",
    ),
    "adrenal": ("SOL", "enlargement", "fat", "calcification", "other_abnormality", "nofinding"),
    "esophagus": ("mass", "hernia", "dilation", "other_abnormality", "nofinding"),
}  # fmt: skip  # the published class table, in its columns

#: Display colours (RGB, 0..1), close to Slicer's terminology colours for these organs.
ORGAN_COLORS: dict[str, tuple[float, float, float]] = {
    "liver": (221 / 255, 130 / 255, 101 / 255),
    "gallbladder": (139 / 255, 150 / 255, 98 / 255),
    "pancreas": (249 / 255, 180 / 255, 111 / 255),
    "spleen": (157 / 255, 108 / 255, 162 / 255),
    "kidney": (185 / 255, 102 / 255, 83 / 255),
    "adrenal": (244 / 255, 214 / 255, 49 / 255),
    "esophagus": (211 / 255, 171 / 255, 143 / 255),
}

#: TotalSegmentator v2 ("total" task) structure names -> (organ, side or None).
TOTALSEGMENTATOR_ORGANS: dict[str, tuple[str, str | None]] = {
    "liver": ("liver", None),
    "gallbladder": ("gallbladder", None),
    "pancreas": ("pancreas", None),
    "spleen": ("spleen", None),
    "kidney_left": ("kidney", "left"),
    "kidney_right": ("kidney", "right"),
    "adrenal_gland_left": ("adrenal", "left"),
    "adrenal_gland_right": ("adrenal", "right"),
    "esophagus": ("esophagus", None),
}


def organ_key(organ: str, side: str | None) -> str:
    """The key of an organ and side: ``liver``, ``kidney_left``, ``adrenal_right``."""
    return f"{organ}_{side}" if side else organ


def structure_color(name: str) -> tuple[float, float, float]:
    """Colour for a segment name: the organ colour when it is one of ours, else a stable hue."""
    organ = TOTALSEGMENTATOR_ORGANS.get(name, (name, None))[0]
    if organ in ORGAN_COLORS:
        return ORGAN_COLORS[organ]
    hue = int(hashlib.sha1(name.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    return colorsys.hsv_to_rgb(hue, 0.55, 0.85)
