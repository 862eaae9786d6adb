import numpy as np
import pytest
from PIL import Image

from cxrlab.data.images import read_image, to_uint8
from cxrlab.errors import ImageReadError


def write_dicom(path, arr, photometric="MONOCHROME2", bits=12, patient="P001", **extra):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = arr.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(bits=12, shape=(32, 64)):
    row = np.linspace(0, 2**bits - 1, shape[1]).astype(np.uint16)
    return np.tile(row, (shape[0], 1))


def test_dicom_monochrome2_keeps_bright_bright(tmp_path):
    arr, info = read_image(str(write_dicom(tmp_path / "a.dcm", gradient())))
    assert arr.dtype == np.uint8 and arr.shape == (32, 64)
    assert arr[0, 0] == 0 and arr[0, -1] == 255
    assert "MONOCHROME2" in info.mode and "12-bit" in info.mode


def test_dicom_monochrome1_is_inverted(tmp_path):
    arr, _ = read_image(str(write_dicom(tmp_path / "a.dcm", gradient(), "MONOCHROME1")))
    assert arr[0, 0] == 255 and arr[0, -1] == 0


def test_dicom_16bit_and_resize(tmp_path):
    arr, info = read_image(str(write_dicom(tmp_path / "a.dcm", gradient(16), bits=16)), size=16)
    assert arr.shape == (16, 16) and arr.min() < 20 and arr.max() > 235
    assert (info.width, info.height) == (64, 32)


def test_dicom_rescale_and_window_are_applied(tmp_path):
    # Stored 0..4095, rescaled by intercept -1000: the window 24 +- 256 covers stored 768..1280 only,
    # so most of the gradient saturates: without rescale+VOI the map would be a smooth ramp.
    path = write_dicom(tmp_path / "w.dcm", gradient(), RescaleSlope=1, RescaleIntercept=-1000,
                       WindowCenter=24, WindowWidth=512)
    arr, _ = read_image(str(path))
    row = arr[0].astype(int)
    stored = np.linspace(0, 4095, 64)
    assert (row[stored < 700] == 0).all()
    assert (row[stored > 1350] == 255).all()
    assert 0 < row[np.argmin(abs(stored - 1024))] < 255


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "I;16"])
def test_pil_modes_become_gray_uint8(tmp_path, mode):
    base = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (20, 1))
    if mode == "I;16":
        im = Image.fromarray((base.astype(np.uint16) * 200))
    else:
        im = Image.fromarray(base).convert(mode)
    path = tmp_path / "x.png"
    im.save(path)
    arr, info = read_image(str(path))
    assert arr.dtype == np.uint8 and arr.shape == (20, 40)
    assert arr[0, 0] < 10 and arr[0, -1] > 245
    assert info.mode == im.mode


def test_to_uint8_scales_deep_data():
    out = to_uint8(np.array([[100, 4095]], np.uint16))
    assert out.tolist() == [[0, 255]]


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"this is not an image", "not a readable image"),
])
def test_bad_files_name_the_file(tmp_path, content, needle):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        read_image(str(path))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_truncated_png_is_an_error(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="t.png"):
        read_image(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(str(tmp_path / "nope.png"))


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # tiny file, 400 megapixels declared
    with pytest.raises(ImageReadError, match="too large"):
        read_image(str(path))


def test_presentation_lut_inverse_inverts_and_cancels_monochrome1(tmp_path):
    plain, _ = read_image(str(write_dicom(tmp_path / "a.dcm", gradient())))
    inverse, _ = read_image(str(write_dicom(tmp_path / "b.dcm", gradient(), PresentationLUTShape="INVERSE")))
    both, _ = read_image(str(write_dicom(tmp_path / "c.dcm", gradient(), "MONOCHROME1", PresentationLUTShape="INVERSE")))
    assert np.array_equal(inverse, 255 - plain) and np.array_equal(both, plain)


def _pydicom_file(name):
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "CT_small.dcm"])
def test_compressed_dicom_files_nobody_here_wrote_decode(name):
    """pydicom's own test files, in compressed transfer syntaxes: decoded by the declared pylibjpeg plugins."""
    import pydicom

    arr, info = read_image(_pydicom_file(name), 64)
    assert arr.shape == (64, 64) and arr.dtype == np.uint8 and arr.max() > arr.min()
    ds = pydicom.dcmread(_pydicom_file(name), stop_before_pixels=True)
    assert (info.width, info.height) == (ds.Columns, ds.Rows)


@pytest.mark.parametrize("name, reason", [("reportsi.dcm", "DICOM file without pixel data \\(Basic Text SR"),
                                          ("rtplan.dcm", "DICOM file without pixel data \\(RT Plan"),
                                          ("SC_rgb_rle_2frame.dcm", "multi-frame DICOM \\(2 frames\\)"),
                                          ("rtdose.dcm", "multi-frame DICOM")])
def test_non_image_and_multi_frame_dicom_are_refused_by_name(name, reason):
    with pytest.raises(ImageReadError, match=f"{name}: a {reason}"):
        read_image(_pydicom_file(name), 64)


def _pydicom_data_folder():
    """The pydicom-data package's files (pip install pydicom-data; the dev extra has it)."""
    import os

    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return os.path.join(os.path.dirname(data_store.__file__), "data")


@pytest.mark.parametrize("source", ["pydicom", "pydicom-data"])
def test_every_pydicom_test_file_decodes_or_is_refused_with_a_reason(source):
    """No DICOM file, however broken, gets past the reader as anything but pixels or an ImageReadError
    (BENCHMARKS.md's table: benchmarks/dicom_files.py)."""
    import glob
    import os

    folder = os.path.dirname(_pydicom_file("CT_small.dcm")) if source == "pydicom" else _pydicom_data_folder()
    outcomes = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.dcm"))):
        try:
            arr, _ = read_image(path, 32)
            assert arr.shape == (32, 32) and arr.dtype == np.uint8
            outcomes[os.path.basename(path)] = "decoded"
        except ImageReadError as exc:
            assert exc.path == path and exc.reason
            outcomes[os.path.basename(path)] = exc.reason
    assert sum(v == "decoded" for v in outcomes.values()) >= 40, outcomes
    if source == "pydicom-data":
        assert outcomes["OT-PAL-8-face.dcm"] == "decoded"  # no file meta at all: read as the old files it is
        assert "truncated" in outcomes["emri_small_jpeg_2k_lossless_too_short.dcm"]


@pytest.mark.parametrize("name", ["RG1", "RG3"])
def test_real_computed_radiographs_decode_the_same_compressed_and_not(name):
    """pydicom-data's CR images (MONOCHROME1): JPEG 2000 lossless gives exactly the uncompressed pixels,
    lossy JPEG 2000 nearly; all with the file's own intensity mapping (dark lungs stay dark)."""
    import os

    folder = _pydicom_data_folder()
    plain, _ = read_image(os.path.join(folder, f"{name}_UNCR.dcm"), 256)
    lossless, info = read_image(os.path.join(folder, f"{name}_J2KR.dcm"), 256)
    lossy, _ = read_image(os.path.join(folder, f"{name}_J2KI.dcm"), 256)
    assert np.array_equal(plain, lossless) and "MONOCHROME1" in info.mode
    assert np.abs(plain.astype(int) - lossy).mean() < 2 and plain.std() > 20


# -- the intensities the file means (issue 22): one fixed mapping per file, never a per-image stretch ----------

def _photo(seed=0, shape=(48, 64)) -> np.ndarray:
    """An 8-bit 'source PNG' that does not use the whole 0..255 range (as a real X-ray rarely does)."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 201, shape).astype(np.uint8)


def test_12bit_monochrome1_with_an_identity_window_matches_its_source(tmp_path):
    source = _photo()
    stored = np.round((255 - source.astype(float)) * 4095 / 255).astype(np.uint16)  # MONOCHROME1: high = dark
    path = write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", WindowCenter=2048, WindowWidth=4096)
    arr, info = read_image(str(path))
    assert np.abs(arr.astype(int) - source).max() <= 1
    assert "window 2048/4096" in info.mode
    stretched = 255 - to_uint8(stored)  # what the per-image stretch made of it
    assert np.abs(stretched.astype(int) - source).max() > 30


def test_dicom_without_a_window_uses_the_full_stored_range(tmp_path):
    source = _photo(1)
    stored = np.round(source.astype(float) * 4095 / 255).astype(np.uint16)
    arr, info = read_image(str(write_dicom(tmp_path / "m2.dcm", stored)))
    assert np.abs(arr.astype(int) - source).max() <= 1 and "stored range 0..4095" in info.mode


def test_hdf5_floats_in_0_1_are_scaled_by_255_and_said_so(tmp_path):
    import h5py

    source = _photo(2)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["image"] = (source.astype(np.float32) / 255)[None]
    arr, info = read_image(f"{tmp_path / 'x.h5'}::0")
    assert (arr == source).all()
    assert info.mode == "HDF5 float32, [0, 1] x 255"


# -- view positions (issue 22): read from DICOM and NIH's CSV, shown, and filtered with --views --------------

def _views_folder(tmp_path):
    views = {"normal": ["PA", "PA", "AP", "PA"], "effusion": ["PA", "AP", "AP", "LL"]}
    for cls, positions in views.items():
        for i, view in enumerate(positions):
            write_dicom(tmp_path / "dx" / cls / f"{cls}{i}.dcm", gradient(shape=(32, 32)), patient=f"{cls}-{i}",
                        ViewPosition=view)
    return tmp_path / "dx"


def test_dicom_view_positions_are_read_shown_and_filtered(tmp_path):
    from cxrlab.config import DataConfig
    from cxrlab.data import load_data
    from cxrlab.data.summary import summarize
    from cxrlab.errors import DataError

    root = _views_folder(tmp_path)
    cfg = DataConfig(image_size=32, cache_dir=str(tmp_path / "cache"), test_fraction=0.25, val_fraction=0.25)
    everything = load_data(root, positive="effusion", config=cfg)
    assert summarize(everything)["views"] == {"PA": 4, "AP": 3, "LL": 1}
    frontal = load_data(root, positive="effusion", config=DataConfig(**{**cfg.__dict__, "views": "pa,AP"}))
    assert sorted(frontal.frame["view"]) == ["AP"] * 3 + ["PA"] * 4
    assert any("1 image(s) of other views left out (LL 1)" in n for n in frontal.notes)
    with pytest.raises(DataError, match=r"no image has view LAT; its views: PA 4, AP 3, LL 1"):
        load_data(root, positive="effusion", config=DataConfig(**{**cfg.__dict__, "views": ["LAT"]}))


def test_nih_view_position_column_and_sources_without_views(tmp_path, nih_csv):
    import pandas as pd

    from cxrlab.config import DataConfig
    from cxrlab.data import load_data
    from cxrlab.errors import DataError

    cfg = DataConfig(image_size=32, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"--views PA: no image says its view"):
        load_data(nih_csv, positive="Effusion", config=DataConfig(**{**cfg.__dict__, "views": "PA"}))
    table = pd.read_csv(nih_csv)
    table["View Position"] = ["PA" if i % 2 else "AP" for i in range(len(table))]
    table.to_csv(nih_csv, index=False)
    data = load_data(nih_csv, positive="Effusion", config=DataConfig(**{**cfg.__dict__, "views": "AP"}))
    assert set(data.frame["view"]) == {"AP"} and len(data.frame) < len(table)
    table["View Position"] = ["PA" if "Effusion" in labels else "AP" for labels in table["Finding Labels"]]
    table.to_csv(nih_csv, index=False)
    with pytest.raises(DataError, match=r"no readable images labelled 'Effusion' are left after keeping views AP"):
        load_data(nih_csv, positive="Effusion", config=DataConfig(**{**cfg.__dict__, "views": "AP"}))
