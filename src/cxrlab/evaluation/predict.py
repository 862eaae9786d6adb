"""Load a run's best model and score images, preprocessing exactly as training did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..checkpoint import load_state_dict
from ..config import TrainConfig, load_yaml
from ..data import LoadedData, load_data
from ..data.augment import mean_over_views, tta_views, with_views
from ..data.preprocess import normalize
from ..errors import CxrlabError
from ..models import create_model
from ..runs import RunDir
from ..training.device import autocast, select_device
from ..training.trainer import model_spec


def load_run_model(run_dir: str | Path, device: str = "auto"):
    """(model in eval mode, TrainConfig) from a run directory's config.yaml and best weights."""
    run = RunDir(run_dir)
    for needed in (run.config, run.best_weights):
        if not needed.exists():
            raise CxrlabError(f"{run.path}: missing {needed.name}; is this a finished cxrlab run?")
    cfg = load_yaml(TrainConfig, run.config)
    model = create_model(model_spec(cfg))
    model.load_state_dict(load_state_dict(run.best_weights))
    model.to(select_device(device), memory_format=torch.channels_last).eval()
    return model, cfg


def run_data(run_dir: str | Path, cfg: TrainConfig) -> LoadedData:
    """The run's own data with its saved split."""
    return load_data(cfg.source, cfg.positive, cfg.negative, cfg.images_dir, cfg.data, split_file=RunDir(run_dir).split)


def score_split(model, cfg: TrainConfig, data: LoadedData, split: str, tta: int | None = None) -> pd.DataFrame:
    """path, patient, y, score for one split ('all' for every image). With tta=N the score is the
    mean probability over the plain image and N fixed views within the run's augmentation ranges
    (None: the run's own setting, `run_tta`)."""
    frame = data.frame if split == "all" else data.frame[data.frame["split"] == split]
    frame = frame[["path", "patient", "y", "row"]].reset_index(drop=True)
    spec = model_spec(cfg)
    dataset = data.dataset("train")  # any split: we set the rows ourselves
    dataset.indices = frame["row"].to_numpy()
    dataset.augment = None
    views = tta_views(cfg.data.augment, run_tta(cfg) if tta is None else tta)
    device = next(model.parameters()).device

    def forward(x):
        with torch.no_grad(), autocast(device, cfg.precision):
            return model(x.to(device, memory_format=torch.channels_last))

    scores = [probabilities_over_views(forward, images, views, spec)
              for images, _ in DataLoader(dataset, batch_size=max(1, 64 // (1 + len(views))), collate_fn=_stack)]
    frame["score"] = torch.cat(scores).numpy() if scores else np.zeros(0)
    return frame.drop(columns="row")


def probabilities_over_views(forward, images: torch.Tensor, views, spec) -> torch.Tensor:
    """uint8 N x 1 x H x W -> N probabilities, each the mean over the plain image and `views`.
    `forward` maps a normalised batch to logits (a PyTorch model or an ONNX Runtime session); the
    one path for evaluation, `cxrlab predict`, the server and the quiz, so their scores agree."""
    logits = forward(normalize(with_views(images, views), spec.normalization, spec.in_chans))
    return mean_over_views(torch.sigmoid(torch.as_tensor(logits).float().reshape(-1)).cpu(), len(views))


def run_tta(cfg: TrainConfig) -> int:
    """Test-time views a run is scored with: its `tta` setting when it trained with augmentation
    (the views come from the same ranges); a run trained without augmentation sees the plain image."""
    return cfg.tta if cfg.data.augment.enabled else 0


def _stack(batch):
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def predict_split(run_dir: str | Path, split: str = "test", data: LoadedData | None = None,
                  device: str = "auto", tta: int | None = None) -> pd.DataFrame:
    """Scores for one split of the run's own data (or of `data`)."""
    model, cfg = load_run_model(run_dir, device)
    return score_split(model, cfg, data if data is not None else run_data(run_dir, cfg), split, tta)
