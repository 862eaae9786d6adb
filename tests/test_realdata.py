"""Real data from ../shared/data (skipped when absent): the loaders on the sets the lesson uses."""

import pytest

from cxrlab import DataConfig, load_data
from cxrlab.data.sources import read_source
from conftest import SHARED_DATA, requires_shared_data

pytestmark = [requires_shared_data, pytest.mark.realdata]
NIH = SHARED_DATA / "nih-cxr14-subset"
KERMANY = SHARED_DATA / "kermany-pneumonia"


def test_nih_csv_loads_1300_images():
    m = read_source(NIH / "labels.csv")
    # shared/data/README says 1,028 patients; the CSV holds 1,025 distinct Patient IDs (counted).
    assert len(m.frame) == 1300 and m.frame["patient"].nunique() == 1025
    assert m.label_counts()["Effusion"] == 133 and m.label_counts()["No Finding"] == 500


def test_nih_effusion_task_is_patient_disjoint():
    data = load_data(NIH, "Effusion", "No Finding", config=DataConfig(image_size=64))
    assert int(data.frame["y"].sum()) == 133 and int((data.frame["y"] == 0).sum()) == 500
    assert (data.frame.groupby("patient")["split"].nunique() == 1).all()
    assert set(data.frame["split"]) == {"train", "val", "test"}


def test_kermany_folders_with_inferred_patients():
    m = read_source(KERMANY)
    assert len(m.frame) == 4155 and m.label_counts() == {"NORMAL": 1073, "PNEUMONIA": 3082}
    assert (m.frame["patient_source"] == "filename").all()
    assert m.frame["patient"].nunique() < 4155


def test_nih_folder_with_its_boxes_file():
    # NIH's own layout: BBox_List_2017.csv beside the labels CSV; the folder reads through the labels file
    from cxrlab.data.sources import find_boxes_csv
    from cxrlab.saliency.localize import read_boxes

    assert read_source(NIH).root == str((NIH / "labels.csv").resolve())
    assert find_boxes_csv(NIH).name == "BBox_List_2017.csv"
    boxes = read_boxes(NIH)
    assert len(boxes) == 47 and (boxes["Finding Label"] == "Pneumonia").sum() == 35
