"""Sources -> Manifest: one row per image with its path, labels, patient and given split.

Supported layouts: class folders (flat or train/val/test), NIH-style CSV manifests, HDF5 arrays
(`image`, `label`) and DICOM files anywhere an image file may be.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .images import DICOM_SUFFIXES, H5_SEP, is_image_file
from .patients import infer_patient

LABEL_SEP = "|"
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_FILES = {"thumbs.db", "desktop.ini"}
COLUMNS = ["path", "labels", "patient", "patient_source", "split", "view"]


@dataclass
class Manifest:
    """All images of a source. `labels` is a '|'-joined set (multi-label kept for later work);
    `patient_source` says where the patient id came from: csv, dicom, filename, or image
    (unknown: one image = one patient); `split` is the split the source gave, or ''."""

    frame: pd.DataFrame
    kind: str
    root: str
    skipped: list[dict] = field(default_factory=list)

    def label_counts(self) -> dict[str, int]:
        counts = self.frame["labels"].str.split(LABEL_SEP).explode().value_counts()
        return {str(k): int(v) for k, v in counts.sort_index().items()}

    @property
    def presplit(self) -> bool:
        return bool((self.frame["split"] != "").any())


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def _patient_for(path: Path) -> tuple[str, str, str]:
    """(patient id, where it came from, view position: PA, AP, LL ... or '' when the file does not say)."""
    view = ""
    if path.suffix.lower() in DICOM_SUFFIXES:
        pid, view = _dicom_meta(path)
        if pid:
            return pid, "dicom", view
    pid = infer_patient(path.name)
    return (pid, "filename", view) if pid else (path.stem, "image", view)


def _dicom_meta(path: Path) -> tuple[str | None, str]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "ViewPosition"])
    except Exception:
        return None, ""  # unreadable: the decoder reports it with the reason
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    return pid or None, str(getattr(ds, "ViewPosition", "") or "").strip().upper()


def _skip_or_raise(path, reason: str, on_bad: str, skipped: list[dict]) -> None:
    if on_bad == "error":
        raise DataError(f"{path}: {reason}. Remove it, or pass --on-bad-image skip to leave it out.")
    skipped.append({"path": str(path), "reason": reason})


def _visible(entries) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith(".") and p.name.lower() not in IGNORED_FILES)


def _class_rows(class_dir: Path, split: str, on_bad: str, skipped: list[dict]) -> list[dict]:
    rows = []
    for path in _visible(p for p in class_dir.rglob("*") if p.is_file() or p.is_symlink()):
        if not path.exists():  # a symlink whose target is missing, or a loop: unreadable, never dropped
            _skip_or_raise(path, "a broken symbolic link (its target is missing or it loops)", on_bad, skipped)
            continue
        if path.is_dir():
            continue  # a symlink to a folder: rglob does not descend into it
        if not is_image_file(path):
            _skip_or_raise(path, f"not an image file (suffix {path.suffix or 'none'})", on_bad, skipped)
            continue
        patient, how, view = _patient_for(path)
        rows.append({"path": str(path), "labels": class_dir.name, "patient": patient,
                     "patient_source": how, "split": split, "view": view})
    if not rows:
        raise DataError(f"class folder {class_dir} has no images. Add images or remove the folder.")
    return rows


def from_folders(root: str | Path, on_bad: str = "error") -> Manifest:
    """ROOT/<class>/* (the lesson's chest_xrays/effusion, normal) or ROOT/{train,val,test}/<class>/*."""
    root = Path(root).resolve()
    subdirs = _visible(p for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise DataError(f"{root}: no class folders found. Expected ROOT/<class>/<images> "
                        "or ROOT/train|val|test/<class>/<images>.")
    skipped: list[dict] = []
    rows: list[dict] = []
    presplit = any(d.name.lower() in SPLIT_NAMES for d in subdirs)
    if presplit:
        for split_dir in subdirs:
            split = SPLIT_NAMES.get(split_dir.name.lower())
            if split is None:
                raise DataError(f"{split_dir}: unexpected folder beside train/val/test; "
                                "move it out or use a flat ROOT/<class>/ layout.")
            for class_dir in _visible(p for p in split_dir.iterdir() if p.is_dir()):
                rows += _class_rows(class_dir, split, on_bad, skipped)
    else:
        for class_dir in subdirs:
            rows += _class_rows(class_dir, "", on_bad, skipped)
    frame = _frame(rows)
    if frame["labels"].nunique() < 2:
        raise DataError(f"{root}: only one class ({frame['labels'].iat[0]}); a classifier needs at "
                        "least two class folders, for example normal/ and effusion/.")
    return Manifest(frame, "folders-presplit" if presplit else "folders", str(root), skipped)


def _index_images(images_dir: Path) -> dict[str, str]:
    """file name -> path for every file below images_dir (the full NIH set nests images_001/images/...)."""
    found: dict[str, str] = {}
    for dirpath, _, files in os.walk(images_dir):
        for name in files:
            found.setdefault(name, os.path.join(dirpath, name))
    return found


LABEL_COLUMNS = ("Image Index", "Finding Labels")
BOX_COLUMNS = ("Image Index", "Finding Label")  # and 'Bbox [x' (NIH's header) or plain 'x'


def _csv_header(path: Path) -> list[str]:
    """The first row's column names. Only the first line is decoded, leniently: detection must not
    fail on an encoding problem further down, which `from_csv` then reports with the file's name."""
    import csv

    with open(path, "rb") as f:
        line = f.readline().decode("utf-8-sig", errors="replace")
    return [c.strip() for c in next(csv.reader([line]), [])]


def csv_kind(path: str | Path) -> str | None:
    """'labels' (NIH Data_Entry_2017 layout), 'boxes' (NIH BBox_List_2017 layout) or None."""
    header = _csv_header(Path(path))
    if all(c in header for c in LABEL_COLUMNS):
        return "labels"
    if all(c in header for c in BOX_COLUMNS) and ("Bbox [x" in header or "x" in header):
        return "boxes"
    return None


def find_boxes_csv(source: str | Path) -> Path | None:
    """The NIH-style boxes file of a CSV source: the folder's (or the labels file's folder's)
    one CSV in the BBox_List_2017 layout, as NIH's download keeps it beside Data_Entry_2017.csv."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    found = [p for p in sorted(folder.glob("*.csv")) if csv_kind(p) == "boxes"]
    if len(found) > 1:
        raise DataError(f"{folder}: several box CSVs ({', '.join(p.name for p in found)}); give one with --boxes.")
    return found[0] if found else None


def from_csv(csv_path: str | Path, images_dir: str | Path | None = None, on_bad: str = "error") -> Manifest:
    """NIH-style manifest: `Image Index`, `Finding Labels` ('|'-separated), `Patient ID`, and `View
    Position` when present (the full Data_Entry_2017.csv has it). Other columns are ignored."""
    csv_path = Path(csv_path).resolve()
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8.") from None
    except Exception as exc:
        raise DataError(f"{csv_path}: cannot read CSV ({exc})") from None
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {list(table.columns)}. "
                        "An NIH-style CSV needs 'Image Index' and 'Finding Labels' (and 'Patient ID').")
    if images_dir is None:
        images_dir = csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent
    images_dir = Path(images_dir).resolve()
    if not images_dir.is_dir():
        raise DataError(f"images folder {images_dir} does not exist; pass --images DIR.")
    index = _index_images(images_dir)
    skipped: list[dict] = []
    rows = []
    missing_files = []
    for rec in table.to_dict("records"):
        name = rec["Image Index"].strip()
        path = index.get(name)
        if path is None:
            missing_files.append(name)
            continue
        labels = sorted({s.strip() for s in rec["Finding Labels"].split(LABEL_SEP) if s.strip()})
        if not labels:
            _skip_or_raise(path, "empty 'Finding Labels'", on_bad, skipped)
            continue
        pid = str(rec.get("Patient ID", "")).strip()
        how = "csv" if pid else "filename"
        if not pid:
            pid = infer_patient(name)
            how = "filename" if pid else "image"
            pid = pid or Path(name).stem
        rows.append({"path": path, "labels": LABEL_SEP.join(labels), "patient": pid,
                     "patient_source": how, "split": "",
                     "view": str(rec.get("View Position", "")).strip().upper()})  # Data_Entry_2017's column
    if missing_files and not rows:
        raise DataError(f"{csv_path}: none of its {len(missing_files)} images were found under {images_dir}; "
                        "pass --images DIR with the folder that holds them.")
    for name in missing_files:
        _skip_or_raise(images_dir / name, "listed in the CSV but not found", on_bad, skipped)
    return Manifest(_frame(rows), "csv", str(csv_path), skipped)


def _h5_label_names(labels_ds, values: np.ndarray) -> dict[int, str]:
    names = labels_ds.attrs.get("label_names", labels_ds.file.attrs.get("label_names"))
    if names is not None:
        return {i: (n.decode() if isinstance(n, bytes) else str(n)) for i, n in enumerate(names)}
    if set(np.unique(values)) <= {0, 1}:
        return {0: "negative", 1: "positive"}
    return {int(v): str(int(v)) for v in np.unique(values)}


def from_hdf5(files: list[str | Path]) -> Manifest:
    """HDF5 files with `image` (N,H,W[,C]) and `label` (N,) or one-hot (N,2), as in the MIT
    pneumothorax lab. The split comes from the file name (train/val/test) when it says one."""
    import h5py

    rows = []
    for file in (Path(f).resolve() for f in files):
        try:
            with h5py.File(file, "r") as h5:
                absent = [k for k in ("image", "label") if k not in h5]
                if absent:
                    raise DataError(f"{file}: missing dataset(s) {absent}; found {list(h5.keys())}. "
                                    "Expected 'image' (N,H,W[,C]) and 'label' (N,) or one-hot (N,2).")
                labels = np.asarray(h5["label"])
                if labels.ndim == 2:  # one-hot (N, K); a single column (N, 1) is the label itself
                    labels = labels[:, 0] if labels.shape[1] == 1 else labels.argmax(axis=1)
                if len(labels) != len(h5["image"]):
                    raise DataError(f"{file}: {len(h5['image'])} images but {len(labels)} labels.")
                names = _h5_label_names(h5["label"], labels)
                unnamed = sorted({int(v) for v in np.unique(labels)} - set(names))
                if unnamed:
                    raise DataError(f"{file}: label value(s) {unnamed} have no name in label_names "
                                    f"{list(names.values())}; fix the labels or the label_names attribute.")
                patients = [p.decode() if isinstance(p, bytes) else str(p) for p in h5["patient"][:]] \
                    if "patient" in h5 else None
                if patients is not None and len(patients) != len(labels):
                    raise DataError(f"{file}: 'patient' has {len(patients)} entries for {len(labels)} images; "
                                    "it needs one patient id per image.")
        except OSError as exc:
            raise DataError(f"{file}: not a readable HDF5 file ({exc})") from None
        split = next((v for k, v in SPLIT_NAMES.items() if k in file.stem.lower()), "")
        for i, lab in enumerate(labels):
            rows.append({"path": f"{file}{H5_SEP}{i}", "labels": names[int(lab)],
                         "patient": patients[i] if patients else f"{file.stem}-{i}",
                         "patient_source": "hdf5" if patients else "image", "split": split, "view": ""})
    return Manifest(_frame(rows), "hdf5", ",".join(map(str, files)))


def read_source(source: str | Path, images_dir: str | Path | None = None, on_bad: str = "error") -> Manifest:
    """Detect the layout of `source` and read it."""
    source = Path(source).resolve()
    if not source.exists():
        raise DataError(f"{source} does not exist.")
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix == ".csv":
            return from_csv(source, images_dir, on_bad)
        if suffix in (".h5", ".hdf5"):
            return from_hdf5([source])
        raise DataError(f"{source}: unsupported file; give a folder, an NIH-style .csv or an .h5 file.")
    csvs = [p for p in sorted(source.glob("*.csv")) if csv_kind(p) == "labels"]
    if len(csvs) == 1:
        return from_csv(csvs[0], images_dir, on_bad)
    if len(csvs) > 1:
        raise DataError(f"{source}: several label CSVs ({', '.join(p.name for p in csvs)}); give one of them.")
    h5s = sorted(p for p in source.iterdir() if p.suffix.lower() in (".h5", ".hdf5"))
    if h5s:
        return from_hdf5(h5s)
    return from_folders(source, on_bad)
