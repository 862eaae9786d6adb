"""`cxrlab export`: ONNX (runs with onnxruntime alone, no torch) or TorchScript, with the
preprocessing and threshold beside the model so nothing has to be guessed."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import torch

from ..accel import plain
from ..errors import ConfigError
from ..inference import RunModel, onnx_bytes

STANDALONE = Path(__file__).with_name("onnx_predict.py")
PREPROCESSING = Path(__file__).parents[1] / "data" / "images.py"  # shipped as cxrlab_images.py: one preprocessing


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Write model.onnx (or model.torchscript.pt), preprocess.json and, for ONNX, onnx_predict.py with
    cxrlab_images.py, cxrlab's preprocessing (numpy + Pillow + onnxruntime only), into `out` (default RUN/export)."""
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format must be onnx or torchscript, got {fmt!r}")
    predictor = RunModel(run_dir, device="cpu")
    point = {"threshold": predictor.threshold, "policy": predictor.policy, "temperature": predictor.temperature}
    if predictor.findings:  # one threshold per finding, keyed by name
        point = {"threshold": None, "thresholds": dict(zip(predictor.findings, map(float, predictor.threshold))),
                 "policy": predictor.policy, "temperature": None}
    if predictor.views and predictor.point is not None:
        # the exported model scores the plain image: its threshold is chosen on plain validation scores
        from ..evaluation.evaluate import plain_operating_point

        point = plain_operating_point(predictor.run.path).to_dict()
    out = Path(out) if out else predictor.run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    size, chans = predictor.spec.image_size, predictor.spec.in_chans
    if fmt == "onnx":
        path = out / "model.onnx"
        path.write_bytes(onnx_bytes(predictor.model, predictor.spec))
        shutil.copy(STANDALONE, out / STANDALONE.name)
        shutil.copy(PREPROCESSING, out / "cxrlab_images.py")
    else:
        path = out / "model.torchscript.pt"
        model = plain(copy.deepcopy(predictor.model)).float().eval().to(memory_format=torch.contiguous_format)
        # TorchScript is deprecated in favour of torch.export, but it is what LibTorch (C++) and older
        # torch versions load; its FutureWarnings would only repeat that on every export
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.trace(model, torch.randn(2, chans, size, size)).save(str(path))
    (out / "preprocess.json").write_text(json.dumps({
        "image_size": size, "channels": chans,
        "normalization": predictor.spec.normalization, "positive": predictor.positive,
        "negative": predictor.negative, "threshold": point["threshold"], "policy": point["policy"],
        "temperature": point["temperature"], "test_time_views": 0,
        # multi-label: the model's K outputs are these findings, in this order, each with its threshold
        **({"findings": predictor.findings,
            "thresholds": {f: (point.get("thresholds") or {}).get(f, 0.5) for f in predictor.findings}}
           if predictor.findings else {}),
        "resize": "cxrlab_images.read_image: cxrlab's own decoding, 8-bit grayscale, square bilinear resize",
    }, indent=2))
    return path
