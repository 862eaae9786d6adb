"""One worker of a search: it takes trials from the study until the study has its number of finished
trials, trains each as an ordinary run directory, and reports every epoch's validation metric to
Optuna's pruner. Any number of workers, on one machine or many, share one study through its storage."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from ..config import TrainConfig
from ..errors import ConfigError, CxrlabError
from .space import SearchSpace, apply
from .storage import open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SURPLUS = "cxrlab:surplus"  # a trial created when the study already had enough: never trained
POLL_SECONDS = 2.0
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = {"val_auc": "maximize", "val_loss": "minimize"}


class _Surplus(Exception):
    """Raised inside a trial that two workers started at once when the study needed only one more."""


@dataclass
class Search:
    """What every worker of one search needs, picklable so it crosses to worker processes."""

    base: dict  # the base TrainConfig, as a dict
    space: dict  # the raw space mapping (load_space re-checks it in the worker)
    out: str
    study_name: str
    storage: str | None
    n_trials: int
    sampler: str = "tpe"
    pruner: str = "median"
    metric: str = "val_auc"
    timeout: float | None = None
    seed: int = 0
    heartbeat: int = 20
    started: float = 0.0

    def base_config(self) -> TrainConfig:
        return TrainConfig(**self.base)


@contextmanager
def quiet_optuna():
    """Optuna logs every trial and warns that heartbeats and its plots are experimental; cxrlab prints its
    own line per trial. The previous verbosity comes back afterwards (importing or calling cxrlab leaves
    global state as it was)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(before)


def make_sampler(search: Search, space: SearchSpace, worker: int):
    # one seed per worker, machine and folder: identical seeds would draw identical random start-up trials
    key = f"{search.seed}/{socket.gethostname()}/{search.out}/{worker}"
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    if search.sampler == "tpe":
        # constant liar: a running trial counts as a poor result, so parallel workers spread out
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {search.sampler!r}")


def make_pruner(search: Search, epochs: int):
    if search.pruner == "median":
        # the first 5 trials always finish, and no trial is stopped in its first 3 epochs: early validation
        # AUCs on ~100 images are noise
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=3, max_resource=max(epochs, 4))
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {search.pruner!r}")


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; surplus trials (never trained) are left out of every count."""
    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get(SURPLUS) and t.state in names:
            out[names[t.state]] += 1
    return out


class Objective:
    """Train one trial's config into DIR/trials/NNNN and return its best validation metric."""

    def __init__(self, search: Search, space: SearchSpace):
        self.search, self.space = search, space
        self.base = search.base_config()
        self.trials_dir = Path(search.out) / "trials"

    def claimed(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """True when fewer than n_trials live trials were created before this one. Trial numbers are
        handed out in order by the storage, so of two workers that started at once when one more trial
        was needed, only the first number trains."""
        ahead = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
                    if t.number < trial.number and not t.user_attrs.get(SURPLUS))
        return ahead < self.search.n_trials

    def __call__(self, trial: optuna.Trial) -> float:
        from ..training import train

        if not self.claimed(trial.study, trial):
            trial.set_user_attr(SURPLUS, True)
            raise _Surplus()
        values = self.space.suggest(trial)
        run_dir = self.trials_dir / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        cfg = apply(self.base, values)
        metric = self.search.metric

        def report(row: dict) -> None:
            value = row[metric]
            if isinstance(value, float) and math.isnan(value):
                return
            trial.report(float(value), int(row["epoch"]))
            trial.set_user_attr("epochs_run", int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: {metric} {value:.4f} below the median of earlier trials")

        try:
            run = train(cfg, run_dir, overwrite=True, on_epoch=report)
        except CxrlabError as exc:
            trial.set_user_attr("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        trial.set_user_attr("best_epoch", int(run.best_epoch))
        trial.set_user_attr("epochs_run", int(run.info["epochs_run"]))
        score = run.info["best_score"]
        if score is None or math.isnan(score):
            raise CxrlabError(f"trial {trial.number}: no {metric} (validation holds one class only)")
        return float(score)


def work(search: Search, worker: int = 0, threads: int | None = None,
         on_trial: Callable[[dict], None] | None = None) -> None:
    """Run trials until the study has search.n_trials finished ones (complete or pruned), the time
    is up, or no more can start; `threads` caps this process's CPU threads (workers split the cores)."""
    from .space import load_space

    if threads:
        import torch

        torch.set_num_threads(threads)
        search = dataclasses.replace(search, base={**search.base, "data": {**search.base["data"],
                                                                            "decode_workers": threads}})
    space = load_space(search.space, search.base_config())
    with quiet_optuna():
        storage = open_storage(search.storage, Path(search.out), search.heartbeat)
        base = search.base_config()
        study = optuna.load_study(study_name=search.study_name, storage=storage,
                                  sampler=make_sampler(search, space, worker), pruner=make_pruner(search, base.epochs))
        objective = Objective(search, space)
        callbacks = [_Reporter(search, on_trial)] if on_trial else []
        while True:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
            n = counts(study)
            if n["complete"] + n["pruned"] >= search.n_trials:
                return
            if search.timeout and time.time() - search.started > search.timeout:
                return
            if n["complete"] + n["pruned"] + n["running"] >= search.n_trials and not n["waiting"]:
                time.sleep(POLL_SECONDS)  # the last trials run elsewhere; take over if their worker dies
                continue
            if search.sampler == "grid" and _grid_exhausted(study, space):
                return
            study.optimize(objective, n_trials=1, catch=(CxrlabError, _Surplus), callbacks=callbacks)


def _grid_exhausted(study: optuna.Study, space: SearchSpace) -> bool:
    done = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False, states=FINISHED)}
    return len(done) >= space.grid_size()


class _Reporter:
    """One line per finished trial: number, state, metric, best so far, parameters."""

    def __init__(self, search: Search, on_trial: Callable[[dict], None]):
        self.search, self.on_trial = search, on_trial

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get(SURPLUS):
            return
        try:
            best = study.best_trial
            best = {"number": best.number, "value": best.value}
        except ValueError:  # no complete trial yet
            best = None
        self.on_trial({"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
                       "metric": self.search.metric, "params": dict(trial.params), "best": best,
                       "error": trial.user_attrs.get("error"), "seconds": duration(trial),
                       "epochs_run": trial.user_attrs.get("epochs_run"), "worker_pid": os.getpid()})


def duration(trial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None
