"""Patient ids from well-known file names, so splits never leak one patient across sets."""

from __future__ import annotations

import re
from pathlib import PurePath

# (pattern on the file name, how the id is built). Order matters: the first match wins.
_RULES: list[tuple[re.Pattern, str]] = [
    # NIH ChestX-ray14: 00000013_005.png -> "13"
    (re.compile(r"^(\d{8})_\d{3}\.\w+$"), "nih"),
    # Kermany pneumonia: person1_bacteria_1.jpeg, person1003_virus_1685.jpeg -> person1
    (re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+\.\w+$", re.IGNORECASE), "group"),
    # Kermany normal: IM-0115-0001.jpeg -> IM-0115; NORMAL2-IM-0381-0001.jpeg -> NORMAL2-IM-0381;
    # IM-0429-0001-0002.jpeg -> IM-0429
    (re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+\.\w+$", re.IGNORECASE), "group"),
]


def infer_patient(path: str) -> str | None:
    """The patient id encoded in a known file-name scheme, or None when the name is unknown
    (the caller then treats the image as its own patient and says so)."""
    name = PurePath(path).name
    for pattern, kind in _RULES:
        m = pattern.match(name)
        if m:
            return str(int(m.group(1))) if kind == "nih" else m.group(1)
    return None
