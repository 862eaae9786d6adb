from pathlib import Path

import numpy as np
import pytest

from cxrlab.data.sources import from_hdf5, read_source
from cxrlab.errors import DataError
from conftest import write_png, xray
from test_images import gradient, write_dicom


def test_flat_folders(flat_folders):
    m = read_source(flat_folders)
    assert m.kind == "folders" and not m.presplit
    assert m.label_counts() == {"effusion": 18, "normal": 18}
    assert set(m.frame["patient_source"]) == {"filename"}
    assert m.frame["patient"].nunique() == 24


def test_presplit_folders(presplit_folders):
    m = read_source(presplit_folders)
    assert m.kind == "folders-presplit" and m.presplit
    assert m.frame.groupby("split").size().to_dict() == {"test": 12, "train": 80, "val": 2}
    assert m.frame.loc[m.frame["labels"] == "PNEUMONIA", "patient"].str.startswith("person").all()


def test_csv_multilabel_and_patients(nih_csv):
    m = read_source(nih_csv.parent)  # the folder with labels.csv is detected as a CSV source
    assert m.kind == "csv" and len(m.frame) == 36
    assert m.label_counts()["Effusion"] == 12 and m.label_counts()["Infiltration"] == 6
    assert m.frame["patient"].nunique() == 18 and set(m.frame["patient_source"]) == {"csv"}


def test_csv_finds_images_in_nested_folders(tmp_path, nih_csv):
    # The full NIH download nests images as images_001/images/*.png: the CSV must work unchanged.
    nested = tmp_path / "full" / "images_001" / "images"
    nested.parent.mkdir(parents=True)
    (nih_csv.parent / "images").rename(nested)
    m = read_source(nih_csv, images_dir=tmp_path / "full")
    assert len(m.frame) == 36


def test_csv_missing_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Image Index,Labels\na.png,Effusion\n")
    with pytest.raises(DataError, match="Finding Labels"):
        read_source(path)


def test_csv_missing_images_error_or_skip(nih_csv):
    (nih_csv.parent / "images" / "00000001_000.png").unlink()
    with pytest.raises(DataError, match="00000001_000.png"):
        read_source(nih_csv)
    m = read_source(nih_csv, on_bad="skip")
    assert len(m.frame) == 35 and m.skipped[0]["reason"] == "listed in the CSV but not found"


def test_hdf5_train_test_files_and_one_hot(tmp_path):
    import h5py

    for name, n in (("train.h5", 10), ("test.h5", 4)):
        with h5py.File(tmp_path / name, "w") as f:
            f["image"] = np.stack([xray(i) for i in range(n)])
            labels = np.arange(n) % 2
            f["label"] = np.eye(2)[labels] if name == "train.h5" else labels
    m = read_source(tmp_path)
    assert m.kind == "hdf5"
    assert m.frame.groupby("split").size().to_dict() == {"test": 4, "train": 10}
    assert m.label_counts() == {"negative": 7, "positive": 7}


def test_hdf5_missing_dataset(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = np.zeros((2, 8, 8))
    with pytest.raises(DataError, match="x.h5.*image"):
        from_hdf5([tmp_path / "x.h5"])


def test_dicom_in_class_folders_uses_patient_tag(tmp_path):
    for i in range(3):
        write_dicom(tmp_path / "d" / "normal" / f"n{i}.dcm", gradient(), patient="PAT-A")
        write_dicom(tmp_path / "d" / "effusion" / f"e{i}.dcm", gradient(), "MONOCHROME1", patient=f"PAT-{i}")
    m = read_source(tmp_path / "d")
    assert set(m.frame["patient_source"]) == {"dicom"}
    assert m.frame["patient"].nunique() == 4


def test_non_image_file_in_class_folder(flat_folders):
    (flat_folders / "normal" / "notes.txt").write_text("hello")
    (flat_folders / "normal" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    with pytest.raises(DataError, match="notes.txt.*not an image"):
        read_source(flat_folders)
    m = read_source(flat_folders, on_bad="skip")
    assert [s["path"].endswith("notes.txt") for s in m.skipped] == [True]


def test_empty_class_folder(flat_folders):
    (flat_folders / "pneumothorax").mkdir()
    with pytest.raises(DataError, match="pneumothorax has no images"):
        read_source(flat_folders)


def test_single_class(tmp_path):
    write_png(tmp_path / "only" / "normal" / "a.png", xray(0))
    with pytest.raises(DataError, match="only one class"):
        read_source(tmp_path / "only")


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_source(tmp_path / "nothing")


def _write_nih_boxes(folder):
    """NIH's BBox_List_2017.csv layout, as NIH's download has it beside Data_Entry_2017.csv."""
    (folder / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000002_000.png,Effusion,10,12,20,22\n")


def test_csv_folder_with_nih_boxes_beside_the_labels(nih_csv):
    _write_nih_boxes(nih_csv.parent)
    m = read_source(nih_csv.parent)
    assert m.kind == "csv" and m.root == str(nih_csv) and len(m.frame) == 36


def test_boxes_csv_is_found_beside_the_labels(nih_csv):
    from cxrlab.data.sources import find_boxes_csv

    assert find_boxes_csv(nih_csv.parent) is None
    _write_nih_boxes(nih_csv.parent)
    assert find_boxes_csv(nih_csv.parent).name == "BBox_List_2017.csv"
    assert find_boxes_csv(nih_csv).name == "BBox_List_2017.csv"  # the labels file itself: look beside it


def test_two_label_csvs_in_a_folder_is_an_error(nih_csv):
    (nih_csv.parent / "copy.csv").write_bytes(nih_csv.read_bytes())
    with pytest.raises(DataError, match="several label CSVs"):
        read_source(nih_csv.parent)


def test_latin1_csv_found_through_its_folder(nih_csv):
    # a latin-1 byte in a later row: the same one-line error as when the CSV is passed directly
    nih_csv.write_bytes(nih_csv.read_bytes() + b"00000099_000.png,No Finding,99,0,caf\xe9\n")
    for source in (nih_csv, nih_csv.parent):
        with pytest.raises(DataError, match=r"labels.csv: not UTF-8 text .*byte 0xe9"):
            read_source(source)


def _h5(path, n=10, **datasets):
    import h5py

    with h5py.File(path, "w") as f:
        f["image"] = np.stack([xray(i) for i in range(n)])
        for key, value in datasets.items():
            f[key] = value
    return path


def test_hdf5_single_column_labels_are_the_labels(tmp_path):
    labels = (np.arange(10) % 2).reshape(10, 1)  # (N, 1): argmax would make every image negative
    m = from_hdf5([_h5(tmp_path / "x.h5", label=labels)])
    assert m.label_counts() == {"negative": 5, "positive": 5}


def test_hdf5_patient_dataset_of_another_length(tmp_path):
    path = _h5(tmp_path / "x.h5", label=np.arange(10) % 2, patient=np.arange(7))
    with pytest.raises(DataError, match=r"x.h5: 'patient' has 7 entries for 10 images"):
        from_hdf5([path])


def test_hdf5_label_outside_label_names(tmp_path):
    import h5py

    path = _h5(tmp_path / "x.h5", label=np.arange(10) % 3)
    with h5py.File(path, "a") as f:
        f["label"].attrs["label_names"] = ["normal", "effusion"]
    with pytest.raises(DataError, match=r"x.h5: label value\(s\) \[2\] have no name"):
        from_hdf5([path])


def test_broken_symlinks_are_bad_images_not_dropped(flat_folders):
    (flat_folders / "normal" / "x.png").symlink_to(flat_folders / "missing.png")
    loop = flat_folders / "normal" / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="loop.png: a broken symbolic link"):
        read_source(flat_folders)
    m = read_source(flat_folders, on_bad="skip")
    assert sorted(Path(s["path"]).name for s in m.skipped) == ["loop.png", "x.png"]
    assert len(m.frame) == 36


def test_lone_train_h5_gets_a_test_split(tmp_path):
    from cxrlab import DataConfig, load_data

    _h5(tmp_path / "train.h5", n=40, label=np.arange(40) % 2)
    data = load_data(tmp_path / "train.h5", config=DataConfig(image_size=32))
    assert (data.frame["split"] == "test").sum() > 0 and any("no test split" in n for n in data.notes)
