"""`cxrlab export`: ONNX (runs with onnxruntime alone, no torch) or TorchScript, with the
preprocessing and threshold beside the model so nothing has to be guessed."""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path

import torch

from ..errors import ConfigError
from .predictor import Predictor

STANDALONE = Path(__file__).with_name("onnx_predict.py")


def onnx_bytes(model: torch.nn.Module, spec) -> bytes:
    """The model as ONNX (input "image" N x C x S x S, output "logit"), batch size free."""
    model = copy.deepcopy(model).float().eval().to("cpu", memory_format=torch.contiguous_format)
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(2, spec.in_chans, spec.image_size, spec.image_size),), buf,
                      input_names=["image"], output_names=["logit"],
                      dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}}, opset_version=17, dynamo=False)
    return buf.getvalue()


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Write model.onnx (or model.torchscript.pt), preprocess.json and, for ONNX, onnx_predict.py
    (numpy + Pillow + onnxruntime only) into `out` (default RUN/export)."""
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format must be onnx or torchscript, got {fmt!r}")
    predictor = Predictor(run_dir, device="cpu")
    point = {"threshold": predictor.threshold, "policy": predictor.policy, "temperature": predictor.temperature}
    if predictor.views and predictor.run.threshold.exists():
        # the exported model scores the plain image: its threshold is chosen on plain validation scores
        from ..evaluation.evaluate import plain_operating_point

        point = plain_operating_point(predictor.run.path)
    out = Path(out) if out else predictor.run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    size, chans = predictor.spec.image_size, predictor.spec.in_chans
    if fmt == "onnx":
        path = out / "model.onnx"
        path.write_bytes(onnx_bytes(predictor.model, predictor.spec))
        shutil.copy(STANDALONE, out / STANDALONE.name)
    else:
        path = out / "model.torchscript.pt"
        model = predictor.model.float().eval().to(memory_format=torch.contiguous_format)
        torch.jit.trace(model, torch.randn(2, chans, size, size)).save(str(path))
    (out / "preprocess.json").write_text(json.dumps({
        "image_size": size, "channels": chans,
        "normalization": predictor.spec.normalization, "positive": predictor.positive,
        "negative": predictor.negative, "threshold": point["threshold"], "policy": point["policy"],
        "temperature": point["temperature"], "test_time_views": 0,
        "resize": "grayscale 8-bit, square bilinear resize (antialiased), as cxrlab.data.images.read_image",
    }, indent=2))
    return path
