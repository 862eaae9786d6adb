"""Results as DICOM, for a hospital archive: per input DICOM image, a Comprehensive Structured Report
(the finding, the model's probability, the threshold and its policy, the call, the model and its version,
and that it is not for diagnostic use) and a Secondary Capture of the heatmap over the image, both in the
input's study (its StudyInstanceUID, patient and study attributes) as new series. highdicom builds both;
they are checked with dicom3tools' dciodvfy in the tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageReadError

NOT_FOR_DIAGNOSIS = ("Produced by cxrlab for research and teaching. Not for diagnostic use: not a medical device, "
                     "not reviewed by a clinician.")
PRIVATE_SCHEME = "99CXRLAB"  # cxrlab's own concepts (probability, threshold, policy, call, model)
# SNOMED CT codes of the findings cxrlab's data sets name; others are coded in the private scheme
FINDING_CODES = {"effusion": ("60046008", "Pleural effusion"), "pneumonia": ("233604007", "Pneumonia"),
                 "pneumothorax": ("36118008", "Pneumothorax"), "cardiomegaly": ("8186001", "Cardiomegaly"),
                 "atelectasis": ("46621007", "Atelectasis")}
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902


@dataclass
class DicomWriter:
    """Writes the SR and SC of each scored DICOM image into `out`: one new SR series and one new SC series
    per study (shared by that study's images in this run), files named after the input."""

    out: Path
    model_name: str
    model_version: str
    positive: str
    series: dict = field(default_factory=dict)  # StudyInstanceUID -> (SR series UID, SC series UID, count)
    stems: set = field(default_factory=set)  # file names taken in this run (inputs of the same name elsewhere)

    def write(self, path: str, pixels: np.ndarray, heatmap: np.ndarray, probability: float, threshold: float,
              policy: str) -> tuple[Path, Path]:
        """`pixels`: the model's S x S input image, `heatmap` its S x S map in [0, 1]."""
        import highdicom as hd
        import pydicom
        from pydicom.uid import generate_uid

        from ..saliency.figures import blend

        try:
            source = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise ImageReadError(path, f"cannot read its DICOM header ({exc.__class__.__name__})") from None
        for needed in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not getattr(source, needed, None):
                raise ImageReadError(path, f"has no {needed}, so results cannot be added to its study")
        sr_series, sc_series, count = self.series.get(source.StudyInstanceUID, (generate_uid(), generate_uid(), 0))
        self.series[source.StudyInstanceUID] = (sr_series, sc_series, count + 1)
        overlay = (blend(pixels, heatmap) * 255).round().astype(np.uint8)
        sc = hd.sc.SCImage.from_ref_dataset(
            source, overlay, "RGB", 8, "PATIENT", sc_series, SC_SERIES_NUMBER, generate_uid(), count + 1, "cxrlab",
            patient_orientation=_orientation(source))
        sc.BodyPartExamined = "CHEST"
        sc.SeriesDescription = f"cxrlab heatmap: {self.positive}"
        sc.ImageComments = f"Heatmap over the model's {pixels.shape[0]} px input. {NOT_FOR_DIAGNOSIS}"
        sc.BurnedInAnnotation = "NO"
        sr = hd.sr.ComprehensiveSR(
            evidence=[source, sc], content=self._content(source, sc, probability, threshold, policy),
            series_instance_uid=sr_series, series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(),
            instance_number=count + 1, manufacturer="cxrlab", is_complete=True)
        sr.SeriesDescription = f"cxrlab result: {self.positive}"
        for ds in (sr, sc):
            ds.ManufacturerModelName = self.model_name[:64]
            ds.SoftwareVersions = self.model_version[:64]
        self.out.mkdir(parents=True, exist_ok=True)
        stem = _unique_stem(self.stems, Path(path).stem)
        sr_path, sc_path = self.out / f"{stem}.sr.dcm", self.out / f"{stem}.heatmap.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        sc.save_as(sc_path, enforce_file_format=True)
        return sr_path, sc_path

    def _content(self, source, sc, probability: float, threshold: float, policy: str):
        import highdicom as hd
        from highdicom.sr import CodedConcept

        def own(value: str, meaning: str) -> CodedConcept:
            return CodedConcept(value, PRIVATE_SCHEME, meaning)

        unitless = CodedConcept("1", "UCUM", "no units")
        code, meaning = FINDING_CODES.get(self.positive.lower(), (self.positive.upper()[:16], self.positive))
        finding = CodedConcept(code, "SCT" if self.positive.lower() in FINDING_CODES else PRIVATE_SCHEME, meaning)
        called = probability >= threshold
        contains = "CONTAINS"
        root = hd.sr.ContainerContentItem(name=CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
        root.ContentSequence = [
            hd.sr.TextContentItem(CodedConcept("121106", "DCM", "Comment"), NOT_FOR_DIAGNOSIS, relationship_type=contains),
            hd.sr.CodeContentItem(CodedConcept("121071", "DCM", "Finding"), finding, relationship_type=contains),
            hd.sr.NumContentItem(own("PROBABILITY", "Model probability of the finding"), float(probability), unitless,
                                 relationship_type=contains),
            hd.sr.NumContentItem(own("THRESHOLD", "Decision threshold"), float(threshold), unitless,
                                 relationship_type=contains),
            hd.sr.TextContentItem(own("POLICY", "Threshold policy"), policy[:1024], relationship_type=contains),
            hd.sr.CodeContentItem(own("CALL", "Model call: finding present"),
                                  CodedConcept("373066001", "SCT", "Yes") if called else CodedConcept("373067005", "SCT", "No"),
                                  relationship_type=contains),
            hd.sr.TextContentItem(own("MODEL", "Model and version"), f"{self.model_name}; {self.model_version}"[:1024],
                                  relationship_type=contains),
            hd.sr.ImageContentItem(CodedConcept("121112", "DCM", "Source of Measurement"), source.SOPClassUID,
                                   source.SOPInstanceUID, relationship_type=contains),
            hd.sr.ImageContentItem(own("HEATMAP", "Saliency heatmap"), sc.SOPClassUID, sc.SOPInstanceUID,
                                   relationship_type=contains),
        ]
        return root


def model_version(run_path: Path, weights: Path) -> str:
    """The run, its weights' SHA-256 (first 12 hex digits) and cxrlab's version: what made this result."""
    from .. import __version__

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return f"run {run_path.name}, weights sha256 {digest}, cxrlab {__version__}"


def _orientation(source) -> tuple[str, str]:
    """The input's PatientOrientation when it gives one per axis, else the radiographic display convention
    for a frontal chest film (rows towards the patient's left, columns towards the feet)."""
    values = list(getattr(source, "PatientOrientation", None) or [])
    if len(values) == 2 and all(v in ("A", "P", "L", "R", "H", "F") for v in values):
        return values[0], values[1]
    return "L", "F"


def _unique_stem(taken: set, stem: str) -> str:
    candidate, k = stem, 1
    while candidate in taken:
        k += 1
        candidate = f"{stem}-{k}"
    taken.add(candidate)
    return candidate


def write_dicom_results(predictor, predictions, out: str | Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """The SR and heatmap SC of every DICOM input among `predictions` (a Predictor's, made with a heatmap
    method), into `out`. Returns the files written and the inputs left out as not DICOM."""
    from ..data.images import is_dicom

    writer = DicomWriter(Path(out), predictor.spec.name, model_version(predictor.run.path, predictor.run.best_weights),
                         predictor.positive)
    written, not_dicom = [], []
    for p in predictions:
        with open(p.path, "rb") as f:
            head = f.read(132)
        if not is_dicom(p.path, head):
            not_dicom.append(p.path)
            continue
        written.append(writer.write(p.path, predictor.read(p.path), p.heatmap, p.probability, p.threshold, p.policy))
    return written, not_dicom
