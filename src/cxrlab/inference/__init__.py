"""RunModel: the one way to load a trained run and score images.

It owns what scoring needs, read from the run directory: the model spec and weights, the
preprocessing, the test-time views, the temperature and the stored operating point, the device and
the backend (PyTorch, or ONNX Runtime on CPU). evaluate, predict, serve, explain, export, the report
and the quiz all score through it, so an image gets one probability whatever command asks.

Scoring precision is fp32 everywhere: ONNX Runtime scores in fp32, and the operating point must be
chosen on exactly the scores every path produces (bf16 autocast stays a training speed-up).
"""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import numpy as np
import torch

from ..accel import accelerate, plain, runs_in_kernels
from ..checkpoint import load_state_dict
from ..data.augment import mean_over_views, tta_views, with_views
from ..data.dataset import read_rows
from ..data.images import decode_image, read_image
from ..data.preprocess import normalize
from ..device import select_device
from ..errors import CxrlabError
from ..models import create_model, model_spec
from ..runs import MODEL_CARD, OperatingPoint, RunDir
from .calibration import apply_temperature, fit_temperature
from .thresholds import choose_threshold

SCORE_SLICE_BATCHES = 4  # `score_data` reads a split this many forward batches at a time

log = logging.getLogger("cxrlab.inference")
DEFAULT_POLICY = "sensitivity:0.95"  # screening first: miss few sick patients
BACKENDS = ("torch", "onnxruntime", "auto")


def run_tta(cfg) -> int:
    """Test-time views a run is scored with: its `tta` setting when it trained with augmentation
    (the views come from the same ranges); a run trained without augmentation sees the plain image."""
    return cfg.tta if cfg.data.augment.enabled else 0


def onnx_bytes(model: torch.nn.Module, spec) -> bytes:
    """The model as ONNX (input "image" N x C x S x S, output "logit"), batch size free."""
    model = plain(copy.deepcopy(model)).float().eval().to("cpu", memory_format=torch.contiguous_format)
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(2, spec.in_chans, spec.image_size, spec.image_size),), buf,
                      input_names=["image"], output_names=["logit"],
                      dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}}, opset_version=17, dynamo=False)
    return buf.getvalue()


class RunModel:
    """A run directory's model, loaded once, scoring many times (scikit-learn's verbs):
    `predict_proba(pixels)` the probability of the positive class, `predict(pixels)` 0/1 at the stored
    threshold, `logits(pixels)` the plain images' logits. `pixels` are N x S x S uint8 arrays as
    `read(path)` / `decode(bytes)` return them.

    tta: test-time views to score with; None: those the stored operating point was chosen on (or the
    run's own setting before one is stored). With other views than the stored point's, the point does
    not apply (`point` is None) and the threshold is 0.5 until one is chosen for these scores.
    site: use the operating point chosen for that site (`cxrlab threshold --data --site`) instead."""

    def __init__(self, run_dir: str | Path, device: str = "auto", backend: str = "torch", tta: int | None = None,
                 site: str | None = None):
        if backend not in BACKENDS:
            raise CxrlabError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.run = RunDir(run_dir)
        for needed in (self.run.config, self.run.best_weights):
            if not needed.exists():
                raise CxrlabError(f"{self.run.path}: missing {needed.name}; is this a finished cxrlab run?")
        self.config = self.run.read_config()
        self.spec = model_spec(self.config)
        self.model = create_model(self.spec)
        self.model.load_state_dict(load_state_dict(self.run.best_weights))
        self.device = select_device(device)
        if self.device.type == "cpu":
            accelerate(self.model)  # the same scores, faster (cxrlab.accel)
        self.model.to(self.device, memory_format=torch.channels_last).eval()
        self.positive, self.negative = self.run.task_names()
        # multi-label: the findings, in the order of the model's outputs (None: one binary output)
        self.findings = list(self.config.findings) if self.config.findings else None
        stored = self.run.read_site(site)[0] if site else self.run.read_point()
        self.tta = (stored.tta if stored else run_tta(self.config)) if tta is None else int(tta)
        self.point = stored if stored is not None and stored.tta == self.tta else None
        self.views = tta_views(self.config.data.augment, self.tta)
        if backend == "auto" and runs_in_kernels(self.model):
            backend = "torch"  # cxrlab's CPU kernels beat ONNX Runtime on these models (BENCHMARKS.md)
        self.session = self._onnx_session(backend) if backend != "torch" and self.device.type == "cpu" else None
        if backend == "onnxruntime" and self.session is None:
            raise CxrlabError(f"{self.run.path}: ONNX Runtime scores on the CPU only; use --device cpu")
        self.backend = "onnxruntime" if self.session is not None else "torch"

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", backend: str = "torch", tta: int | None = None,
             site: str | None = None) -> "RunModel":
        return cls(run_dir, device, backend, tta, site)

    # -- the operating point -------------------------------------------------------------------------
    @property
    def threshold(self):
        """The stored threshold; multi-label: an array, one per finding (0.5 where none was chosen)."""
        if self.findings:
            chosen = (self.point.thresholds or {}) if self.point else {}
            return np.array([chosen.get(f, 0.5) for f in self.findings])
        return self.point.threshold if self.point else 0.5

    @property
    def policy(self) -> str:
        if self.point:
            return self.point.policy
        return "0.5 (no operating point for these scores: `cxrlab threshold` chooses one on validation)"

    @property
    def temperature(self) -> float | None:
        return self.point.temperature if self.point else None

    @property
    def card(self) -> dict:
        """The model card the server and the report show (one text, `runs.MODEL_CARD`)."""
        info = self.run.read_info() if self.run.info.exists() else {}
        if self.findings:  # multi-label: the findings, each with its own threshold
            task = {"findings": self.findings, "positive": ", ".join(self.findings), "negative": self.negative}
            threshold = dict(zip(self.findings, map(float, self.threshold)))
        else:
            task, threshold = {"positive": self.positive, "negative": self.negative}, self.threshold
        return {"model": self.spec.name, "task": task,
                "input": {"size": self.spec.image_size, "channels": self.spec.in_chans,
                          "normalization": self.spec.normalization},
                "threshold": threshold, "policy": self.policy, "test_time_views": len(self.views),
                "trained_on": info.get("counts"),
                "intended_use": MODEL_CARD["intended_use"].format(positive=self.positive),
                "limitations": MODEL_CARD["limitations"]}

    def finding_index(self, finding: str) -> int:
        """The output of `finding` (case-insensitive) of a multi-label run; any other name is a clear error."""
        names = {f.casefold(): k for k, f in enumerate(self.findings or [])}
        if finding.strip().casefold() not in names:
            scores = ", ".join(self.findings) if self.findings else f"one task ({self.positive} vs {self.negative})"
            raise CxrlabError(f"{self.run.path} does not score {finding!r}; it scores {scores}")
        return names[finding.strip().casefold()]

    # -- images in ---------------------------------------------------------------------------------
    def read(self, path: str) -> np.ndarray:
        """An image file (or HDF5 row) as the model's input pixels, S x S uint8."""
        return read_image(path, self.spec.image_size)[0]

    def decode(self, data: bytes, name: str = "upload") -> np.ndarray:
        """Uploaded bytes (PNG, JPEG, DICOM...) decoded in memory by the same reader as training."""
        return decode_image(data, name, self.spec.image_size)[0]

    # -- scores out --------------------------------------------------------------------------------
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised N x C x S x S float32 -> N logits (N x K for K findings), in fp32."""
        if self.session is not None:
            out = torch.from_numpy(self.session.run(None, {"image": batch.numpy()})[0])
        else:
            with torch.no_grad():
                out = self.model(batch.to(self.device, memory_format=torch.channels_last)).float().cpu()
        return out.reshape(len(batch), -1) if self.findings else out.reshape(-1)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """N x S x S uint8 -> the plain images' N logits."""
        images = torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(1)
        return self._forward(normalize(images, self.spec.normalization, self.spec.in_chans)).numpy()

    def predict_proba(self, pixels: np.ndarray, calibrated: bool = True, batch_size: int = 64) -> np.ndarray:
        """N x S x S uint8 -> N probabilities (N x K, one per finding, for a multi-label run): the mean over
        the plain image and the test-time views,
        temperature-scaled when the operating point is calibrated (`calibrated=False`: before it).
        Chunked by image, and each image's views are fixed, so a score never depends on its batch."""
        pixels = np.asarray(pixels)
        per_chunk = self._images_per_batch(batch_size)
        out = []
        for start in range(0, len(pixels), per_chunk):
            images = torch.from_numpy(np.ascontiguousarray(pixels[start:start + per_chunk])).unsqueeze(1)
            batch = normalize(with_views(images, self.views), self.spec.normalization, self.spec.in_chans)
            out.append(mean_over_views(torch.sigmoid(self._forward(batch)), len(self.views)).numpy())
        probs = np.concatenate(out) if out else np.zeros((0, len(self.findings)) if self.findings else 0, np.float32)
        return apply_temperature(probs, self.temperature) if calibrated and self.temperature else probs

    def _images_per_batch(self, batch_size: int = 64) -> int:
        """Images per forward pass in `predict_proba`: each brings its views into the batch."""
        return max(1, batch_size // (1 + len(self.views)))

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """N x S x S uint8 -> 0/1 at the stored threshold (N x K at each finding's, multi-label)."""
        return (self.predict_proba(pixels) >= self.threshold).astype(int)

    def score_data(self, data, split: str = "all", calibrated: bool = True):
        """path, patient, y, score for one split of a loaded data set ('all': every image); multi-label:
        y:<finding> and score:<finding> per finding (y NaN where not labelled)."""
        frame = data.frame if split == "all" else data.frame[data.frame["split"] == split]
        labels = [f"y:{f}" for f in self.findings] if self.findings else ["y"]
        frame = frame[["path", "patient", *labels, "row"]].reset_index(drop=True)
        # read and scored a slice at a time, not the split at once: a split of 7,500 cached images held 0.5 GB
        # and pulled as much of the cache's pages into memory (BENCHMARKS.md, session 15). A slice is a whole
        # number of predict_proba's batches, so every batch, and so every score, is what one call would make.
        rows, step = frame["row"].to_numpy(), SCORE_SLICE_BATCHES * self._images_per_batch()
        probs = np.concatenate([self.predict_proba(read_rows(data.images, rows[i:i + step]), calibrated)
                                for i in range(0, len(rows) or 1, step)])  # an empty split: one empty slice
        if self.findings:
            for k, finding in enumerate(self.findings):
                frame[f"score:{finding}"] = probs[:, k]
        else:
            frame["score"] = probs
        return frame.drop(columns="row")

    def own_data(self):
        """The run's own data with its saved split."""
        from ..data import load_data

        cfg = self.config
        return load_data(cfg.source, cfg.positive, cfg.negative, cfg.images_dir, cfg.data, split_file=self.run.split,
                         findings=cfg.findings)

    # -- choosing an operating point ------------------------------------------------------------------
    def choose_point(self, policy: str | None = None, calibrate: bool = False, data=None) -> OperatingPoint:
        """The threshold of `policy` (and a temperature when `calibrate`) on validation scores made the
        way this RunModel scores (its views); multi-label: one per finding. Returns it; `use_point` applies
        it, `store_point` keeps it."""
        data = data if data is not None else self.own_data()
        val = self.score_data(data, "val", calibrated=False)
        if self.findings:
            return self._choose_findings_points(val, policy or DEFAULT_POLICY, calibrate)
        y, score = val["y"].to_numpy(), val["score"].to_numpy()
        temperature = fit_temperature(y, score) if calibrate else None
        if temperature:
            score = apply_temperature(score, temperature)
        return OperatingPoint(policy or DEFAULT_POLICY, choose_threshold(policy or DEFAULT_POLICY, y, score),
                              temperature, self.tta, "val", int(len(y)), int(y.sum()))

    def _choose_findings_points(self, val, policy: str, calibrate: bool) -> OperatingPoint:
        """One threshold per finding by `policy`, each on its labelled validation images; a finding whose
        validation images hold one class keeps 0.5 (and is left out of `thresholds`)."""
        if calibrate:
            raise CxrlabError("temperature scaling is not available for multi-label runs yet")
        chosen = {}
        for finding in self.findings:
            y, score = val[f"y:{finding}"].to_numpy(), val[f"score:{finding}"].to_numpy()
            known = ~np.isnan(y)
            try:
                chosen[finding] = choose_threshold(policy, y[known].astype(int), score[known])
            except CxrlabError:
                log.warning("%s: %s has one class in validation; its threshold stays 0.5", self.run.path, finding)
        labelled = val[[f"y:{f}" for f in self.findings]].to_numpy(float)
        return OperatingPoint(policy, 0.5, None, self.tta, "val", int(len(val)),
                              int(np.nansum(labelled.max(axis=1) == 1)), thresholds=chosen)

    def use_point(self, point: OperatingPoint) -> None:
        if point.tta != self.tta:
            raise CxrlabError(f"an operating point chosen with {point.tta} test-time views does not fit scores "
                              f"made with {self.tta}")
        self.point = point

    def store_point(self, point: OperatingPoint) -> None:
        """Keep `point` as the run's operating point: predict, serve and export use it from now on."""
        self.use_point(point)
        self.run.write_point(point)

    # -- backends -----------------------------------------------------------------------------------
    def _onnx_session(self, backend: str):
        """The model in ONNX Runtime, with the same scores (tests): faster than eager PyTorch on CPU for models
        cxrlab has no kernels for; seed-cnn and seed-cnn-bn in cxrlab's kernels are faster still, so `auto`
        keeps them in PyTorch (BENCHMARKS.md, session 12). Gradients (heatmaps) stay in PyTorch."""
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            return ort.InferenceSession(onnx_bytes(self.model, self.spec), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            if backend == "onnxruntime":
                raise CxrlabError(f"{self.run.path}: cannot run the model in ONNX Runtime ({exc})") from None
            log.warning("ONNX Runtime unavailable for %s (%s); scoring with PyTorch", self.run.path, exc)
            return None


__all__ = ["RunModel", "OperatingPoint", "run_tta", "onnx_bytes", "DEFAULT_POLICY"]
