"""`cxrlab export`: ONNX (runs with onnxruntime alone, no torch) or TorchScript, with the
preprocessing and threshold beside the model so nothing has to be guessed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import ConfigError
from .predictor import Predictor

STANDALONE = Path(__file__).with_name("onnx_predict.py")


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Write model.onnx (or model.torchscript.pt), preprocess.json and, for ONNX, onnx_predict.py
    (numpy + Pillow + onnxruntime only) into `out` (default RUN/export)."""
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format must be onnx or torchscript, got {fmt!r}")
    predictor = Predictor(run_dir, device="cpu")
    out = Path(out) if out else predictor.run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    model = predictor.model.float().eval().to(memory_format=torch.contiguous_format)
    size, chans = predictor.spec.image_size, predictor.spec.in_chans
    example = torch.randn(2, chans, size, size)
    if fmt == "onnx":
        path = out / "model.onnx"
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logit"],
                          dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        shutil.copy(STANDALONE, out / STANDALONE.name)
    else:
        path = out / "model.torchscript.pt"
        torch.jit.trace(model, example).save(str(path))
    (out / "preprocess.json").write_text(json.dumps({
        "image_size": size, "channels": chans,
        "normalization": predictor.spec.normalization, "positive": predictor.positive,
        "negative": predictor.negative, "threshold": predictor.threshold, "policy": predictor.policy,
        "temperature": predictor.temperature,
        "resize": "grayscale 8-bit, square bilinear resize (antialiased), as cxrlab.data.images.read_image",
    }, indent=2))
    return path
