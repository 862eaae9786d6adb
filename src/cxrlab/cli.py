"""The `cxrlab` command line: parses options, calls the library, prints with Rich. No logic here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

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
console = Console()


class _Bar:
    """A Rich progress bar usable as the library's progress(done, total) callback."""

    def __init__(self, label: str):
        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, done: int, total: int):
        if self.task is None:
            self.task = self.progress.add_task("", total=total)
        self.progress.update(self.task, completed=done)


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
):
    """Counts per class and split, patients, sizes, duplicates, unreadable files; summary.json and plots."""
    from .data import load_data
    from .data.summary import write_summary

    cfg = DataConfig(image_size=image_size, split_scheme=split_scheme, split_seed=split_seed,
                     val_policy=val_policy, on_bad_image=on_bad_image,
                     cache_dir=str(cache_dir) if cache_dir else None)
    with _Bar("decoding images") as bar:
        loaded = load_data(data, positive, negative or None, images, cfg, progress=bar)
    _print_summary(write_summary(loaded, out), out)


@app.command()
def demo(out: Path = typer.Option(Path("cxrlab-demo"), help="Folder for the synthetic data and results.")):
    """Make a synthetic chest-X-ray-like data set (offline, deterministic) and run the workflow on it."""
    from .demo import run_demo

    with _Bar("decoding images") as bar:
        result = run_demo(out, progress=bar)
    _print_summary(result["summary"], result["summary_dir"])


def main() -> None:
    """Console entry point: user errors become one clear line and exit code 2, not a traceback."""
    try:
        app()
    except CxrlabError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
