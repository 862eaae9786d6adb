"""Decode one X-ray (PNG/JPEG/TIFF/BMP, DICOM, or a row of an HDF5 array) to 8-bit grayscale, resize
it, and normalise a batch: cxrlab's preprocessing, with no torch.

Every reader returns a uint8 H x W array; every failure is an ImageReadError naming the file. This
file is also shipped beside an ONNX export (`cxrlab export`) and imported there on its own, without
cxrlab installed, so that the standalone predictor preprocesses exactly as training did: it needs
only numpy and Pillow (pydicom for DICOM, h5py for HDF5).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from ..errors import ImageReadError
except ImportError:  # shipped beside an ONNX export and imported on its own (see the docstring)
    class ImageReadError(Exception):
        def __init__(self, path, reason: str):
            self.path, self.reason = str(path), reason
            super().__init__(f"{self.path}: {reason}")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
H5_SEP = "::"  # an HDF5 row is addressed as "file.h5::index"
IMAGENET_MEAN = 0.485, 0.456, 0.406
IMAGENET_STD = 0.229, 0.224, 0.225
# Absurd declared sizes are refused before decoding (decompression bombs) by Pillow's own limit
# (Image.MAX_IMAGE_PIXELS, 89 M pixels, about 9,459 x 9,459: far above any chest X-ray), whose
# warning `_decode_pil` turns into an error. Not changed here: importing cxrlab changes no global state.


@dataclass
class ImageInfo:
    width: int
    height: int
    mode: str
    sha1: str


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map any numeric array to 0..255. 8-bit data is kept as is; deeper data (12/16-bit,
    float) is min-max scaled, because its stored range says nothing about display range."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def scale_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map the fixed range [lo, hi] (what the file says its values mean, not this image's own min and max)
    linearly onto 0..255, clipping outside it."""
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    scaled = (np.asarray(arr, np.float32) - lo) * (255.0 / (hi - lo))
    return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)


def _gray(arr: np.ndarray) -> np.ndarray:
    """H x W x C -> H x W luminance (alpha dropped)."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        luma = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.round(luma), 0, 255).astype(np.uint8) if arr.dtype == np.uint8 else to_uint8(luma)
    raise ValueError(f"unsupported array shape {arr.shape}")


def _decode_pil(data: bytes, size: int | None) -> tuple[np.ndarray, int, int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
        width, height, mode = im.width, im.height, im.mode
        if size and im.format == "JPEG":
            im.draft("L", (size, size))  # DCT-domain downscale: much faster, still >= size
        im.load()
    if im.mode in ("L", "RGB", "RGBA", "LA", "P", "1", "CMYK", "YCbCr"):
        arr = np.asarray(im.convert("L"))
    else:  # I;16, I, F: deeper than 8 bits
        arr = to_uint8(np.asarray(im))
    return arr, width, height, mode


PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _decode_dicom(data: bytes, name: str) -> tuple[np.ndarray, int, int, str]:
    """Rescale slope/intercept, VOI LUT or window when present; MONOCHROME1 and a Presentation LUT
    Shape of INVERSE each invert (both: they cancel). Compressed transfer syntaxes decode through
    pylibjpeg's plugins. A file without pixel data (a structured report, an RT plan, a presentation
    state) and a multi-frame file are refused: one file, one X-ray."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # a .dcm file without the preamble and 'DICM' marker: an older DICOM file with no file meta, read as such
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    if "TransferSyntaxUID" not in ds.file_meta and ds.original_encoding[0] is not None:
        implicit, little = ds.original_encoding  # what reading it found: the pixels are encoded the same way
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                          pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
    if not any(tag in ds for tag in PIXEL_TAGS):
        if "Rows" in ds or any("End of file" in str(w.message) for w in caught):
            raise ImageReadError(name, "a DICOM file that ends before its pixel data: it looks truncated")
        kind = getattr(getattr(ds, "SOPClassUID", None), "name", None) or f"Modality {ds.get('Modality', 'unknown')}"
        raise ImageReadError(name, f"a DICOM file without pixel data ({kind}): not an image cxrlab can read")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(name, f"a multi-frame DICOM ({frames} frames): cxrlab reads one X-ray per file; "
                                   "save the frame you want as its own file")
    arr = ds.pixel_array
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    bits = int(ds.BitsStored)
    if photometric.startswith("MONOCHROME"):
        # the intensities the file means, mapped to 8 bits once: the VOI LUT's or the window's output range,
        # else the full stored range, never this image's own min and max (that stretched every image anew)
        arr = apply_modality_lut(arr, ds)
        lo, hi = _modality_range(ds)
        if "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds)
            lo, hi = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
            how = "VOI LUT"
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            arr = apply_voi_lut(arr, ds)  # pydicom's windowing maps onto the modality range [lo, hi]
            how = f"window {_first(ds.WindowCenter):g}/{_first(ds.WindowWidth):g}"
        else:
            how = f"stored range {lo:g}..{hi:g}"
        arr = scale_range(arr, lo, hi)
        inverse = str(ds.get("PresentationLUTShape", "IDENTITY")).upper() == "INVERSE"
        if (photometric == "MONOCHROME1") != inverse:
            arr = 255 - arr
    else:
        arr, how = to_uint8(_gray(np.asarray(arr))), "8-bit" if arr.dtype == np.uint8 else "min-max stretched"
    return arr, int(ds.Columns), int(ds.Rows), f"DICOM {photometric} {bits}-bit, {how}"


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): the first."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _modality_range(ds) -> tuple[float, float]:
    """The range modality-LUT output can take, as pydicom's windowing computes it (PS3.3 C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    lo, hi = (0, 2 ** bits - 1) if int(ds.get("PixelRepresentation", 0)) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return float(lo), float(hi)


@lru_cache(maxsize=8)
def _h5_file(path: str):
    import h5py

    return h5py.File(path, "r")


def _decode_h5(ref: str) -> tuple[np.ndarray, int, int, str, str]:
    path, index = ref.rsplit(H5_SEP, 1)
    arr = np.asarray(_h5_file(path)["image"][int(index)])
    sha = hashlib.sha1(arr.tobytes()).hexdigest()
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # C,H,W -> H,W,C
    dtype = arr.dtype
    arr = _gray(arr) if arr.ndim == 3 else arr
    if dtype == np.uint8:
        how = "8-bit"
    elif dtype.kind == "f" and float(np.nanmin(arr)) >= 0 and float(np.nanmax(arr)) <= 1:
        arr, how = scale_range(arr, 0.0, 1.0), "[0, 1] x 255"  # floats in [0, 1], as the MIT lab stores them
    elif dtype.kind in "fiu" and float(arr.min()) >= 0 and float(arr.max()) <= 255:
        arr, how = scale_range(arr, 0.0, 255.0), "0..255 kept"
    else:  # a range the file does not state: stretched per image, and said so
        arr, how = to_uint8(arr), "min-max stretched per image"
    return arr, arr.shape[1], arr.shape[0], f"HDF5 {dtype}, {how}", sha


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Square resize, as the lesson does (no padding); antialiased when shrinking."""
    if arr.shape == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))


@contextmanager
def _decode_errors(name: str):
    """Turn any decoding failure into an ImageReadError that names the file and the problem."""
    try:
        yield
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(name, "the file does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(name, f"declared image size is too large ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(name, "not a readable image (unknown or corrupt format)") from None
    except Exception as exc:  # truncated files, broken DICOM, bad HDF5 rows, ...
        raise ImageReadError(name, f"cannot decode image: {exc}") from None


def _finish(arr: np.ndarray, name: str, size: int | None) -> np.ndarray:
    if arr.size == 0:
        raise ImageReadError(name, "the image has no pixels")
    if size:
        arr = resize(arr, size)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def is_dicom(name: str, head: bytes) -> bool:
    """A .dcm/.dicom name, or the 'DICM' marker after the 128-byte preamble (`head`: the first 132 bytes)."""
    return Path(name).suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM"


def decode_image(data: bytes, name: str, size: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode image bytes (PNG, JPEG, TIFF, BMP or DICOM) to uint8 grayscale, resized to size x size
    when given. `name` is what errors name (and a .dcm suffix marks DICOM without a preamble)."""
    with _decode_errors(name):
        if not data:
            raise ValueError("the file is empty (0 bytes)")
        sha = hashlib.sha1(data).hexdigest()
        arr, w, h, mode = _decode_dicom(data, name) if is_dicom(name, data[:132]) else _decode_pil(data, size)
    return _finish(arr, name, size), ImageInfo(w, h, mode, sha)


def read_image(path: str, size: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode `path` (a file, or an HDF5 row `file.h5::i`) to uint8 grayscale (resized to size x size
    when given) and its info."""
    if H5_SEP not in path:
        with _decode_errors(path):
            data = Path(path).read_bytes()
        return decode_image(data, path, size)
    with _decode_errors(path):
        arr, w, h, mode, sha = _decode_h5(path)
    return _finish(arr, path, size), ImageInfo(w, h, mode, sha)


def normalize_array(pixels: np.ndarray, mode: str, channels: int = 1) -> np.ndarray:
    """uint8 N x H x W -> float32 N x C x H x W, as `cxrlab.data.preprocess.normalize` does on tensors
    (equal within 1e-5, tested): standardize (per image, zero mean and unit sample std; a blank image
    stays 0), unit ([0, 1]), imagenet ([0, 1] on 3 channels, ImageNet mean/std) or xrv ([-1024, 1024])."""
    x = np.asarray(pixels, np.float32)[:, None]
    if mode == "standardize":
        flat = x.reshape(len(x), -1)
        mean = flat.mean(axis=1, dtype=np.float64).astype(np.float32)
        centred = flat - mean[:, None]
        var = np.einsum("ij,ij->i", centred, centred) / max(flat.shape[1] - 1, 1)
        x = (centred / np.maximum(np.sqrt(var), 255e-6)[:, None]).reshape(x.shape).astype(np.float32)
    elif mode == "xrv":
        x = x * np.float32(2048.0 / 255.0) - np.float32(1024.0)
    elif mode in ("unit", "imagenet"):
        x = x / np.float32(255.0)
        if mode == "imagenet":
            mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
            std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
            return ((np.repeat(x, 3, axis=1) - mean) / std).astype(np.float32)
    else:
        raise ValueError(f"unknown normalization {mode!r}")
    return np.ascontiguousarray(np.repeat(x, channels, axis=1) if channels != 1 else x)
