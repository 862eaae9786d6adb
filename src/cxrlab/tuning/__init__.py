"""`cxrlab tune`: a hyper-parameter search on Optuna. Every trial is an ordinary run directory, chosen
on validation only; the best one is scored once on test at the end. Workers share one study through a
journal file (one machine, or a shared file system) or a database (several machines).

    import cxrlab
    result = cxrlab.tune("chest_xrays", positive="effusion", space="default", trials=24, out="tune/effusion")
    result.summary["best"], result.summary["test"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import pandas as pd

from ..config import TrainConfig, to_dict, with_overrides
from ..errors import ConfigError, CxrlabError
from .space import SearchSpace, load_space
from .storage import HEARTBEAT_SECONDS, open_storage
from .study import DIRECTIONS, PRUNERS, SAMPLERS, Search, make_pruner, make_sampler, quiet_optuna, work
from .summary import summarise

__all__ = ["tune", "TuneResult", "load_space", "SearchSpace"]


@dataclass
class TuneResult:
    out: Path
    summary: dict  # also DIR/summary.json
    trials: pd.DataFrame  # also DIR/trials.csv


def tune(source: str | Path, positive: str | None = None, negative: str | list[str] | None = None,
         space: str | Path | dict = "default", trials: int = 20, out: str | Path = "tune",
         config: TrainConfig | None = None, sampler: str = "tpe", pruner: str = "median", metric: str = "val_auc",
         workers: int = 1, storage: str | None = None, study: str | None = None, timeout: float | None = None,
         seed: int = 0, heartbeat: int = HEARTBEAT_SECONDS, on_trial: Callable[[dict], None] | None = None,
         on_note: Callable[[str], None] | None = None) -> TuneResult:
    """Search `space` (a preset name, a YAML file or a mapping) for `trials` finished trials on top of
    `config` (default: cxrlab's default recipe). Running it again with the same `out` (or storage and
    study) continues the study. `workers` trial processes share this machine's cores; more machines
    join with the same `storage` and `study`. `timeout`: no trial starts after this many seconds.
    on_trial(row) is called as each trial finishes."""
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if metric not in DIRECTIONS:
        raise ConfigError(f"--metric must be one of {', '.join(DIRECTIONS)}, got {metric!r}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    from ..training.trainer import absolute_paths

    out = Path(out).resolve()
    base = with_overrides(config or TrainConfig(), source=str(source), positive=positive, negative=negative,
                          monitor=metric)
    base = absolute_paths(base)
    parsed = load_space(space, base)
    if sampler == "grid":
        size = parsed.grid_size()
        if trials > size and on_note:
            on_note(f"the grid has {size} combinations, so the search ends after {size} trials, not {trials}")
        trials = min(trials, size)
    base = _fix_split(base, out)
    search = Search(base=to_dict(base), space=_raw(parsed), out=str(out), study_name=study or out.name,
                    storage=storage, n_trials=trials, sampler=sampler, pruner=pruner, metric=metric,
                    timeout=timeout, seed=seed, heartbeat=heartbeat, started=time.time())
    with quiet_optuna():
        opened = _open_study(search, parsed, base)
    if workers == 1:
        work(search, 0, None, on_trial)
    else:
        _run_workers(search, workers, on_trial)
    with quiet_optuna():
        summary, frame = summarise(opened, search)
    if summary["complete"] + summary["pruned"] < trials and on_note:
        on_note(f"{summary['complete'] + summary['pruned']} of {trials} trials finished "
                f"({'the time ran out' if timeout else 'see the failed trials in trials.csv'}); "
                "the same command continues the study")
    return TuneResult(out, summary, frame)


def _raw(space: SearchSpace) -> dict:
    """The parsed space as the YAML mapping it came from (it crosses to worker processes)."""
    raw = {}
    for p in space.params:
        if p.choices is not None:
            raw[p.name] = list(p.choices)
        elif p.low is not None:
            ends = (int(p.low), int(p.high)) if p.integer else (p.low, p.high)
            raw[p.name] = {"low": ends[0], "high": ends[1], "log": p.log, "step": p.step}
        else:
            raw[p.name] = p.fixed
    return raw


def _fix_split(base: TrainConfig, out: Path) -> TrainConfig:
    """Every trial trains and validates on the same patients: the split is made once, into DIR/split.csv
    (decoding the images into the cache on the way), unless the base config names one."""
    from ..data import load_data, save_split

    if base.split_file:
        return base
    split = out / "split.csv"
    if not split.exists():
        data = load_data(base.source, base.positive, base.negative, base.images_dir, base.data)
        if data.task is None:
            raise CxrlabError("no task: pass --positive (and --negative) to choose the classes")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CxrlabError(f"{out}: cannot create the search folder ({exc.strerror or exc})") from None
        save_split(data.frame, split)
    return dataclasses.replace(base, split_file=str(split))


def _split_digest(base: TrainConfig) -> str:
    return hashlib.sha256(Path(base.split_file).read_bytes()).hexdigest()[:16]


def _open_study(search: Search, space: SearchSpace, base: TrainConfig) -> optuna.Study:
    """Create the study, or join it; a study of the same name made for another space, metric, task or
    split is refused rather than mixed with this one."""
    storage = open_storage(search.storage, Path(search.out), search.heartbeat)
    mine = {"cxrlab:space": space.canonical(), "cxrlab:metric": search.metric,
            "cxrlab:task": f"{base.positive} vs {', '.join(base.negative or ['(default negative)'])}",
            "cxrlab:split": _split_digest(base)}
    study = optuna.create_study(storage=storage, study_name=search.study_name, load_if_exists=True,
                                direction=DIRECTIONS[search.metric], sampler=make_sampler(search, space, 0),
                                pruner=make_pruner(search, base.epochs))
    theirs = {k: study.user_attrs.get(k) for k in mine}
    for key, value in mine.items():
        # a key not there yet is this command's to write: on a new study, or while another machine that
        # created it at the same moment is still writing its keys one by one (they are the same values)
        if theirs[key] is None:
            study.set_user_attr(key, value)
            theirs[key] = value
    for key, what in (("cxrlab:space", "search space"), ("cxrlab:metric", "metric"), ("cxrlab:task", "task"),
                      ("cxrlab:split", "split")):
        if theirs[key] != mine[key]:
            detail = f" ({theirs[key]}, not {mine[key]})" if key != "cxrlab:split" and key != "cxrlab:space" else ""
            raise CxrlabError(f"study {search.study_name!r} in {search.storage or search.out} was made with another "
                              f"{what}{detail}; choose another --study, or the same {what} to continue it")
    return study


def _run_workers(search: Search, workers: int, on_trial) -> None:
    """`workers` trial processes, each with an equal share of this machine's cores."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads or locks inherited
    procs = [context.Process(target=work, args=(search, i, threads, on_trial), name=f"cxrlab-tune-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    failed = [p for p in procs if p.exitcode != 0]
    if len(failed) == workers:
        raise CxrlabError(f"all {workers} workers stopped with an error (exit codes "
                          f"{', '.join(str(p.exitcode) for p in failed)}); the study is kept, and the same command "
                          "continues it")
