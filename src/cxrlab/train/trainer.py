"""The training loop: Adam + BCE with logits, class weighting, best checkpoint, early stopping,
LR reduction on plateau, atomic checkpoints every epoch, exact resume.

A plain loop rather than Lightning: the whole loop is this file, resume is bit-exact (we own
every RNG and state), and on a 2-core CPU it has no framework overhead to measure around.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import atomic_torch_save, load_checkpoint, load_state_dict, save_weights
from ..config import TrainConfig, load_yaml, save_yaml
from ..data import LoadedData, load_data, save_split
from ..data.dataset import make_collate
from ..errors import CxrlabError
from ..models import ModelSpec, count_parameters, create_model
from ..models.registry import backbone_of
from ..models.transfer import freeze_bn_stats, set_trainable_blocks
from ..runs import RunDir
from .device import autocast, needs_grad_scaler, select_device
from .metrics import epoch_metrics

CHECKPOINT_FORMAT = "cxrlab-checkpoint-1"


class TrainingDiverged(CxrlabError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Run:
    """A finished (or stopped) training run and where everything is."""

    dir: RunDir
    config: TrainConfig
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    info: dict


def model_spec(cfg: TrainConfig) -> ModelSpec:
    channels = 3 if cfg.data.normalization == "imagenet" else 1
    return ModelSpec(cfg.model, channels, cfg.data.image_size, cfg.data.normalization, cfg.dropout)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _loaders(data: LoadedData, cfg: TrainConfig, channels: int, epoch: int):
    collate = make_collate(cfg.data.normalization, channels)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)  # the shuffle order depends on epoch only
    train = DataLoader(data.dataset("train", augment=cfg.data.augment.enabled), batch_size=cfg.batch_size,
                       shuffle=True, generator=gen, collate_fn=collate, num_workers=cfg.workers)
    val = DataLoader(data.dataset("val"), batch_size=max(64, cfg.batch_size), collate_fn=collate,
                     num_workers=cfg.workers)
    return train, val


@torch.no_grad()
def predict_scores(model: nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, sigmoid scores, mean BCE loss) over a loader, in eval mode."""
    model.eval()
    ys, logits = [], []
    for x, y in loader:
        with autocast(device):
            out = model(x.to(device, memory_format=torch.channels_last)).float().squeeze(1)
        logits.append(out.cpu())
        ys.append(y)
    y, z = torch.cat(ys), torch.cat(logits)
    loss = float(nn.functional.binary_cross_entropy_with_logits(z, y)) if len(y) else float("nan")
    return y.numpy(), torch.sigmoid(z).numpy(), loss


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]), "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))


def _init_from_run(model: nn.Module, run_dir: str) -> None:
    """Domain transfer: copy the backbone of an earlier run (same architecture) into this model."""
    src = RunDir(run_dir)
    state = load_state_dict(src.best_weights)
    backbone = backbone_of(model)
    prefix = "backbone." if hasattr(model, "backbone") else "features."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, _ = backbone.load_state_dict(sub, strict=False)
    if missing:
        raise CxrlabError(f"--init-from {run_dir}: its backbone does not match this model "
                          f"({len(missing)} tensors missing, e.g. {missing[0]}); use the same --model")


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None,
          progress: Callable[[int, int], None] | None = None) -> Run:
    """Train `cfg` into run directory `out`. With resume=True the run's own config.yaml and
    last.ckpt are used, and training continues where it stopped."""
    run = RunDir(out)
    run.prepare(overwrite=overwrite, resume=resume)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run.last_checkpoint)  # validate before anything else is touched
        cfg = load_yaml(TrainConfig, run.config)
    seed_everything(cfg.seed, cfg.deterministic)
    split_file = run.split if resume else cfg.split_file
    data = load_data(cfg.source, cfg.positive, cfg.negative, cfg.images_dir, cfg.data, split_file, progress)
    if data.task is None:
        raise CxrlabError("no task: pass --positive (and --negative) to choose the classes")
    if not resume:
        save_split(data.frame, run.split)
        save_yaml(cfg, run.config)

    spec = model_spec(cfg)
    device = select_device(cfg.device)
    model = create_model(spec, cfg.pretrained, cfg.weights)
    if cfg.init_from and not resume:
        _init_from_run(model, cfg.init_from)
    set_trainable_blocks(model, cfg.trainable_blocks)
    model.to(device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    mode = "min" if cfg.monitor == "val_loss" else "max"
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.lr_factor,
                                                           patience=cfg.lr_patience, min_lr=cfg.min_lr)
    train_y = data.frame.loc[data.frame["split"] == "train", "y"]
    n_pos, n_neg = int(train_y.sum()), int((train_y == 0).sum())
    pos_weight = torch.tensor([n_neg / max(n_pos, 1)]) if cfg.class_weights else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device) if pos_weight is not None else None)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device) else None

    history: list[dict] = []
    best, best_epoch, bad_epochs, start_epoch = None, 0, 0, 1
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        history = [dict(zip(ckpt["history_columns"], row)) for row in ckpt["history"].tolist()]
        best, best_epoch, bad_epochs = ckpt["best"], ckpt["best_epoch"], ckpt["bad_epochs"]
        start_epoch = ckpt["epoch"] + 1

    stopped_early = False
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loader, val_loader = _loaders(data, cfg, spec.in_chans, epoch)
        model.train()
        freeze_bn_stats(model)
        total, n, correct = 0.0, 0, 0
        for x, y in train_loader:
            x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                logits = model(x).float().squeeze(1)
            loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch}; training stopped. "
                                       f"{run.last_checkpoint} holds the last good epoch. Try a lower --lr "
                                       "or --grad-clip.")
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            total += loss.item() * len(y)
            n += len(y)
            correct += int(((logits.detach() > 0) == (y > 0.5)).sum())
        vy, vs, vloss = predict_scores(model, val_loader, device)
        vm = epoch_metrics(vy, vs)
        row = {"epoch": epoch, "train_loss": total / n, "train_acc": correct / n, "val_loss": vloss,
               "val_acc": vm["acc"], "val_auc": vm["auc"], "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0}
        history.append(row)
        score = row[cfg.monitor]
        if math.isnan(score):
            score = row["val_loss"]
        improved = best is None or (score < best if mode == "min" else score > best)
        if improved:
            best, best_epoch, bad_epochs = score, epoch, 0
            save_weights(model, run.best_weights)
        else:
            bad_epochs += 1
        scheduler.step(score)
        _save_checkpoint(run, model, optimizer, scheduler, epoch, history, best, best_epoch, bad_epochs)
        pd.DataFrame(history).to_csv(run.history, index=False)
        if on_epoch:
            on_epoch({**row, "best": improved})
        if cfg.early_stopping and bad_epochs >= cfg.early_stopping:
            stopped_early = True
            break

    hist = pd.DataFrame(history)
    from .curves import plot_learning_curves

    plot_learning_curves(hist, run.curves)
    info = {
        "task": data.task.to_dict(), "source": str(cfg.source), "model": spec.__dict__,
        "parameters": count_parameters(model), "trainable_parameters": count_parameters(model, True),
        "counts": {s: {"images": int((data.frame["split"] == s).sum()),
                       "positives": int(data.frame.loc[data.frame["split"] == s, "y"].sum()),
                       "patients": int(data.frame.loc[data.frame["split"] == s, "patient"].nunique())}
                   for s in ("train", "val", "test")},
        "excluded_by_task": data.excluded, "skipped": data.skipped, "notes": data.notes,
        "pos_weight": float(pos_weight) if pos_weight is not None else None,
        "best_epoch": best_epoch, "best_" + cfg.monitor: best, "epochs_run": len(history),
        "stopped_early": stopped_early, "device": str(device),
        "train_seconds": float(hist["seconds"].sum()) if len(hist) else 0.0,
        "wall_seconds_this_session": time.perf_counter() - t_start,
        "versions": _versions(), "git_commit": _git_commit(),
    }
    run.write_info(info)
    return Run(run, cfg, hist, best_epoch, stopped_early, info)


def _save_checkpoint(run, model, optimizer, scheduler, epoch, history, best, best_epoch, bad_epochs):
    frame = pd.DataFrame(history)
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "epoch": epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
        "history": torch.tensor(frame.to_numpy(dtype=np.float64)), "history_columns": list(frame.columns),
        "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
    }, run.last_checkpoint)


def _versions() -> dict:
    import sys

    import sklearn
    import timm

    return {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
