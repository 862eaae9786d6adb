"""`predict --dicom-out`: a Structured Report and a heatmap Secondary Capture per input DICOM, in its study,
read back with pydicom and checked against the standard with dicom3tools' dciodvfy."""

import shutil
import subprocess

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.errors import ImageReadError
from test_images import write_dicom

runner = CliRunner()
STUDY = "1.2.826.0.1.3680043.8.498.1"


def hospital_dicom(path, seed, study=STUDY, **extra):
    """A 12-bit DX image with the patient, study and series attributes an archive's files carry."""
    from conftest import xray

    attrs = dict(StudyInstanceUID=study, SeriesInstanceUID=f"{study}.{seed}", PatientName="Test^Patient",
                 PatientBirthDate="19700101", PatientSex="F", StudyDate="20261201", StudyTime="101500",
                 AccessionNumber="A1", ReferringPhysicianName="", StudyID="1", SeriesNumber=1, InstanceNumber=seed,
                 PatientOrientation=["L", "F"], WindowCenter=2048, WindowWidth=4096, ViewPosition="PA")
    attrs.update(extra)
    return write_dicom(path, xray(seed, 96, positive=seed % 2 == 0).astype(np.uint16) * 16, **attrs)


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def content(sr) -> dict:
    """The SR's content items by concept name: numbers, texts and codes."""
    items = {}
    for item in sr.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            items[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT":
            items[name] = item.TextValue
        elif item.ValueType == "CODE":
            items[name] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "IMAGE":
            items[name] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return items


def test_predict_writes_a_report_and_a_heatmap_per_dicom_in_its_study(lesson_run, tmp_path):
    studies = tmp_path / "studies"
    sources = [hospital_dicom(studies / "a" / "img.dcm", 1), hospital_dicom(studies / "b" / "img.dcm", 2)]
    shutil.copy(sorted(lesson_run.parent.rglob("*.png"))[0], studies / "not-dicom.png")
    result = runner.invoke(app, ["predict", str(lesson_run), str(studies), "--out", str(tmp_path / "p.csv"),
                                 "--dicom-out", str(tmp_path / "dicom")])
    assert result.exit_code == 0, result.output
    assert "no DICOM result" in result.output and "not-dicom.png" in result.output
    predictions = pd.read_csv(tmp_path / "p.csv").set_index("path")
    written = sorted((tmp_path / "dicom").iterdir())
    assert [p.name for p in written] == ["img-2.heatmap.dcm", "img-2.sr.dcm", "img.heatmap.dcm", "img.sr.dcm"]
    series = set()
    for stem in ("img", "img-2"):
        sr = pydicom.dcmread(tmp_path / "dicom" / f"{stem}.sr.dcm")
        sc = pydicom.dcmread(tmp_path / "dicom" / f"{stem}.heatmap.dcm")
        items = content(sr)
        source = pydicom.dcmread(next(s for s in sources if items["Source of Measurement"] == pydicom.dcmread(s).SOPInstanceUID))
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
        assert sr.PatientID == sc.PatientID == source.PatientID and sr.PatientName == source.PatientName
        assert len({sr.SeriesInstanceUID, sc.SeriesInstanceUID, source.SeriesInstanceUID}) == 3  # new series
        series.add((sr.SeriesInstanceUID, sc.SeriesInstanceUID))
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape == (96, 96, 3)
        row = predictions.loc[str(next(s for s in sources if pydicom.dcmread(s).SOPInstanceUID == source.SOPInstanceUID))]
        # one answer per image: the report says what predict says
        assert items["Model probability of the finding"] == pytest.approx(row["probability"], abs=1e-6)
        assert items["Decision threshold"] == pytest.approx(row["threshold"], abs=1e-6)
        assert items["Threshold policy"] == row["policy"]
        assert items["Model call: finding present"] == ("Yes" if row["predicted"] == "effusion" else "No")
        assert items["Finding"] == "Pleural effusion" and "Not for diagnostic use" in items["Comment"]
        assert "weights sha256" in items["Model and version"] and items["Saliency heatmap"] == sc.SOPInstanceUID
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(tmp_path / "dicom" / f"{stem}.sr.dcm") == []
            assert dciodvfy_errors(tmp_path / "dicom" / f"{stem}.heatmap.dcm") == []
    assert len(series) == 1, "the images of one study share one new SR series and one new SC series"


def test_results_for_a_file_nobody_here_wrote(lesson_run, tmp_path):
    """pydicom's own CT_small.dcm (a real scanner's header): its study gets valid results."""
    from pydicom.data import get_testdata_file

    from cxrlab.serving import Predictor
    from cxrlab.serving.dicom_out import write_dicom_results

    path = shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    predictor = Predictor(lesson_run, device="cpu")
    written, not_dicom = write_dicom_results(predictor, predictor.predict_paths([str(path)], "layercam"), tmp_path / "out")
    assert not not_dicom and len(written) == 1
    sr = pydicom.dcmread(written[0][0])
    assert sr.StudyInstanceUID == pydicom.dcmread(path).StudyInstanceUID
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(written[0][0]) == [] and dciodvfy_errors(written[0][1]) == []


def test_a_dicom_without_a_study_is_refused_by_name(lesson_run, tmp_path):
    from cxrlab.serving import Predictor
    from cxrlab.serving.dicom_out import write_dicom_results

    path = write_dicom(tmp_path / "loose.dcm", np.full((64, 64), 800, np.uint16))  # no study or series UID
    predictor = Predictor(lesson_run, device="cpu")
    with pytest.raises(ImageReadError, match=r"loose\.dcm.*has no StudyInstanceUID"):
        write_dicom_results(predictor, predictor.predict_paths([str(path)], "layercam"), tmp_path / "out")


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dicom3tools' dciodvfy is not installed")
def test_dciodvfy_finds_errors_when_there_are_some(tmp_path):
    """The validator the tests rely on does report a broken file (so an empty error list means something)."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "broken.dcm")
    assert any("StudyInstanceUID" in e for e in dciodvfy_errors(tmp_path / "broken.dcm"))
