"""dcmtk's `dcmdump` as a second, independent parser of our outputs.

pydicom reads a source and its copy the same way, right or wrong; dcmtk
does not share its dictionary, its private tag handling or its value
conversions, so agreement between the two dumps is evidence about bytes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

DCMDUMP = shutil.which("dcmdump")
_LINE = re.compile(r"^(?P<indent> *)\((?P<tag>[0-9a-f]{4},[0-9a-f]{4})\) (?P<vr>\S\S) (?P<value>.*?)\s*#\s*"
                   r"(?P<length>\S+), (?P<vm>\d+) (?P<name>\S+)$")
#: Structure lines: their lengths are recomputed when the content is re-encoded.
_STRUCTURE_VRS = {"SQ", "na", "pi"}


@dataclass(frozen=True)
class Element:
    """One line of a dump: where it sits (the tags from the top), VR, value as
    dcmdump prints it, and value length (`u/l` for undefined)."""

    path: tuple[str, ...]
    vr: str
    value: str
    length: str

    @property
    def tag(self) -> str:
        return self.path[-1]


def require_dcmdump() -> str:
    if DCMDUMP is None:
        pytest.skip("dcmtk's dcmdump is not installed (Debian package dcmtk)")
    return DCMDUMP


def dump(path: Path, *options: str) -> list[Element]:
    """The data set of `path` (File Meta left out) as dcmdump reads it,
    every value printed whole. Raises if dcmdump reports an error."""
    run = subprocess.run([require_dcmdump(), "+L", *options, str(path)], capture_output=True, text=True,
                         errors="replace", check=False, timeout=60)
    if run.returncode != 0:
        raise AssertionError(f"dcmdump failed on {path}: {run.stderr.strip()}")
    lines = run.stdout.splitlines()
    start = lines.index("# Dicom-Data-Set") if "# Dicom-Data-Set" in lines else 0
    elements, stack = [], []
    for line in lines[start:]:
        match = _LINE.match(line)
        if match is None:
            continue
        depth = len(match["indent"]) // 2
        stack[depth:] = [match["tag"]]
        elements.append(Element(tuple(stack), match["vr"], match["value"], match["length"]))
    return elements


def data_set_view(elements: list[Element]) -> list[Element]:
    """What must match between a source and its transcoded copy: every
    element but the Pixel Data encapsulation and group lengths (retired,
    recalculated), with the lengths of sequences and items left
    out (recomputed where the encoding of their content changed)."""
    view = []
    for element in elements:
        top = element.path[0]
        if top in ("7fe0,0001", "7fe0,0002", "7fe0,0003", "7fe0,0010") or element.tag.endswith(",0000"):
            continue
        if element.tag in ("fffe,e00d", "fffe,e0dd"):  # delimiters: structure, like lengths
            continue
        if element.vr in _STRUCTURE_VRS:
            element = Element(element.path, element.vr, "", "")
        view.append(element)
    return view
