"""Load a run's best model and score a split, preprocessing exactly as training did."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..checkpoint import load_state_dict
from ..config import TrainConfig, load_yaml
from ..data import LoadedData, load_data
from ..data.dataset import make_collate
from ..errors import CxrlabError
from ..models import create_model
from ..runs import RunDir
from ..train.device import select_device
from ..train.trainer import model_spec, predict_scores


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


def predict_split(run_dir: str | Path, split: str = "test", data: LoadedData | None = None,
                  device: str = "auto") -> pd.DataFrame:
    """path, patient, y, score for one split of the run's own data and split.csv."""
    model, cfg = load_run_model(run_dir, device)
    if data is None:
        data = load_data(cfg.source, cfg.positive, cfg.negative, cfg.images_dir, cfg.data,
                         split_file=RunDir(run_dir).split)
    spec = model_spec(cfg)
    loader = DataLoader(data.dataset(split), batch_size=64, collate_fn=make_collate(spec.normalization, spec.in_chans))
    dev = next(model.parameters()).device
    y, scores, _ = predict_scores(model, loader, dev, cfg.precision)
    frame = data.frame[data.frame["split"] == split][["path", "patient", "y"]].reset_index(drop=True)
    frame["score"] = scores
    return frame
