"""The `cxrlab` command line: parses options, calls the library, prints with Rich. No logic here."""

from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .config import DataConfig
from .errors import CxrlabError

app = typer.Typer(help="Train, evaluate and explain chest X-ray classifiers.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Look at a data set before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# soft_wrap: a message or an epoch line is one line in a pipe or a file whatever the width (tables still fit it)
console = Console(soft_wrap=True)


_own_process = False  # set by `main`: the process is cxrlab's command, not a test or a notebook calling the app


@contextlib.contextmanager
def _heavy_imports():
    """Around a command's imports of torch, scikit-learn and matplotlib: in cxrlab's own process the garbage
    collector waits until they finish, then freezes the objects they made. Their millions of objects set off
    full collections that find nothing to free: 0.4-0.6 s of a lesson run (BENCHMARKS.md, session 15)."""
    if not _own_process:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


class _Bar:
    """A Rich progress bar usable as the library's progress(done, total) callback."""

    def __init__(self, label: str):
        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.task = None

    def __enter__(self):
        self.live = console.is_terminal  # a pipe or a file gets no bar (and no blank line where it was)
        if self.live:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.progress.__exit__(*exc)

    def __call__(self, done: int, total: int):
        if not self.live:
            return
        if self.task is None:
            self.task = self.progress.add_task("", total=total)
        self.progress.update(self.task, completed=done)
        if done >= total:  # finished: stop redrawing it (training prints below it for minutes)
            self.progress.stop()
            self.live = False


class _EpochBar:
    """In a terminal, a bar per epoch (batches, images/s, time left) that gives way to the epoch's
    one-line summary; in a pipe or a file, nothing but the summary lines."""

    def __init__(self):
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.task, self.epoch, self.started = None, 0, 0.0

    def on_batch(self, done: int, total: int, images: int) -> None:
        import time

        if self.task is None:
            self.progress.start()
            self.epoch += 1
            self.started = time.perf_counter()
            self.task = self.progress.add_task("", total=total, epoch=self.epoch, rate="")
        rate = images / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, completed=done, rate=f"{rate:.0f} img/s")

    def on_epoch(self, row: dict) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.progress.stop()
            self.task = None
        self.epoch = row["epoch"]
        _print_epoch(row)


def _print_summary(summary: dict, out_dir: Path) -> None:
    console.print(f"[bold]{summary['source']}[/] ({summary['layout']}): {summary['images']} images, "
                  f"{summary['patients']} patients; cache {summary['cache']}")
    if "by_split" in summary:
        classes = list(summary["classes"])
        table = Table("split", *classes, "patients", title=f"task: {summary['task']['positive']} vs "
                      f"{' / '.join(summary['task']['negatives'])}")
        for split in ("train", "val", "test"):
            if split in summary["by_split"]:
                row = summary["by_split"][split]
                table.add_row(split, *[str(row.get(c, 0)) for c in classes],
                              str(summary["patients_by_split"][split]))
        console.print(table)
        if summary["excluded_by_task"]:
            console.print(f"excluded (other findings): {sum(summary['excluded_by_task'].values())} images")
    else:
        table = Table("label", "images", title="labels")
        for label, n in summary["labels_in_source"].items():
            table.add_row(label, str(n))
        console.print(table)
    dups = summary["exact_duplicates"]
    if dups["groups"]:
        console.print(f"[yellow]exact duplicates: {dups['groups']} group(s)"
                      f"{', ' + str(dups.get('across_splits', 0)) + ' across splits' if 'across_splits' in dups else ''}")
    if "findings" in summary:
        table = Table("finding", *[f"{s} images / patients" for s in ("train", "val", "test")],
                      title="positives per finding and split")
        for finding, per in summary["findings"].items():
            table.add_row(finding, *[f"{per[s]['images']} / {per[s]['patients']}" for s in ("train", "val", "test")])
        console.print(table)
    if set(summary.get("views", {})) - {"unknown"}:
        console.print("views: " + ", ".join(f"{v} {n}" for v, n in summary["views"].items()), highlight=False)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for item in summary["skipped"]["files"][:20]:
        console.print(f"[red]skipped[/] {item['path']}: {item['reason']}")
    console.print(f"wrote {out_dir / 'summary.json'} and plots in {out_dir}/")


@data_app.command("summary")
def data_summary(
    data: Path = typer.Argument(..., help="Class folders, train/val/test folders, an NIH-style CSV, or HDF5."),
    positive: Optional[str] = typer.Option(None, help="Positive label, e.g. Effusion."),
    negative: Optional[List[str]] = typer.Option(None, help="Negative label(s); default: the one named like normal / No Finding."),
    images: Optional[Path] = typer.Option(None, help="Images folder for a CSV (default: beside the CSV)."),
    out: Path = typer.Option(Path("cxrlab-summary"), help="Where summary.json and the plots go."),
    image_size: int = typer.Option(256, help="Square size the images are resized to."),
    split_scheme: str = typer.Option("70-15-15", help="70-15-15, or lesson (15% test, then 15% of the rest for val)."),
    split_seed: int = typer.Option(42, help="Seed of the patient-grouped split."),
    val_policy: str = typer.Option("auto", help="Pre-split folders: auto, keep or resplit their val/."),
    on_bad_image: str = typer.Option("error", help="error: stop at an unreadable image; skip: leave it out and list it."),
    cache_dir: Optional[Path] = typer.Option(None, help="Image cache (default $CXRLAB_CACHE or ~/.cache/cxrlab)."),
    views: Optional[str] = typer.Option(None, help="Only these view positions, e.g. PA or PA,AP (DICOM ViewPosition, "
                                        "NIH's 'View Position' column)."),
    findings: Optional[str] = typer.Option(None, help="Multi-label: 'all' or a list: per-finding counts per split."),
):
    """Counts per class and split, patients, sizes, duplicates, unreadable files; summary.json and plots."""
    with _heavy_imports():
        from .data import load_data
        from .data.summary import write_summary

    cfg = DataConfig(image_size=image_size, split_scheme=split_scheme, split_seed=split_seed,
                     val_policy=val_policy, on_bad_image=on_bad_image,
                     cache_dir=str(cache_dir) if cache_dir else None, views=views)
    with _Bar("decoding images") as bar:
        loaded = load_data(data, positive, negative or None, images, cfg, progress=bar, findings=findings)
    _print_summary(write_summary(loaded, out), out)


@app.command()
def train(
    data: Optional[Path] = typer.Argument(None, help="Training data (any layout `data summary` reads)."),
    out: Optional[Path] = typer.Option(None, help="Run directory to create (default runs/<model>)."),
    config: Optional[Path] = typer.Option(None, help="A config.yaml (e.g. RUN/config.yaml); flags override it."),
    recipe: Optional[str] = typer.Option(None, help="Start from a named recipe: default (cxrlab's), long (cxrlab's "
                                         "earlier default: 40 epochs, plateau schedule, about 2x the time) or lesson (the "
                                         "lesson's: seed-cnn, lr 1e-3, 10 epochs, no augmentation...); flags override it."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run from RUN/last.ckpt."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    positive: Optional[str] = typer.Option(None, help="Positive label, e.g. Effusion."),
    negative: Optional[List[str]] = typer.Option(None, help="Negative label(s); default: normal / No Finding; rest: every image without the positive."),
    images: Optional[Path] = typer.Option(None, help="Images folder for a CSV."),
    split_file: Optional[Path] = typer.Option(None, help="Reuse a split.csv (e.g. from another run)."),
    findings: Optional[str] = typer.Option(None, help="Multi-label: 'all' (every finding of the data) or a list, e.g. "
                                           "Effusion,Pneumonia: one model scores them all (instead of --positive)."),
    model: Optional[str] = typer.Option(None, help="seed-cnn-bn (default), seed-cnn (the lesson's), kaggle-cnn, or a timm name."),
    pretrained: Optional[str] = typer.Option(None, help="imagenet: timm's pretrained weights; xrv:NAME (e.g. "
                                             "xrv:densenet121-res224-all): torchxrayvision's chest X-ray DenseNet at its "
                                             "own 224 px and intensity range (pip install 'cxrlab[xrv]'). Internet once."),
    weights: Optional[Path] = typer.Option(None, help="Local backbone weights (.safetensors / .pth), loaded strictly."),
    allow_partial_weights: Optional[bool] = typer.Option(None, "--allow-partial-weights", help="Train even when some "
                                                         "backbone tensors are not in the weights (they start at random)."),
    init_from: Optional[Path] = typer.Option(None, help="Start from the backbone of an earlier run."),
    trainable_blocks: Optional[int] = typer.Option(None, help="0: frozen backbone; N: train its last N stages."),
    epochs: Optional[int] = typer.Option(None, help="At most this many epochs (default 40)."),
    max_train_images: Optional[int] = typer.Option(
        None, help="Training budget: epochs are capped at this many images seen (default 30000; 0: no cap)."),
    min_epoch_images: Optional[int] = typer.Option(
        None, help="An epoch is at least this many images: smaller training sets are passed over several times "
                   "(default 400; 0: one pass)."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, help="Adam's learning rate (default 1e-3, as the lesson's)."),
    weight_decay: Optional[float] = typer.Option(None),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this value."),
    ema_decay: Optional[float] = typer.Option(
        None, help="Validate and keep an exponential moving average of the weights (per-step decay, 0: off)."),
    dropout: Optional[float] = typer.Option(None),
    class_weights: Optional[bool] = typer.Option(None, "--class-weights/--no-class-weights",
                                                 help="Weight positives by negatives/positives (default on)."),
    monitor: Optional[str] = typer.Option(None, help="val_auc (default) or val_loss: picks the best checkpoint."),
    early_stopping: Optional[int] = typer.Option(None, help="Stop after N epochs without improvement (0: off)."),
    lr_patience: Optional[int] = typer.Option(None), lr_factor: Optional[float] = typer.Option(None),
    min_lr: Optional[float] = typer.Option(None),
    lr_schedule: Optional[str] = typer.Option(
        None, help="cosine (default: lr down to min-lr over the epochs) or plateau (lr x lr-factor after lr-patience epochs without improvement)."),
    seed: Optional[int] = typer.Option(None), deterministic: Optional[bool] = typer.Option(None),
    shuffle_labels: Optional[bool] = typer.Option(None, help="Sanity-check runs only: permute training labels."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda, cuda:N."),
    precision: Optional[str] = typer.Option(None, help="auto (mixed on GPU, bf16 on CPUs with native bf16, else fp32), fp32, bf16."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes."),
    decode_workers: Optional[int] = typer.Option(None, help="Image decoding processes (default: all cores)."),
    devices: Optional[int] = typer.Option(None, help="Data-parallel processes on this machine (DDP)."),
    finetune_epochs: Optional[int] = typer.Option(None, help="Second phase: epochs with the last blocks unfrozen."),
    finetune_blocks: Optional[int] = typer.Option(None, help="Backbone stages unfrozen in the second phase."),
    finetune_lr_factor: Optional[float] = typer.Option(None, help="Second-phase lr = lr x this (default 0.1)."),
    cache_features: Optional[bool] = typer.Option(None, "--cache-features/--no-cache-features",
                                                  help="Frozen backbone, no augmentation: compute features once."),
    image_size: Optional[int] = typer.Option(None), normalization: Optional[str] = typer.Option(None),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment"),
    tta: Optional[int] = typer.Option(None, help="Test-time views averaged when this run scores images (default 8; "
                                      "none when trained without augmentation)."),
    split_scheme: Optional[str] = typer.Option(None), split_seed: Optional[int] = typer.Option(None),
    val_fraction: Optional[float] = typer.Option(None, help="Overrides the split scheme's validation share."),
    test_fraction: Optional[float] = typer.Option(None, help="Overrides the split scheme's test share."),
    val_policy: Optional[str] = typer.Option(None), on_bad_image: Optional[str] = typer.Option(None),
    cache_dir: Optional[Path] = typer.Option(None),
    views: Optional[str] = typer.Option(None, help="Only these view positions, e.g. PA or PA,AP."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Then evaluate the test split as `cxrlab evaluate RUN` "
                                  "does, in this process (one start-up instead of two)."),
):
    """Train a classifier into a run directory (config.yaml, split.csv, history.csv, weights, run.json)."""
    with _heavy_imports():
        from .config import TrainConfig, load_yaml, refuse_plateau_flags_without_plateau, with_overrides
        from .training import train as train_run
        if evaluate:
            from .evaluation.evaluate import evaluate_run

    if resume:
        given = {k: v for k, v in locals().items() if k in _TRAIN_FLAGS | {"data", "config", "recipe", "negative", "out"}}
        ignored = sorted(f"--{k.replace('_', '-')}" if k != "data" else "DATA" for k, v in given.items()
                         if v is not None and v != [])
        if ignored or overwrite:
            raise CxrlabError(f"--resume continues {resume} exactly as its config.yaml says; it cannot also apply "
                              f"{', '.join(ignored + ['--overwrite'] * overwrite)}. Resume without them, or start a "
                              "new run with --config " + str(Path(resume) / "config.yaml") + " and the changes.")
        cfg, out = TrainConfig(), resume
    else:
        if config and recipe:
            raise CxrlabError("give --config or --recipe, not both: a config file already holds a whole recipe")
        cfg = load_yaml(TrainConfig, config) if config else TrainConfig.recipe(recipe or "default")
        given = {k: v for k, v in locals().items() if k in _TRAIN_FLAGS}
        given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
        given["negative"] = negative or None
        cfg = with_overrides(cfg, source=str(data) if data else None, images_dir=given.pop("images"), **given)
        refuse_plateau_flags_without_plateau(cfg, given)
        if not cfg.source:
            raise typer.BadParameter("give DATA or --config with a source")
        out = out or Path("runs") / cfg.model
    epochs = _EpochBar() if console.is_terminal else None
    with _Bar("decoding images") as bar:
        run = train_run(cfg, out, overwrite=overwrite, resume=resume is not None,
                        on_epoch=epochs.on_epoch if epochs else _print_epoch, progress=bar,
                        on_batch=epochs.on_batch if epochs else None, on_note=_print_note)
    console.print(f"best epoch {run.best_epoch} ({run.config.monitor}); "
                  f"{'stopped early; ' if run.stopped_early else ''}run directory: {run.dir.path}")
    if evaluate:
        _print_evaluation(evaluate_run(run.dir.path))


_TRAIN_FLAGS = {"positive", "findings", "images", "split_file", "model", "pretrained", "weights", "allow_partial_weights", "init_from",
                "trainable_blocks", "epochs", "max_train_images", "min_epoch_images", "batch_size", "lr", "weight_decay", "grad_clip", "ema_decay",
                "dropout", "class_weights", "monitor", "early_stopping", "lr_patience", "lr_factor", "min_lr", "lr_schedule", "seed", "shuffle_labels",
                "deterministic", "device", "precision", "workers", "decode_workers", "devices", "finetune_epochs", "finetune_blocks",
                "finetune_lr_factor", "cache_features", "image_size", "normalization", "augment", "tta",
                "split_scheme", "split_seed", "val_fraction", "test_fraction", "val_policy", "on_bad_image", "cache_dir",
                "views"}


def _print_note(message: str) -> None:
    console.print(f"[yellow]note:[/] {message}", highlight=False)


def _print_epoch(row: dict) -> None:
    console.print(f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.3f}  "
                  f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.3f}  val_auc {row['val_auc']:.3f}  "
                  f"lr {row['lr']:.1e}  {row['seconds']:.1f}s{'  *' if row['best'] else ''}", highlight=False)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run directory."),
    data: Optional[Path] = typer.Option(None, help="Evaluate on every image of another data set instead."),
    positive: Optional[str] = typer.Option(None, help="With --data: its label for the run's positive class."),
    negative: Optional[List[str]] = typer.Option(None, help="With --data: its label(s) for the run's negative class."),
    split: str = typer.Option("test", help="test, val or all."),
    threshold: Optional[str] = typer.Option(None, help="Evaluate at this policy instead of the stored operating point "
                                            "(chosen on validation, for this evaluation only): 0.5, youden, "
                                            "sensitivity:0.95, fixed:X. `cxrlab threshold` stores one."),
    tta: Optional[int] = typer.Option(None, help="Average the plain image and this many fixed augmented views "
                                      "(default: those of the stored operating point)."),
    calibrate: bool = typer.Option(False, help="Fit temperature scaling on validation data (this evaluation only)."),
    resamples: int = typer.Option(1000, help="Patient-level bootstrap resamples for the CIs."),
    site: Optional[str] = typer.Option(None, help="With --data: also report at this site's operating point (default: "
                                       "the site whose threshold was chosen on a sample of --data), leaving the sample out."),
    finding: Optional[str] = typer.Option(None, help="Multi-label run: score this finding as a binary task against "
                                          "--negative (default No Finding) on the same test patients."),
):
    """Metrics with 95% CIs at the run's operating point, calibration, CSVs and figures in RUN/eval/<split>/.
    Read-only on the run: the operating point predict, serve and export use stays as it is."""
    with _heavy_imports():
        from .evaluation.evaluate import evaluate_run

    if (positive or (negative and not finding)) and data is None:
        raise CxrlabError("--positive and --negative name another data set's labels: use them with --data "
                          "(or --negative with --finding)")
    m = evaluate_run(run, data, split, threshold, tta, calibrate, resamples, data_positive=positive,
                     data_negative=negative or None, site=site, finding=finding)
    _print_evaluation(m)


def _print_evaluation(m: dict) -> None:
    (_print_findings if m.get("task") == "multi-label" else _print_metrics)(m, Path(m["folder"]))


@app.command("threshold")
def threshold_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    policy: Optional[str] = typer.Option(None, help="0.5, youden, sensitivity:0.95 (the default: a screening "
                                         "operating point), fixed:X."),
    tta: Optional[int] = typer.Option(None, help="Test-time views the scores are made with (default: the run's; "
                                      "predict, serve and the quiz then score with these)."),
    calibrate: bool = typer.Option(False, help="Also fit temperature scaling on validation data."),
    data: Optional[Path] = typer.Option(None, help="A new site's labelled images: choose the site's own threshold on a "
                                        "sample of them (the run's own point stays; predict --site uses it)."),
    site: Optional[str] = typer.Option(None, help="With --data: the site's name (default: the data folder's name)."),
    sample: float = typer.Option(0.5, help="With --data: share of its patients to choose on; evaluate --data "
                                 "scores the rest."),
    positive: Optional[str] = typer.Option(None, help="With --data: its label for the run's positive class."),
    negative: Optional[List[str]] = typer.Option(None, help="With --data: its label(s) for the run's negative class."),
):
    """Choose the run's operating point on its validation split and store it (RUN/threshold.json):
    what predict, serve, export and evaluate use from then on. `train` stores the default one.
    With --data, choose a new site's threshold on a labelled sample of its images instead."""
    with _heavy_imports():
        from .evaluation.evaluate import store_operating_point

    if data is None and (site or positive or negative):
        raise CxrlabError("--site, --positive and --negative describe a new site's images: use them with --data")
    if data is not None:
        if tta is not None or calibrate:
            raise CxrlabError("a site's threshold keeps the run's test-time views and temperature, so every image "
                              "keeps its probability: --tta and --calibrate apply to the run's own point only")
        from .evaluation.sites import choose_site_point

        s = choose_site_point(run, data, site, policy, sample, positive=positive, negative=negative or None)
        console.print(f"site {s.name}: threshold {_threshold_text(s.point.threshold)} ({s.point.policy}, chosen on "
                      f"{s.sample_images} of its images, {s.point.val_positives} positive); the run's own is "
                      f"{_threshold_text(s.source.threshold)}. {s.rest_images} images left for `cxrlab evaluate "
                      f"{run} --data {data}`; `predict --site {s.name}` calls at this threshold.", highlight=False)
        return
    point = store_operating_point(run, policy, tta, calibrate)
    console.print(f"stored threshold {_threshold_text(point.threshold)} ({point.policy}, chosen on "
                  f"{point.val_images} validation images, {point.val_positives} positive; {point.tta} test-time views"
                  f"{f'; temperature {point.temperature:.3f}' if point.temperature else ''})", highlight=False)


def _threshold_text(value: float) -> str:
    """Enough digits to tell 0.999998 from 1."""
    return f"{value:.6g}"


def _fmt(value) -> str:
    return "undefined" if value is None or value != value else f"{value:.3f}"


def _print_metrics(m: dict, run: Path) -> None:
    ci = m["ci95"]
    table = Table("metric", "value", "95% CI", title=f"{m['split']}: {m['n']} images, {m['positives']} positive, "
                  f"{m['patients']} patients")
    table.add_row("AUC", _fmt(m["auc"]), f"{_fmt(ci['auc'][0])}-{_fmt(ci['auc'][1])}")
    table.add_row("sensitivity", _fmt(m["sensitivity"]), f"{_fmt(ci['sensitivity'][0])}-{_fmt(ci['sensitivity'][1])}")
    table.add_row("specificity", _fmt(m["specificity"]), f"{_fmt(ci['specificity'][0])}-{_fmt(ci['specificity'][1])}")
    table.add_row("accuracy", _fmt(m["accuracy"]), f"majority class: {_fmt(m['majority_rate'])}")
    for key in ("balanced_accuracy", "average_precision", "ppv", "npv", "f1"):
        table.add_row(key, _fmt(m[key]), "")
    console.print(table)
    if "auc_undefined_reason" in m:
        console.print(f"[yellow]AUC undefined:[/] {m['auc_undefined_reason']}")
    op = m["operating_point"]
    cm = m["confusion_matrix"]
    which = "the run's stored operating point" if op.get("stored") else "chosen on validation for this evaluation only"
    console.print(f"threshold {_threshold_text(op['threshold'])} ({op['policy']}, {which}); "
                  f"TP {cm['tp']}  FN {cm['fn']}  FP {cm['fp']}  TN {cm['tn']}", highlight=False)
    if "site" in m:
        _print_site(m)
    console.print(f"wrote {run}/")


def _print_findings(m: dict, run: Path) -> None:
    """A multi-label evaluation: one row per finding, the macro mean, CheXNet's published AUCs as context."""
    table = Table("finding", "pos", "neg", "AUC [95% CI]", "sens", "spec", "CheXNet*",
                  title=f"{m['split']}: {m['n']} images, {m['patients']} patients; sensitivity and specificity "
                        "at each finding's threshold (per_finding.csv)")
    for r in m["findings"]:
        auc = "undefined" if r["auc"] is None or r["auc"] != r["auc"] else \
            f"{r['auc']:.3f} [{r['auc_low']:.2f}-{r['auc_high']:.2f}]"
        table.add_row(r["finding"], str(r["positives"]), str(r["negatives"]), auc, _fmt(r["sensitivity"]),
                      _fmt(r["specificity"]), _fmt(r["chexnet_2017"]))
    console.print(table)
    low, high = m["macro_auc_ci"]
    console.print(f"macro mean AUC {_fmt(m['macro_auc'])} [{_fmt(low)}-{_fmt(high)}] over {len(m['macro_over'])} "
                  f"findings. *{m['chexnet_note']}.", highlight=False)
    console.print(f"wrote {run}/")


def _print_site(m: dict) -> None:
    """Sensitivity and specificity at the source site's threshold and at the new site's, side by side."""
    site, ci = m["site"], m["ci95"]
    table = Table("threshold", "value", "sensitivity [95% CI]", "specificity [95% CI]",
                  title=f"at the source's and at site {site['name']}'s threshold ({site['sample_images_left_out']} "
                        "images of the site's sample left out)")
    for label, row, cis in (("source site's", m, ci), (f"site {site['name']}'s", site, site["ci95"])):
        table.add_row(label, _threshold_text(row["threshold"]),
                      f"{_fmt(row['sensitivity'])} [{_fmt(cis['sensitivity'][0])}-{_fmt(cis['sensitivity'][1])}]",
                      f"{_fmt(row['specificity'])} [{_fmt(cis['specificity'][0])}-{_fmt(cis['specificity'][1])}]")
    console.print(table)


@app.command()
def report(run: Path = typer.Argument(..., help="A run directory."),
           split: str = typer.Option("test", help="Which evaluation to report (evaluated first if needed).")):
    """Write RUN/report.html: one self-contained page (data, training, metrics, errors, model card)."""
    with _heavy_imports():
        from .report import write_report

    console.print(f"wrote {write_report(run, split)}")


@app.command()
def compare(runs: List[Path] = typer.Argument(..., help="Two or more run directories."),
            split: str = typer.Option("test"), out: Path = typer.Option(Path("comparison"), help="Output folder."),
            finding: Optional[str] = typer.Option(None, help="Multi-label runs take part through this finding, scored "
                                                  "as a binary task (evaluate --finding)."),
            negative: Optional[List[str]] = typer.Option(None, help="With --finding: the negative label(s) "
                                                         "(default No Finding).")):
    """Key metrics of several runs with CIs (terminal, Markdown, CSV) and their ROC curves overlaid."""
    with _heavy_imports():
        from .evaluation.compare import compare_runs

    table = compare_runs(runs, split, out, finding, negative or None)
    view = Table("run", "model", "AUC [95% CI]", "sens [CI]", "spec [CI]", "acc (majority)", title=f"{split} split")
    for r in table.itertuples(index=False):
        view.add_row(r.run, r.model, f"{_fmt(r.auc)} [{r.auc_ci}]", f"{_fmt(r.sensitivity)} [{r.sensitivity_ci}]",
                     f"{_fmt(r.specificity)} [{r.specificity_ci}]", f"{_fmt(r.accuracy)} ({_fmt(r.majority_rate)})")
    console.print(view)
    for warning in table.attrs["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"wrote {out}/comparison.csv, comparison.md, roc_comparison.png")


@app.command()
def explain(
    run: Path = typer.Argument(..., help="A run directory."),
    images: Optional[List[Path]] = typer.Argument(None, help="Image files or folders (default: a representative "
                                                  "draw of the run's test split, one image per patient)."),
    method: Optional[List[str]] = typer.Option(None, help="gradcam, gradcam++, scorecam, layercam, ... (repeatable; "
                                               "cam only for a linear head)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default RUN/explain)."),
    target_layer: Optional[str] = typer.Option(None, help="Layer to explain (default: the model's, chosen by "
                                               "localisation on boxes, BENCHMARKS.md)."),
    sanity: bool = typer.Option(False, help="Run the model-parameter randomisation sanity check."),
    shuffled_run: Optional[Path] = typer.Option(None, help="A run trained on shuffled labels: data-randomisation test."),
    boxes: Optional[Path] = typer.Option(None, help="NIH BBox_List_2017-style CSV (or its folder): pointing game and T(IoBB)."),
    boxes_images: Optional[Path] = typer.Option(None, help="Folder with the boxed images (default: the run's data)."),
    boxes_space: Optional[int] = typer.Option(None, help="Size of the images the boxes were drawn on (NIH's: 1024); "
                                              "default: each image's own."),
    finding: Optional[str] = typer.Option(None, help="A multi-label run: the finding to explain (default per image: every "
                                          "finding at or above its threshold, else its most probable). "
                                          "With --boxes: the boxes' finding (default: the run's positive)."),
    faithfulness: bool = typer.Option(False, help="With --boxes: also ROAD scores per method."),
    limit: int = typer.Option(8, help="How many test images to draw when none are given."),
    seed: int = typer.Option(0, help="Seed of the representative draw."),
):
    """Heatmaps over the X-ray for each method (PNG + raw .npy), checked for sanity and localisation."""
    with _heavy_imports():
        import json
        from . import saliency as ex
        from .runs import RunDir

    methods = method or list(ex.DEFAULT_METHODS)
    out = out or RunDir(run).path / "explain"
    cfg = RunDir(run).read_config()
    positive, _ = RunDir(run).task_names()
    if not images:
        paths, how = ex.representative_images(run, limit, seed)
        images = [Path(p) for p in paths]
        console.print(f"explaining {how}", highlight=False)
    exp = ex.explain(run, images, methods, target_layer, finding=finding if cfg.findings else None)
    ex.save_explanation(exp, out, positive)
    console.print(f"explained {len(exp.paths)} image(s) with {', '.join(methods)} ({exp.resolution}): {out}/",
                  highlight=False)
    if sanity:
        from .saliency.sanity import PASS_RULE

        table, verdict = ex.sanity_check(run, images, methods, target_layer, out,
                                         finding=finding if cfg.findings else None)
        view = Table("method", "verdict", "at step", "Spearman", "SSIM", "HOG", "degenerate steps", title="sanity check")
        for m, row in verdict.iterrows():
            text = {"passes": "[green]passes[/]", "fails": "[red]FAILS: maps ignore the model[/]",
                    "undetermined": "[yellow]undetermined: every step degenerate[/]"}[row.verdict]
            view.add_row(m, text, str(row.randomised_down_to), f"{row.spearman:.3f}", f"{row.ssim:.3f}",
                         f"{row.hog:.3f}", str(row.degenerate_steps))
        console.print(view)
        console.print(f"rule: {PASS_RULE}; per-step verdicts in {out}/sanity.csv", highlight=False)
    if shuffled_run:
        table = ex.data_randomization(run, shuffled_run, images, methods, target_layer)
        table.to_csv(Path(out) / "data_randomization.csv", index=False)
        console.print(table.to_string(index=False))
    if boxes:
        result = ex.localisation(run, boxes, boxes_images or cfg.source, methods, target_layer, faithfulness,
                                 boxes_space, finding)
        (Path(out) / "localisation.json").write_text(json.dumps(result, indent=2))
        for m, r in result.items():
            lo, hi = r["pointing_ci95"]
            console.print(f"{m}: pointing game {r['pointing_game']:.3f} [95% CI {lo:.3f}-{hi:.3f}] over {r['images']} "
                          f"boxes (chance {r['pointing_chance']:.3f}); energy in the box {r['energy_game']:.3f}; "
                          "T(IoBB) accuracy "
                          + ", ".join(f"{t}: {v:.2f}" for t, v in r["iobb_accuracy"].items()), highlight=False)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run directory."),
    paths: List[Path] = typer.Argument(..., help="Image files (PNG, JPEG, DICOM...) or folders."),
    out: Optional[Path] = typer.Option(None, help="Write the predictions as CSV."),
    heatmaps: Optional[Path] = typer.Option(None, help="Folder for heatmap PNGs and .npy maps."),
    method: str = typer.Option("layercam", help="Heatmap method with --heatmaps (layercam: the measured default)."),
    on_bad_image: str = typer.Option("error", help="error: stop at an unreadable image; skip: leave it out and list it."),
    site: Optional[str] = typer.Option(None, help="Call at this site's operating point (`cxrlab threshold --data`) "
                                       "instead of the run's own."),
    dicom_out: Optional[Path] = typer.Option(None, help="Folder for DICOM results: per input DICOM, a Structured Report "
                                             "and a heatmap Secondary Capture in its study (new series)."),
):
    """Score new images with the run's preprocessing and its stored (validation-chosen) threshold."""
    with _heavy_imports():
        import pandas as pd
        from .saliency import expand_paths
        from .serving import Predictor

    if on_bad_image not in ("error", "skip"):
        raise CxrlabError(f"--on-bad-image must be error or skip, got {on_bad_image!r}")
    predictor = Predictor(run, site=site)
    files = expand_paths(paths)
    skipped: list[dict] = []
    with _Bar("predicting") as bar:
        results = []
        for i in range(0, len(files), 32):
            results += predictor.predict_paths(files[i:i + 32], method if heatmaps or dicom_out else None,
                                               skipped=skipped if on_bad_image == "skip" else None)
            bar(len(results) + len(skipped), len(files))
    for item in skipped:
        console.print(f"[red]skipped[/] {item['path']}: {item['reason']}", highlight=False)
    if not results:
        raise CxrlabError(f"none of the {len(files)} image(s) could be read; nothing to predict")
    if predictor.findings:  # multi-label: one probability and one flag per finding
        table = Table("image", "findings at or above their thresholds", "top finding", title=predictor.policy)
        for r in results[:50]:
            top = r.findings[0]
            table.add_row(Path(r.path).name, r.label, f"{top['finding']} {top['probability']:.3f}")
        frame = pd.DataFrame([{"path": r.path, **{f"probability:{f['finding']}": f["probability"] for f in r.findings},
                               **{f"predicted:{f['finding']}": int(f["positive"]) for f in r.findings}}
                              for r in results])
        frame = frame[["path", *[f"{kind}:{f}" for kind in ("probability", "predicted") for f in predictor.findings]]]
    else:
        table = Table("image", f"P({predictor.positive})", "call",
                      title=f"threshold {_threshold_text(predictor.threshold)} ({predictor.policy})")
        for r in results[:50]:
            table.add_row(Path(r.path).name, f"{r.probability:.3f}", r.label)
        frame = pd.DataFrame([{"path": r.path, "probability": r.probability, "predicted": r.label,
                               "threshold": r.threshold, "policy": r.policy} for r in results])
    console.print(table)
    if out:
        frame.to_csv(out, index=False)
        console.print(f"wrote {out}")
    if heatmaps:
        from .saliency import Explanation, save_explanation

        pixels = [predictor.read(r.path) for r in results]
        exp = Explanation([r.path for r in results], np.stack(pixels), frame["probability"].to_numpy(),
                          [None] * len(results), {method: np.stack([r.heatmap for r in results])})
        save_explanation(exp, heatmaps, predictor.positive)
        console.print(f"wrote heatmaps to {heatmaps}/")
    if dicom_out:
        from .serving.dicom_out import write_dicom_results

        written, not_dicom = write_dicom_results(predictor, results, dicom_out)
        for path in not_dicom:
            console.print(f"[yellow]no DICOM result[/] for {path}: not a DICOM file", highlight=False)
        console.print(f"wrote {len(written)} Structured Report(s) and heatmap Secondary Capture(s) to {dicom_out}/")


@app.command()
def export(run: Path = typer.Argument(..., help="A run directory."),
           format: str = typer.Option("onnx", help="onnx or torchscript."),
           out: Optional[Path] = typer.Option(None, help="Output folder (default RUN/export).")):
    """Export the model (ONNX runs with onnxruntime alone, no torch) with its preprocessing and threshold."""
    with _heavy_imports():
        from .serving.export import export_run

    console.print(f"wrote {export_run(run, format, out)} and preprocess.json")


@app.command()
def serve(run: Path = typer.Argument(..., help="A run directory."),
          host: str = typer.Option("127.0.0.1", help="Address to bind (default: this machine only)."),
          port: int = typer.Option(8000), max_upload_mb: float = typer.Option(20.0, help="Upload limit in MB."),
          docs: bool = typer.Option(False, help="Also serve /docs and /redoc (their scripts come from a public CDN: "
                                    "they need internet). The schema is always at /openapi.json."),
          site: Optional[str] = typer.Option(None, help="Call at this site's operating point (`cxrlab threshold --data`)."),
          backend: str = typer.Option("auto", help="torch, onnxruntime, or auto (the faster one for the model).")):
    """Serve the web page (/), the quiz (/quiz) and the JSON API (/api, schema at /openapi.json)."""
    with _heavy_imports():
        import uvicorn
        from .serving.app import create_app

    console.print(f"cxrlab serving {run} on http://{host}:{port}/  (quiz: /quiz, API schema: /openapi.json"
                  f"{', docs: /docs' if docs else ''})")
    uvicorn.run(create_app(run, max_upload_mb, docs=docs, site=site, backend=backend), host=host, port=port, log_level="warning")


@app.command()
def tune(
    data: Path = typer.Argument(..., help="Training data (any layout `data summary` reads)."),
    out: Path = typer.Option(..., help="Search folder: trials/NNNN run directories, trials.csv, best.yaml, summary.html."),
    positive: Optional[str] = typer.Option(None, help="Positive label, e.g. Effusion."),
    negative: Optional[List[str]] = typer.Option(None, help="Negative label(s); default: normal / No Finding."),
    space: str = typer.Option("default", help="A search space YAML file, or a preset: default, lesson-grid."),
    trials: int = typer.Option(20, help="Finished trials (complete or pruned) the study ends with."),
    sampler: str = typer.Option("tpe", help="tpe, random, or grid (every combination of the space's lists)."),
    pruner: str = typer.Option("median", help="median, hyperband or none: stop poor trials early."),
    metric: str = typer.Option("val_auc", help="val_auc or val_loss (validation only; test is scored once, at the end)."),
    workers: int = typer.Option(1, help="Trial processes on this machine; they share its cores."),
    storage: Optional[str] = typer.Option(None, help="Where the study lives: journal:PATH (a shared file system) or "
                                          "postgresql://user:pass@host/db (several machines). Default: DIR/study.journal."),
    study: Optional[str] = typer.Option(None, help="Study name (default: the --out folder's name); the same name "
                                        "and storage on another machine joins the study."),
    timeout: Optional[float] = typer.Option(None, help="No new trial starts after this many seconds."),
    config: Optional[Path] = typer.Option(None, help="A config.yaml every trial starts from (default: cxrlab's default recipe)."),
    recipe: Optional[str] = typer.Option(None, help="Start every trial from a named recipe: default, long or lesson."),
    images: Optional[Path] = typer.Option(None, help="Images folder for a CSV."),
    epochs: Optional[int] = typer.Option(None, help="At most this many epochs per trial."),
    image_size: Optional[int] = typer.Option(None),
    seed: int = typer.Option(0, help="Seed of the sampler (each worker derives its own)."),
    heartbeat: int = typer.Option(20, help="Seconds between a running trial's heartbeats; after 3 missed, another "
                                  "worker fails it and runs it again."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE: change the base recipe, e.g. --set tta=0 "
                                             "(YAML values; any TrainConfig or DataConfig key)."),
):
    """Search hyper-parameters with Optuna: every trial an ordinary run, chosen on validation, the best scored once on test."""
    with _heavy_imports():
        import yaml
        from .config import TrainConfig, load_yaml, with_overrides
        from .tuning import tune as run_search

    if config and recipe:
        raise CxrlabError("give --config or --recipe, not both: a config file already holds a whole recipe")
    base = load_yaml(TrainConfig, config) if config else TrainConfig.recipe(recipe or "default")
    changes = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CxrlabError(f"--set {item!r}: write KEY=VALUE, e.g. --set tta=0")
        changes[key.strip()] = yaml.safe_load(value)
    base = with_overrides(base, epochs=epochs, image_size=image_size,
                          images_dir=str(images) if images else None, **changes)
    result = run_search(data, positive, negative or None, space, trials, out, base, sampler, pruner, metric, workers,
                        storage, study, timeout, seed, heartbeat, on_trial=_print_trial, on_note=_print_note)
    _print_search(result.summary, result.out)


def _print_trial(row: dict) -> None:
    value = "" if row["value"] is None else f"{row['metric']} {row['value']:.4f}"
    best = f"best {row['best']['value']:.4f} (#{row['best']['number']})" if row["best"] else "best -"
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
    extra = f"  ({row['error']})" if row["error"] else ""
    epochs = f"{row['epochs_run']} ep" if row.get("epochs_run") else ""
    seconds = f"{row['seconds']:.0f}s" if row.get("seconds") is not None else ""
    console.print(f"trial {row['number']:>3}  {row['state']:<8} {value:<15} {best:<20} {epochs:>5} {seconds:>5}  "
                  f"{params}{extra}", highlight=False)


def _print_search(s: dict, out: Path) -> None:
    console.print(f"{s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed "
                  f"(of {s['trials_requested']} requested); study {s['study']!r} in {s['storage']}", highlight=False)
    if s["best"]:
        b = s["best"]
        console.print(f"best trial #{b['number']}: validation {s['metric']} {b['value']:.4f}", highlight=False)
        if s["test"]:
            t = s["test"]
            gap = f"; validation minus test {s['optimism']:+.4f} (the optimism of picking the best on validation)" \
                if "optimism" in s else ""
            console.print(f"its test AUC, scored once: {t['auc']:.4f} [95% CI {t['ci95'][0]:.4f}, {t['ci95'][1]:.4f}]{gap}",
                          highlight=False)
        else:
            console.print(f"its test score is made on {b['host']}, which holds {b['run_dir']}", highlight=False)
    console.print(f"wrote {out / 'trials.csv'}, {out / 'best.yaml'} (cxrlab train --config) and {out / 'summary.html'}")


@app.command()
def demo(out: Path = typer.Option(Path("cxrlab-demo"), help="Folder for the synthetic data and results.")):
    """Make a synthetic chest-X-ray-like data set (offline, deterministic) and run the workflow on it."""
    with _heavy_imports():
        from .demo import run_demo

    with _Bar("decoding images") as bar:
        result = run_demo(out, progress=bar, on_epoch=_print_epoch, on_summary=_print_summary)
    run = result["run"]
    console.print(f"trained {run.info['model']['name']} ({run.info['parameters']:,} parameters) in "
                  f"{run.info['train_seconds']:.1f}s; best epoch {run.best_epoch}, "
                  f"val AUC {run.history['val_auc'].iloc[run.best_epoch - 1]:.3f}; run: {run.dir.path}")
    _print_metrics(result["metrics"], Path(result["metrics"]["folder"]))
    console.print(f"heatmaps (LayerCAM, Grad-CAM, Grad-CAM++, Score-CAM; test images, one per patient): {result['explain_dir']}/")
    p = result["pointing"]
    console.print(f"LayerCAM's peak falls inside the effusion's box on {p['pointing_game']:.0%} of the "
                  f"{p['images']} boxed test images (95% CI {p['pointing_ci95'][0]:.0%}-{p['pointing_ci95'][1]:.0%}); "
                  f"a random point would: {p['pointing_chance']:.0%}", highlight=False)
    console.print(f"[bold]report:[/] {result['report']}")


def main() -> None:
    """Console entry point: user errors become one clear line and exit code 2, not a traceback.
    cxrlab's own process (not a notebook importing it) keeps freed CPU buffers for reuse, and skips the
    garbage collection that Python runs as it exits."""
    global _own_process
    from .allocator import keep_freed_memory

    keep_freed_memory()
    _own_process = True
    try:
        app()
    except CxrlabError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    finally:
        # The process ends here. Python's last collection would walk every object that torch and scikit-learn
        # made, only to free memory the OS takes back anyway: 1.8-2.0 s of a lesson run's exit (with
        # torch._dynamo, which training imported then), 0.35-0.40 s with the objects frozen (BENCHMARKS.md,
        # session 14). atexit handlers still run.
        gc.freeze()
