"""The training loop: Adam + BCE with logits, class weighting, best checkpoint, early stopping,
LR reduction on plateau, an optional second fine-tuning phase, atomic checkpoints every epoch,
exact resume, data-parallel processes, and feature caching for frozen backbones.

A plain loop rather than Lightning: the whole loop is this file, resume is bit-exact (we own
every RNG and state), and on a 2-core CPU there is no framework overhead to measure around.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from ..accel import accelerate
from ..checkpoint import atomic_torch_save, load_checkpoint, load_state_dict, save_state_dict, save_weights
from ..config import TrainConfig, save_yaml
from ..data import LoadedData, load_data, save_split
from ..data.augment import build_augment
from ..data.dataset import make_collate
from ..device import autocast, select_device
from ..errors import CxrlabError
from ..models import count_parameters, create_model, model_spec
from ..models.registry import backbone_of, build_model, check_input_size
from ..models.transfer import freeze_bn_stats, set_trainable_blocks
from ..runs import RunDir, WriteError, atomic_write
from . import dist as distributed
from .device import adam, needs_grad_scaler, training_memory_format
from .features import extract_features
from .metrics import epoch_metrics

CHECKPOINT_FORMAT = "cxrlab-checkpoint-1"
# train_loss and val_loss are the same quantity, plain (unweighted) BCE, so they can share an axis;
# train_loss_weighted is what the optimiser minimised (BCE with pos_weight when class weights are on)
HISTORY_COLUMNS = ["epoch", "phase", "train_loss", "train_loss_weighted", "train_acc", "val_loss", "val_acc", "val_auc",
                   "lr", "seconds"]


class TrainingDiverged(CxrlabError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Run:
    """A finished (or early-stopped) training run and where everything is."""

    dir: RunDir
    config: TrainConfig
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    info: dict

    def plot(self):
        """Loss, accuracy and AUC per epoch (a matplotlib Figure)."""
        from .curves import learning_curves_figure

        return learning_curves_figure(self.history)

    def _repr_html_(self) -> str:
        from .. import display

        info, monitor = self.info, self.config.monitor
        best = self.history.loc[self.history["epoch"] == self.best_epoch]
        scores = best[["val_loss", "val_acc", "val_auc"]].iloc[0].tolist() if len(best) else []
        counts = [[s, c["images"], c["positives"], c["patients"]] for s, c in info.get("counts", {}).items()]
        return (display.heading(f"{info['model']['name']}: best epoch {self.best_epoch} of {info['epochs_run']} "
                                f"({monitor}){', stopped early' if self.stopped_early else ''}",
                                f"{info['parameters']:,} parameters, {info['train_seconds']:.1f} s on {info['device']}; "
                                f"{self.dir.path}")
                + (display.table(["val_loss", "val_acc", "val_auc"], [[f"{v:.4f}" for v in scores]],
                                 "at the best epoch") if scores else "")
                + display.table(["split", "images", "positives", "patients"], counts)
                + display.figure(self.plot(), width=900))


@dataclass
class Phase:
    epochs: int
    trainable_blocks: int | None
    lr: float


@dataclass
class State:
    """Everything the loop carries between epochs; saved in last.ckpt."""

    epoch: int = 0
    phase: int = 0
    phase_start: int = 1
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def passes_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Passes over the training set that make one epoch: enough for cfg.min_epoch_images images."""
    if not cfg.min_epoch_images or n_train < 1:
        return 1
    return math.ceil(cfg.min_epoch_images / n_train)


def first_phase_epochs(cfg: TrainConfig, n_train: int) -> int:
    """cfg.epochs, capped by the training budget cfg.max_train_images (at least one epoch)."""
    if not cfg.max_train_images or n_train < 1:
        return cfg.epochs
    return max(1, min(cfg.epochs, cfg.max_train_images // (n_train * passes_per_epoch(cfg, n_train))))


def phases_of(cfg: TrainConfig, n_train: int = 0) -> list[Phase]:
    phases = [Phase(first_phase_epochs(cfg, n_train), cfg.trainable_blocks, cfg.lr)]
    if cfg.finetune_epochs:
        phases.append(Phase(cfg.finetune_epochs, cfg.finetune_blocks, cfg.lr * cfg.finetune_lr_factor))
    return phases


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@torch.no_grad()
def predict_scores(model: nn.Module, loader, device: torch.device,
                   precision: str = "auto") -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, sigmoid scores, mean BCE loss) over a loader, in eval mode: N values for one output,
    N x K for K (the loss over the labelled entries only)."""
    model.eval()
    ys, logits = [], []
    for x, y in loader:
        with autocast(device, precision):
            x = x.to(device, memory_format=torch.channels_last) if x.dim() == 4 else x.to(device)
            out = model(x).float().reshape(y.shape)
        logits.append(out.cpu())
        ys.append(y)
    y, z = torch.cat(ys), torch.cat(logits)
    loss = float(masked_bce(z, y)) if len(y) else float("nan")
    return y.numpy(), torch.sigmoid(z).numpy(), loss


def masked_bce(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with logits averaged over the labelled entries: a missing label (NaN) adds nothing to the loss or
    its gradient, so data sets that label only some findings can be used. Without NaN it is PyTorch's
    BCEWithLogitsLoss (the binary path calls that directly)."""
    known = ~torch.isnan(y)
    if bool(known.all()):
        return nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
    losses = nn.functional.binary_cross_entropy_with_logits(logits, torch.where(known, y, 0.0), reduction="none",
                                                            pos_weight=pos_weight)
    return (losses * known).sum() / known.sum().clamp_min(1)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))


def _init_from_run(model: nn.Module, run_dir: str) -> None:
    """Domain transfer: copy the backbone of an earlier run (same architecture) into this model."""
    state = load_state_dict(RunDir(run_dir).best_weights)
    prefix = "backbone." if hasattr(model, "backbone") else "features."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        missing, _ = backbone_of(model).load_state_dict(sub, strict=False)
    except RuntimeError as exc:  # same names, other shapes (seed-cnn into seed-cnn-bn)
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CxrlabError(f"--init-from {run_dir}: its backbone does not match this model ({first}); "
                          "use the same --model") from None
    if missing:
        raise CxrlabError(f"--init-from {run_dir}: its backbone does not match this model "
                          f"({len(missing)} tensors missing, e.g. {missing[0]}); use the same --model")


def lr_scheduler(optimizer, cfg: TrainConfig, epochs: int):
    """The phase's learning-rate schedule (cfg.lr_schedule), stepped once an epoch; None: a constant rate."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=cfg.min_lr)
    return plateau_scheduler(optimizer, cfg)


def plateau_scheduler(optimizer, cfg: TrainConfig):
    """The learning rate x cfg.lr_factor once cfg.lr_patience epochs in a row brought no improvement
    of the monitor (improvement as the best checkpoint counts it: strictly better); None when
    lr_patience is 0 (a constant rate, as the lesson trains). PyTorch's `patience` counts the bad
    epochs it tolerates, one fewer than the ones after which it acts."""
    if cfg.lr_patience <= 0:
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min" if cfg.monitor == "val_loss" else "max", factor=cfg.lr_factor,
        patience=cfg.lr_patience - 1, threshold=0.0, min_lr=cfg.min_lr)


class _Loop:
    """One training run's moving parts; `run()` drives the phases and epochs."""

    def __init__(self, cfg: TrainConfig, run: RunDir, data: LoadedData, ctx: distributed.DistContext,
                 on_epoch: Callable[[dict], None] | None, on_batch=None, on_note=None):
        self.cfg, self.run_dir, self.data, self.ctx, self.on_epoch = cfg, run, data, ctx, on_epoch
        self.on_batch, self.on_note = on_batch, on_note  # (batches done, batches, images done); a message
        self.spec = model_spec(cfg)
        self.device = select_device(cfg.device)
        if ctx.active and self.device.type == "cuda":
            self.device = torch.device("cuda", ctx.local_rank)  # one GPU per process
        self.model, self.weights_report = build_model(self.spec, cfg.pretrained, cfg.weights, cfg.allow_partial_weights)
        if self.weights_report and self.on_note:
            self.on_note(f"weights {self.weights_report.source}: {self.weights_report.text()}")
        check_input_size(self.model, self.spec)
        if cfg.init_from:
            _init_from_run(self.model, cfg.init_from)
        if self.device.type == "cpu":  # the CPU kernels; the checkpoint holds the same plain parameters
            accelerate(self.model)
        self.memory_format = training_memory_format(self.model, self.device)
        self.model.to(self.device, memory_format=self.memory_format)
        train = data.frame[data.frame["split"] == "train"]
        self.n_train = len(train)
        self.passes = passes_per_epoch(cfg, self.n_train)
        self.findings = list(data.task.findings) if data.multilabel else None
        self.history_columns = HISTORY_COLUMNS + [f"val_auc:{f}" for f in self.findings or []]
        if self.findings:  # per finding, over its labelled training images
            labels = train[data.task.columns]
            n_pos, n_neg = (labels == 1).sum().to_numpy(), (labels == 0).sum().to_numpy()
            self.pos_weight = [float(n / max(p, 1)) for p, n in zip(n_pos, n_neg)] if cfg.class_weights else None
            pw = torch.tensor(self.pos_weight, device=self.device) if self.pos_weight else None
            self.loss_fn = lambda logits, y: masked_bce(logits, y, pw)
        else:
            n_pos, n_neg = int(train["y"].sum()), int((train["y"] == 0).sum())
            self.pos_weight = n_neg / max(n_pos, 1) if cfg.class_weights else None
            pw = torch.tensor([self.pos_weight], device=self.device) if self.pos_weight else None
            self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw)
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device, cfg.precision) else None
        self.collate = make_collate(cfg.data.normalization, self.spec.in_chans)
        self.train_collate = make_collate(cfg.data.normalization, self.spec.in_chans, build_augment(cfg.data.augment))
        # its own generator: iterating a DataLoader draws a seed, and validation must not shift the
        # global RNG (dropout masks), whether or not its features are cached
        self.val_loader = DataLoader(data.dataset("val"), batch_size=max(64, cfg.batch_size),
                                     collate_fn=self.collate, num_workers=cfg.workers, generator=torch.Generator())
        self.state = State()
        self.saved_epoch = 0  # the epoch last.ckpt holds
        self.cached_phases: list[int] = []  # phases whose backbone features were computed once and reused
        self.extraction_seconds = 0.0
        self.train_padding = 0  # training samples DistributedSampler repeats so every process gets as many
        self.stopped_early = False
        self.writer = None
        if ctx.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.tensorboard))

    # -- setup per phase -------------------------------------------------------------------------
    def _start_phase(self, phase: Phase, resume_ckpt: dict | None):
        set_trainable_blocks(self.model, phase.trainable_blocks)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adam(self.params, self.device, phase.lr, self.cfg.weight_decay)
        self.scheduler = lr_scheduler(self.optimizer, self.cfg, phase.epochs)
        self.ema = None
        if self.cfg.ema_decay:  # restarted per phase, from the weights the phase starts with
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay),
                                     use_buffers=True)
        if resume_ckpt is not None:
            self.optimizer.load_state_dict(resume_ckpt["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(resume_ckpt["scheduler"])
            if self.ema is not None:
                self.ema.load_state_dict(resume_ckpt["ema"])
        self.frozen = phase.trainable_blocks == 0
        self.ddp = None
        if self.ctx.active and self.params:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.cached = self.cached_val = None
        if self.frozen and self.cfg.cache_features and not self.cfg.data.augment.enabled:
            # its own generator: iterating a DataLoader draws a seed, which must not shift the
            # global RNG (dropout masks) relative to a run that recomputes the features
            train_loader = DataLoader(self.data.dataset("train"), batch_size=64, collate_fn=self.collate,
                                      num_workers=self.cfg.workers, generator=torch.Generator())
            t0 = time.perf_counter()
            self.cached = extract_features(self.model, train_loader, self.device, self.cfg.precision)
            self.cached_val = extract_features(self.model, self.val_loader, self.device, self.cfg.precision)
            self.extraction_seconds += time.perf_counter() - t0
            self.cached_phases.append(self.state.phase + 1)

    @property
    def scored_model(self) -> nn.Module:
        """The weights validation scores and the best checkpoint keeps: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _train_batches(self, epoch: int):
        """Batches of (input, label, forward) for this epoch, in an order fixed by seed and epoch."""
        cfg, world = self.cfg, self.ctx.world
        dataset = self.cached if self.cached is not None else self.data.dataset("train")
        if self.passes > 1:  # a small training set: one epoch passes over it several times, reshuffled whole
            dataset = ConcatDataset([dataset] * self.passes)
        batch = max(1, cfg.batch_size // world)  # the global batch stays cfg.batch_size
        if self.ctx.active:
            sampler = DistributedSampler(dataset, world, self.ctx.rank, shuffle=True, seed=cfg.seed)
            # training only: validation and test are scored whole by every process, never padded
            self.train_padding = len(sampler) * world - len(dataset)
            sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=batch, sampler=sampler,
                                collate_fn=None if self.cached is not None else self.train_collate,
                                num_workers=cfg.workers)
        else:
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=gen,
                                collate_fn=None if self.cached is not None else self.train_collate,
                                num_workers=cfg.workers)
        forward = self.model.head if self.cached is not None else (self.ddp or self.model)
        self.batches_total = len(loader)
        for x, y in loader:
            if self.cached is None:
                x = x.to(self.device, memory_format=self.memory_format)
            yield x.to(self.device), y.to(self.device), forward

    # -- one epoch ---------------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        self.model.train()
        if self.frozen:
            backbone_of(self.model).eval()  # a frozen backbone is a fixed feature extractor
        else:
            freeze_bn_stats(self.model)
        total, plain, n, correct, entries = 0.0, 0.0, 0, 0, 0
        for batch, (x, y, forward) in enumerate(self._train_batches(epoch), 1):
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.cfg.precision):
                logits = forward(x).float().reshape(y.shape)
            loss = self.loss_fn(logits, y)
            finite = self.ctx.sum(float(torch.isfinite(loss)))[0] == self.ctx.world
            if not finite:
                kept = (f"{self.run_dir.last_checkpoint} holds the last good epoch ({self.state.epoch})"
                        if self.state.epoch else "No epoch completed, so nothing was kept and the same --out "
                        "can be used again")
                raise TrainingDiverged(f"loss became {loss.item()} in epoch {epoch}; training stopped. {kept}. "
                                       "Try a lower --lr or --grad-clip.")
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total += loss.item() * len(y)
            plain += (masked_bce(logits.detach(), y).item() * len(y) if self.pos_weight else loss.item() * len(y))
            n += len(y)
            known = ~torch.isnan(y)  # accuracy over the labelled entries (every entry, for a binary task)
            correct += int((((logits.detach() > 0) == (y > 0.5)) & known).sum())
            entries += int(known.sum())
            if self.on_batch:
                self.on_batch(batch, self.batches_total, n)
        total, plain, n, correct, entries = self.ctx.sum(total, plain, n, correct, entries)
        if self.cached_val is not None:  # frozen backbone: the head scores the stored val features
            val = DataLoader(self.cached_val, batch_size=256, generator=torch.Generator())
            vy, vs, vloss = predict_scores(self.scored_model.head, val, self.device, self.cfg.precision)
        else:
            vy, vs, vloss = predict_scores(self.scored_model, self.val_loader, self.device, self.cfg.precision)
        vm = epoch_metrics(vy, vs)
        per_finding = {f"val_auc:{f}": auc for f, auc in zip(self.findings or [], vm.get("aucs", []))}
        return {"epoch": epoch, "phase": self.state.phase + 1, "train_loss": plain / n,
                "train_loss_weighted": total / n, "train_acc": correct / max(entries, 1),
                "val_loss": vloss, "val_acc": vm["acc"], "val_auc": vm["auc"],
                "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0, **per_finding}

    def _after_epoch(self, row: dict) -> None:
        st, cfg = self.state, self.cfg
        st.history.append(row)
        st.epoch = row["epoch"]
        score = row[cfg.monitor]
        if math.isnan(score):  # AUC undefined (one class in val): fall back to the loss
            score = row["val_loss"]
        better = (lambda a, b: a < b) if cfg.monitor == "val_loss" else (lambda a, b: a > b)
        improved = st.best is None or better(score, st.best)
        if improved:
            st.best, st.best_epoch, st.bad_epochs = score, row["epoch"], 0
        else:
            st.bad_epochs += 1
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(score)
        elif self.scheduler is not None:
            self.scheduler.step()
        if self.ctx.main:
            try:
                if improved:
                    save_weights(self.scored_model, self.run_dir.best_weights)
                self._save_checkpoint()
                history = pd.DataFrame(st.history, columns=self.history_columns).to_csv(index=False)
                atomic_write(self.run_dir.history, history.encode())
            except WriteError as exc:
                kept = f"the last good checkpoint (epoch {self.saved_epoch}) is kept" if self.saved_epoch \
                    else "no epoch was checkpointed"
                raise WriteError(f"{exc}; {kept}") from None
            self.saved_epoch = st.epoch
            for key in self.history_columns[2:]:
                self.writer.add_scalar(key, row[key], row["epoch"])
            self.writer.flush()
            if self.on_epoch:
                self.on_epoch({**row, "best": improved})
        self.ctx.barrier()

    def _save_checkpoint(self) -> None:
        st = self.state
        frame = pd.DataFrame(st.history, columns=self.history_columns)
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT, "epoch": st.epoch, "phase": st.phase, "phase_start": st.phase_start,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None, "rng": _rng_state(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "history": torch.tensor(frame.to_numpy(dtype=np.float64)), "history_columns": list(frame.columns),
            "best": st.best, "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
        }, self.run_dir.last_checkpoint)

    def restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        _set_rng_state(ckpt["rng"])
        history = [dict(zip(ckpt["history_columns"], row)) for row in ckpt["history"].tolist()]
        for row in history:
            row["epoch"], row["phase"] = int(row["epoch"]), int(row["phase"])
        self.state = State(ckpt["epoch"], ckpt["phase"], ckpt["phase_start"], ckpt["best"], ckpt["best_epoch"],
                           ckpt["bad_epochs"], history)
        self.saved_epoch = ckpt["epoch"]

    # -- the run -----------------------------------------------------------------------------------
    def run(self, resume_ckpt: dict | None) -> None:
        phases = phases_of(self.cfg, self.n_train)
        st = self.state
        if self.on_note and phases[0].epochs < self.cfg.epochs and st.epoch == 0:  # said before training, not after
            self.on_note(f"{phases[0].epochs} epoch{'s' * (phases[0].epochs != 1)}, not {self.cfg.epochs}: the training budget --max-train-images "
                         f"{self.cfg.max_train_images} caps them ({self.n_train} training images; 0 turns it off)")
        if self.on_note and self.passes > 1 and st.epoch == 0:
            self.on_note(f"an epoch passes {self.passes} times over the {self.n_train} training images (at least "
                         f"--min-epoch-images {self.cfg.min_epoch_images} images; 0 makes an epoch one pass)")
        while st.phase < len(phases):
            phase = phases[st.phase]
            self._start_phase(phase, resume_ckpt)
            resume_ckpt = None
            patience = self.cfg.early_stopping
            for epoch in range(st.epoch + 1, st.phase_start + phase.epochs):
                if patience and st.bad_epochs >= patience:
                    break
                self._after_epoch(self._epoch(epoch))
            if patience and st.bad_epochs >= patience:
                self.stopped_early = True
            st.phase += 1
            if st.phase < len(phases):  # the next phase starts from the best weights so far
                st.phase_start, st.bad_epochs = st.epoch + 1, 0
                self.ctx.barrier()
                self.model.load_state_dict(load_state_dict(self.run_dir.best_weights))
        if self.writer:
            self.writer.close()


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None,
          progress: Callable[[int, int], None] | None = None,
          on_batch: Callable[[int, int, int], None] | None = None,
          on_note: Callable[[str], None] | None = None) -> Run:
    """Train `cfg` into run directory `out`. With resume=True the run's own config.yaml and
    last.ckpt are used, and training continues where it stopped. With cfg.devices > 1, that many
    data-parallel processes are started here; under torchrun the launched processes cooperate.
    Callbacks: on_epoch(history row), progress(done, total) while decoding, on_batch(batches done,
    batches, images done) within an epoch, on_note(message) for what the user should know before training."""
    run = RunDir(out)
    if resume:
        run.prepare(resume=True)
        ckpt = load_checkpoint(run.last_checkpoint)  # validate before anything else is touched
        check_best_weights(run, ckpt)
        cfg = run.read_config()  # as it began: keys added since take the value it trained with
    else:
        cfg = absolute_paths(cfg)
    if cfg.devices > 1 and not distributed.launched_by_torchrun():
        if not resume:
            run.prepare(overwrite=overwrite)
        # the directory is prepared above, so each process resumes exactly when a checkpoint exists; the
        # progress bar stays here (it cannot cross a process boundary), the epoch printer travels
        distributed.spawn(_train_process, cfg.devices, cfg, str(out), True, on_epoch, None, None, on_note)
        return load_run(out)
    return _train_process(cfg, str(out), resume or False, on_epoch, progress, on_batch, on_note, overwrite)


def _train_process(cfg: TrainConfig, out: str, resume: bool, on_epoch, progress, on_batch=None, on_note=None,
                   overwrite: bool = False):
    """One training process (of one, or of a data-parallel group). resume: continue from last.ckpt
    when it exists."""
    run = RunDir(out)
    ctx = distributed.init_from_env("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    resuming = resume and run.last_checkpoint.exists()
    if ctx.main and not resuming:
        run.prepare(overwrite=overwrite or ctx.active)
    ctx.barrier()
    ckpt = load_checkpoint(run.last_checkpoint) if resuming else None
    seed_everything(cfg.seed, cfg.deterministic)
    split_file = run.split if resuming else cfg.split_file
    if ctx.main:  # one process decodes; the others then find the cache warm
        data = load_data(cfg.source, cfg.positive, cfg.negative, cfg.images_dir, cfg.data, split_file, progress,
                         findings=cfg.findings)
    ctx.barrier()
    if not ctx.main:
        data = load_data(cfg.source, cfg.positive, cfg.negative, cfg.images_dir, cfg.data, split_file,
                         findings=cfg.findings)
    if data.task is None:
        raise CxrlabError("no task: pass --positive (and --negative) to choose the classes, or --findings")
    if data.multilabel:  # 'all' or spelled otherwise: the run records its findings, in the outputs' order
        _check_findings_train(data)
        cfg = dataclasses.replace(cfg, findings=list(data.task.findings))
    elif cfg.positive != data.task.positive:  # inferred or spelled otherwise: the run names its positive class
        cfg = dataclasses.replace(cfg, positive=data.task.positive)
    if ctx.main and not resuming:
        save_split(data.frame, run.split)  # the true labels: evaluation of this run stays honest
        save_yaml(cfg, run.config)
    if cfg.shuffle_labels:  # a model that can only memorise: the data-randomisation sanity check
        train_rows = data.frame.index[data.frame["split"] == "train"]
        columns = ["y", *data.task.columns] if data.multilabel else ["y"]
        order = np.random.default_rng(cfg.seed).permutation(len(train_rows))
        data.frame.loc[train_rows, columns] = data.frame.loc[train_rows, columns].to_numpy()[order]
    loop = _Loop(cfg, run, data, ctx, *((on_epoch, on_batch, on_note) if ctx.main else (None, None, None)))
    if ckpt is not None:
        loop.restore(ckpt)
    t0 = time.perf_counter()
    loop.run(ckpt)
    if not ctx.main:
        return None
    hist = pd.DataFrame(loop.state.history, columns=loop.history_columns)
    from .curves import plot_learning_curves

    plot_learning_curves(hist, run.curves)
    frame = data.frame
    info = {
        "task": data.task.to_dict(), "source": str(cfg.source),
        "model": {**loop.spec.__dict__, **({"findings": loop.findings} if loop.findings else {})},  # outputs' order
        "weights_loaded": loop.weights_report.to_dict() if loop.weights_report else None,
        "parameters": count_parameters(loop.model), "trainable_parameters": count_parameters(loop.model, True),
        "counts": {s: {"images": int((frame["split"] == s).sum()),
                       "positives": int(frame.loc[frame["split"] == s, "y"].sum()),
                       "patients": int(frame.loc[frame["split"] == s, "patient"].nunique())}
                   for s in ("train", "val", "test")},
        "excluded_by_task": data.excluded, "skipped": data.skipped, "notes": data.notes,
        "pos_weight": loop.pos_weight, "best_epoch": loop.state.best_epoch, "monitor": cfg.monitor,
        "best_score": loop.state.best, "epochs_run": len(hist),
        "epochs_planned": first_phase_epochs(cfg, loop.n_train), "passes_per_epoch": loop.passes,
        "stopped_early": loop.stopped_early,
        "device": str(loop.device), "precision": cfg.precision, "processes": ctx.world,
        "features_cached": bool(loop.cached_phases), "features_cached_phases": loop.cached_phases,
        "feature_extraction_seconds": loop.extraction_seconds,
        # the epochs' time plus the one-off feature extraction of frozen-backbone phases
        "train_seconds": (float(hist["seconds"].sum()) if len(hist) else 0.0) + loop.extraction_seconds,
        "train_padding": {"samples_repeated_per_epoch": loop.train_padding,
                          "note": "DistributedSampler repeats training samples so every process gets as many; "
                                  "validation and test are never padded"} if ctx.active else None,
        "wall_seconds_last_session": time.perf_counter() - t0,
        "versions": _versions(), "git_commit": _git_commit(),
    }
    info["operating_point"] = store_default_point(run, data)
    run.write_info(info)
    return Run(run, cfg, hist, loop.state.best_epoch, loop.stopped_early, info)


def _check_findings_train(data: LoadedData) -> None:
    """Every finding needs positive training images: the model cannot learn one it never sees."""
    train = data.frame[data.frame["split"] == "train"]
    missing = [f for f, c in zip(data.task.findings, data.task.columns) if not (train[c] == 1).any()]
    if missing:
        raise CxrlabError(f"no positive training images for {', '.join(missing)} (after the patient split); "
                          "leave them out of --findings or add images")


def store_default_point(run: RunDir, data: LoadedData) -> str:
    """A fresh run scores like an evaluated one: the default operating point, chosen on validation
    scores made as predict and serve make them (`cxrlab threshold` chooses another). Returns what
    was stored, or why nothing was (one class in validation). Loading the run here also proves its
    best weights readable: a damaged file is a clear error now, not in every later command."""
    from ..inference import RunModel

    model = RunModel(run)  # outside the try: unreadable weights must fail the training run
    try:
        point = model.choose_point(data=data)
    except CxrlabError as exc:
        return f"none stored: {exc}"
    model.store_point(point)
    return f"{point.policy} on validation: {point.threshold:.6g}"


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Paths in a config, made absolute: `cxrlab train --config RUN/config.yaml` works from anywhere."""
    keys = ("source", "images_dir", "split_file", "weights", "init_from")
    return dataclasses.replace(cfg, **{k: str(Path(getattr(cfg, k)).resolve()) for k in keys if getattr(cfg, k)})


def check_best_weights(run: RunDir, ckpt: dict) -> None:
    """Before resuming: best.safetensors must be readable. Damaged, it is rebuilt from last.ckpt when
    that holds the best epoch; otherwise the run cannot be continued honestly, and we say so."""
    try:
        load_state_dict(run.best_weights)
        return
    except CxrlabError as exc:
        damage = str(exc)
    if ckpt["best_epoch"] != ckpt["epoch"]:
        raise CxrlabError(f"{damage.split('. ')[0]}; the best epoch ({ckpt['best_epoch']}) is not the one "
                          f"{run.last_checkpoint.name} holds ({ckpt['epoch']}), so it cannot be rebuilt. "
                          "Train again with --overwrite.")
    state = ckpt["model"]
    if ckpt.get("ema") is not None:  # validation scored the average: that is what best holds
        state = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    save_state_dict(state, run.best_weights)


def load_run(out: str | Path) -> Run:
    """A Run from what a finished run directory holds."""
    run = RunDir(out)
    info = run.read_info()
    return Run(run, run.read_config(), run.read_history(), info["best_epoch"],
               info["stopped_early"], info)


def _versions() -> dict:
    """Read from the installed packages' metadata: importing timm for its version cost 0.9 s a run."""
    import sys
    from importlib.metadata import version

    return {"python": sys.version.split()[0], "torch": torch.__version__, "timm": version("timm"),
            "numpy": np.__version__, "scikit-learn": version("scikit-learn")}


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
