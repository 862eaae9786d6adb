import pytest

from cxrlab.data.sources import read_source
from cxrlab.data.tasks import label_frame, make_task
from cxrlab.errors import DataError


def test_folder_default_negative_is_normal(flat_folders):
    task = make_task(read_source(flat_folders))
    assert task.positive == "effusion" and task.negatives == ("normal",)


def test_csv_task_excludes_other_findings(nih_csv):
    m = read_source(nih_csv)
    task = make_task(m, "effusion", "no finding")  # case-insensitive
    frame, excluded = label_frame(m, task)
    assert (task.positive, task.negatives) == ("Effusion", ("No Finding",))
    assert int(frame["y"].sum()) == 12 and int((frame["y"] == 0).sum()) == 12
    assert excluded == {"Pneumonia": 6, "Cardiomegaly": 6}


def test_unknown_label_lists_available(nih_csv):
    with pytest.raises(DataError, match="unknown label 'Pneumothorax'.*Effusion"):
        make_task(read_source(nih_csv), "Pneumothorax")


def test_csv_needs_positive_when_ambiguous(nih_csv):
    with pytest.raises(DataError, match="which label is positive"):
        make_task(read_source(nih_csv))


def test_positive_equal_negative(flat_folders):
    with pytest.raises(DataError, match="both positive and negative"):
        make_task(read_source(flat_folders), "normal", "normal")
