"""A run's model ready to score new images exactly as training preprocessed them, with the
run's stored threshold (chosen on validation data)."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..data.augment import tta_views
from ..data.images import decode_image, read_image
from ..data.preprocess import normalize
from ..errors import CxrlabError, ImageReadError
from ..evaluation.calibration import apply_temperature
from ..evaluation.predict import probabilities_over_views, run_tta
from ..runs import RunDir

log = logging.getLogger("cxrlab.serve")


@dataclass
class Prediction:
    path: str
    probability: float
    label: str
    positive: bool
    threshold: float
    policy: str
    heatmap: np.ndarray | None = None


class Predictor:
    """Loads once, predicts many times. Without a stored threshold (run not evaluated yet) the
    threshold is 0.5 and the policy says so. backend: "torch", or "onnxruntime" (CPU only; "auto"
    uses it when installed and falls back to torch when the model does not export)."""

    def __init__(self, run_dir: str | Path, device: str = "auto", backend: str = "torch"):
        from ..evaluation.predict import load_run_model
        from ..training.trainer import model_spec

        self.run = RunDir(run_dir)
        self.model, self.cfg = load_run_model(self.run, device)
        self.spec = model_spec(self.cfg)
        self.device = next(self.model.parameters()).device
        point = json.loads(self.run.threshold.read_text()) if self.run.threshold.exists() else {}
        self.threshold = float(point.get("threshold", 0.5))
        self.policy = point.get("policy", "0.5 (run not evaluated: `cxrlab evaluate` stores a validated threshold)")
        self.temperature = point.get("temperature")
        # score as the stored threshold was chosen: with its test-time views (none for thresholds
        # stored before views existed), or the run's own setting when it has no threshold yet
        self.views = tta_views(self.cfg.data.augment, int(point.get("tta", 0)) if point else run_tta(self.cfg))
        info = self.run.read_info() if self.run.info.exists() else {}
        task = info.get("task") or {}  # the resolved task; runs trained before config.yaml named it had null there
        self.positive = self.cfg.positive or task.get("positive") or "positive"
        self.negative = "/".join(task.get("negatives") or self.cfg.negative or ["negative"])
        self.card = {"model": self.spec.name, "task": {"positive": self.positive, "negative": self.negative},
                     "input": {"size": self.spec.image_size, "channels": self.spec.in_chans,
                               "normalization": self.spec.normalization},
                     "threshold": self.threshold, "policy": self.policy, "test_time_views": len(self.views),
                     "trained_on": info.get("counts"),
                     "intended_use": "Teaching and research only. Not a medical device; not for diagnosis.",
                     "limitations": "Trained on a small public data set; performance on other hospitals, "
                                    "devices, ages or views is unknown."}
        self.session = self._onnx_session(backend) if backend != "torch" and self.device.type == "cpu" else None
        self.backend = "onnxruntime" if self.session is not None else "torch"

    def _onnx_session(self, backend: str):
        """The model in ONNX Runtime: on CPU it scores one seed-cnn image in 0.8 ms against 4.6 ms for
        eager PyTorch (128 px; 3.3 against 5.7 ms at 256 px; BENCHMARKS.md), with the same scores
        (tests). Heatmaps stay in PyTorch: they need gradients."""
        try:
            import onnxruntime as ort

            from .export import onnx_bytes

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            return ort.InferenceSession(onnx_bytes(self.model, self.spec), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            if backend == "onnxruntime":
                raise CxrlabError(f"{self.run.path}: cannot run the model in ONNX Runtime ({exc})") from None
            log.warning("ONNX Runtime unavailable for %s (%s); scoring with PyTorch", self.run.path, exc)
            return None

    def pixels(self, path: str) -> np.ndarray:
        return read_image(path, self.spec.image_size)[0]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """N x S x S uint8 -> N probabilities (temperature-scaled when the run was calibrated)."""
        images = torch.from_numpy(np.array(pixels)).unsqueeze(1)
        probs = probabilities_over_views(self._logits, images, self.views, self.spec).numpy()
        return apply_temperature(probs, self.temperature) if self.temperature else probs

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"image": batch.numpy()})[0])
        with torch.no_grad():
            return self.model(batch.to(self.device, memory_format=torch.channels_last))

    def heatmap(self, pixels: np.ndarray, method: str = "gradcam") -> np.ndarray:
        return self.heatmaps(pixels[None], method)[0]

    def heatmaps(self, pixels: np.ndarray, method: str = "gradcam") -> np.ndarray:
        """N x S x S uint8 -> N x S x S maps in [0, 1], one backward pass for the batch."""
        from ..saliency.methods import compute_maps, default_target_layer, explainable_copy

        if not hasattr(self, "_explain_model"):
            self._explain_model = explainable_copy(self.model).float().cpu()
            self._layer = default_target_layer(self._explain_model)
        batch = normalize(torch.from_numpy(np.array(pixels)).unsqueeze(1), self.spec.normalization, self.spec.in_chans)
        return compute_maps(self._explain_model, batch.contiguous(), method, self._layer)

    def decode(self, data: bytes, name: str = "upload") -> np.ndarray:
        """Uploaded bytes (PNG, JPEG, DICOM...) -> the model's input pixels, decoded in memory by the
        same reader as training."""
        return decode_image(data, name, self.spec.image_size)[0]

    def score_batch(self, items: list[tuple[np.ndarray, str | None]]) -> list[tuple[float, np.ndarray | None]]:
        """(pixels, heatmap method or None) per request -> (probability, map or None), with one
        forward pass for all and one saliency pass per method: what the server's batcher calls."""
        probs = self.probabilities(np.stack([px for px, _ in items]))
        maps: list[np.ndarray | None] = [None] * len(items)
        for method in {m for _, m in items if m}:
            idx = [i for i, (_, m) in enumerate(items) if m == method]
            for i, cam in zip(idx, self.heatmaps(np.stack([items[i][0] for i in idx]), method)):
                maps[i] = cam
        return [(float(p), cam) for p, cam in zip(probs, maps)]

    def result(self, path: str, p: float, heat=None) -> Prediction:
        positive = bool(p >= self.threshold)
        return Prediction(path, float(p), self.positive if positive else self.negative, positive,
                          self.threshold, self.policy, heat)

    def predict_paths(self, paths: list[str], method: str | None = None, batch_size: int = 32,
                      skipped: list[dict] | None = None) -> list[Prediction]:
        """Predictions for image files. An unreadable file is an error, or, when a `skipped` list is
        given, is left out and recorded there (path, reason)."""
        out = []
        for start in range(0, len(paths), batch_size):
            chunk, arrays = [], []
            for path in paths[start:start + batch_size]:
                try:
                    arrays.append(self.pixels(path))
                except ImageReadError as exc:
                    if skipped is None:
                        raise
                    skipped.append({"path": exc.path, "reason": exc.reason})
                    continue
                chunk.append(path)
            if not chunk:
                continue
            pixels = np.stack(arrays)
            maps = self.heatmaps(pixels, method) if method else [None] * len(chunk)
            for p, prob, cam in zip(chunk, self.probabilities(pixels), maps):
                out.append(self.result(p, prob, cam))
        return out

    def predict_bytes(self, data: bytes, name: str = "upload", method: str | None = None) -> Prediction:
        """Score an uploaded file (PNG, JPEG, DICOM...). Decoding goes through the same reader."""
        pixels = self.decode(data, name)
        return self.result(name, self.probabilities(pixels[None])[0], self.heatmap(pixels, method) if method else None)


@lru_cache(maxsize=1)
def _jet() -> np.ndarray:
    from matplotlib import cm

    # matplotlib's own 256-entry table, one uint32 per RGBA colour: one gather per pixel
    return (cm.jet(np.arange(256)) * 255).astype(np.uint8).view(np.uint32).reshape(256)


def heatmap_png(cam: np.ndarray) -> bytes:
    """An RGBA PNG of the jet-coloured map (alpha follows the map), to lay over the X-ray. Indexes
    matplotlib's 256-entry table the way matplotlib does: the same pixels as cm.jet(cam), in 3.2
    instead of 5.0 ms for a 256 px map."""
    from PIL import Image

    cam = np.clip(np.nan_to_num(cam), 0, 1)
    rgba = _jet()[np.minimum((cam * 256).astype(np.int32), 255)].view(np.uint8).reshape(*cam.shape, 4)
    rgba[..., 3] = (cam * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
