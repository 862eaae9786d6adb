"""Score chest X-rays with an exported cxrlab model: numpy, Pillow and onnxruntime only (no torch).

    python onnx_predict.py IMAGE [IMAGE ...]      (run from the export folder, or pass --dir)

Preprocessing mirrors cxrlab exactly: 8-bit grayscale, square bilinear resize, then the run's
normalisation (per-image standardisation, [0, 1], or ImageNet mean/std on 3 channels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def load(path: str, size: int) -> np.ndarray:
    im = Image.open(path)
    arr = np.asarray(im.convert("L")) if im.mode in ("L", "RGB", "RGBA", "LA", "P", "1") else np.asarray(im)
    if arr.dtype != np.uint8:  # deeper than 8 bits: min-max to 0..255, as cxrlab does
        arr = arr.astype(np.float32)
        arr = np.round((arr - arr.min()) * (255.0 / max(float(arr.max() - arr.min()), 1e-12))).astype(np.uint8)
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    return arr


def normalize(batch: np.ndarray, mode: str, channels: int) -> np.ndarray:
    x = batch.astype(np.float32)[:, None] / 255.0
    if mode == "standardize":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True, ddof=1), 1e-6)
        x = (x - mean) / std
    elif mode == "imagenet":
        return ((np.repeat(x, 3, axis=1) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    return np.repeat(x, channels, axis=1) if channels != 1 else x


def predict(paths: list[str], folder: Path) -> list[dict]:
    meta = json.loads((folder / "preprocess.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = normalize(np.stack([load(p, meta["image_size"]) for p in paths]), meta["normalization"], meta["channels"])
    logits = session.run(None, {"image": batch})[0].reshape(-1)
    if meta.get("temperature"):
        logits = logits / meta["temperature"]
    probs = 1 / (1 + np.exp(-logits))
    return [{"path": p, "probability": float(q),
             "label": meta["positive"] if q >= meta["threshold"] else meta["negative"]} for p, q in zip(paths, probs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    print(json.dumps(predict(args.images, args.dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
