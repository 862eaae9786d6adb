"""Load a run's best model and score images, preprocessing exactly as training did."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..checkpoint import load_state_dict
from ..config import TrainConfig, load_yaml
from ..data import LoadedData, load_data
from ..data.augment import build_augment
from ..data.dataset import make_collate
from ..errors import CxrlabError
from ..models import create_model
from ..runs import RunDir
from ..training.device import select_device
from ..training.trainer import model_spec, predict_scores


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


def score_split(model, cfg: TrainConfig, data: LoadedData, split: str, tta: int = 0, seed: int = 0) -> pd.DataFrame:
    """path, patient, y, score for one split ('all' for every image). With tta=N the score is the
    mean probability over the plain image and N augmented copies (the run's augmentation ranges)."""
    frame = data.frame if split == "all" else data.frame[data.frame["split"] == split]
    frame = frame[["path", "patient", "y", "row"]].reset_index(drop=True)
    spec = model_spec(cfg)
    dataset = data.dataset("train")  # any split: we set the rows ourselves
    dataset.indices = frame["row"].to_numpy()
    collate = make_collate(spec.normalization, spec.in_chans)
    device = next(model.parameters()).device
    passes = []
    for i in range(tta + 1):
        dataset.augment = None if i == 0 else build_augment(dataclasses.replace(cfg.data.augment, enabled=True))
        torch.manual_seed(seed + i)
        loader = DataLoader(dataset, batch_size=64, collate_fn=collate, generator=torch.Generator())
        passes.append(predict_scores(model, loader, device, cfg.precision)[1])
    frame["score"] = np.mean(passes, axis=0) if len(frame) else np.zeros(0)
    return frame.drop(columns="row")


def predict_split(run_dir: str | Path, split: str = "test", data: LoadedData | None = None,
                  device: str = "auto", tta: int = 0) -> pd.DataFrame:
    """Scores for one split of the run's own data (or of `data`)."""
    model, cfg = load_run_model(run_dir, device)
    return score_split(model, cfg, data if data is not None else run_data(run_dir, cfg), split, tta)
