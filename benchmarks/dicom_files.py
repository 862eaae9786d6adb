"""DICOM files nobody here wrote (issue 22): every .dcm of pydicom's own test data and of the pydicom-data
package (`pip install pydicom-data`, its `data_store/data`), read by cxrlab's reader at 64 px.

Prints a markdown table (file, transfer syntax, photometric interpretation, modality, decoded or refused with
the message) per source and the counts, for BENCHMARKS.md.

Run: python benchmarks/dicom_files.py
"""

from __future__ import annotations

import glob
import os
import sys
import warnings

import pydicom

from cxrlab.data.images import read_image
from cxrlab.errors import ImageReadError


def folders() -> dict[str, str]:
    from pydicom.data import get_testdata_file

    found = {"pydicom " + pydicom.__version__: os.path.dirname(get_testdata_file("CT_small.dcm"))}
    try:
        import data_store  # the pydicom-data package

        found["pydicom-data " + getattr(data_store, "__version__", "")] = os.path.join(os.path.dirname(data_store.__file__), "data")
    except ImportError:
        print("pydicom-data is not installed: pip install pydicom-data", file=sys.stderr)
    return found


def outcome(path: str) -> tuple[str, str, str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        syntax = ds.file_meta.TransferSyntaxUID.name if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else "?"
        photometric, modality = str(getattr(ds, "PhotometricInterpretation", "")), str(getattr(ds, "Modality", ""))
    except Exception as exc:
        syntax, photometric, modality = f"unreadable header ({exc.__class__.__name__})", "", ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_image(path, 64)
        result = "decoded"
    except ImageReadError as exc:
        result = "refused: " + exc.reason.replace("|", "/")
    return syntax, photometric, modality, result


def main() -> None:
    for source, folder in folders().items():
        rows = [(os.path.basename(p), *outcome(p)) for p in sorted(glob.glob(os.path.join(folder, "*.dcm")))]
        decoded = sum(r[-1] == "decoded" for r in rows)
        print(f"\n### {source}: {decoded} of {len(rows)} decoded\n")
        print("| file | transfer syntax | photometric | modality | cxrlab |\n|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
