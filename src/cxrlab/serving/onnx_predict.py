"""Score chest X-rays with an exported cxrlab model: numpy, Pillow and onnxruntime only (no torch).

    python onnx_predict.py IMAGE [IMAGE ...]      (run from the export folder, or pass --dir)

Images are read and normalised by `cxrlab_images.py` beside this file, a copy of cxrlab's own
preprocessing (`cxrlab/data/images.py`), so PNG, JPEG, TIFF, BMP and DICOM (with pydicom installed)
give the score cxrlab gives for the plain image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxrlab_images import ImageReadError, normalize_array, read_image  # noqa: E402


def predict(paths: list[str], folder: Path) -> list[dict]:
    meta = json.loads((folder / "preprocess.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.stack([read_image(p, meta["image_size"])[0] for p in paths])
    batch = normalize_array(pixels, meta["normalization"], meta["channels"])
    logits = session.run(None, {"image": batch})[0].astype(np.float64)
    if meta.get("findings"):  # a multi-label model: every finding, highest probability first
        probs = 1 / (1 + np.exp(-logits.reshape(len(paths), -1)))
        return [{"path": p, "findings": sorted(({"finding": f, "probability": float(q), "threshold": meta["thresholds"][f],
                                                 "positive": bool(q >= meta["thresholds"][f])}
                                                for f, q in zip(meta["findings"], row)), key=lambda r: -r["probability"])}
                for p, row in zip(paths, probs)]
    probs = 1 / (1 + np.exp(-logits.reshape(-1)))
    if meta.get("temperature"):  # as cxrlab applies it: to the probability's logit
        eps = 1e-7
        p = np.clip(probs, eps, 1 - eps)
        probs = 1 / (1 + np.exp(-np.log(p / (1 - p)) / meta["temperature"]))
    return [{"path": p, "probability": float(q),
             "label": meta["positive"] if q >= meta["threshold"] else meta["negative"]} for p, q in zip(paths, probs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    try:
        print(json.dumps(predict(args.images, args.dir), indent=2))
    except ImageReadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
