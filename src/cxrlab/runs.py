"""The run directory: the one place that knows its file names."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import CxrlabError


class RunDir:
    """config.yaml, split.csv, history.csv, best.safetensors, last.ckpt, run.json, curves.png,
    tensorboard/ (event files)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:  # a RunDir is accepted wherever a path is
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml")
    split = property(lambda self: self.path / "split.csv")
    history = property(lambda self: self.path / "history.csv")
    best_weights = property(lambda self: self.path / "best.safetensors")
    last_checkpoint = property(lambda self: self.path / "last.ckpt")
    info = property(lambda self: self.path / "run.json")
    curves = property(lambda self: self.path / "curves.png")
    tensorboard = property(lambda self: self.path / "tensorboard")
    threshold = property(lambda self: self.path / "threshold.json")
    report = property(lambda self: self.path / "report.html")

    def eval_dir(self, split: str) -> Path:
        """eval/<split>/: predictions.csv, metrics.json, false_negatives.csv, false_positives.csv,
        <split>_yscores.csv, <split>_roc.csv and the PNG figures."""
        return self.path / "eval" / split

    def prepare(self, overwrite: bool = False, resume: bool = False) -> None:
        """Fail before training if the directory is in use or cannot be written."""
        if resume:
            if not self.last_checkpoint.exists():
                raise CxrlabError(f"{self.path}: no {self.last_checkpoint.name} to resume from")
        elif self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise CxrlabError(f"{self.path} already exists; pass --overwrite to replace it "
                                  "or --resume to continue it")
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".probe", delete=True) as f:
                f.write(b"\0" * 1_000_000)  # 1 MB: a full disk fails here, not after an hour of training
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise CxrlabError(f"{self.path}: cannot write the run directory ({exc.strerror or exc})") from None

    def write_info(self, info: dict) -> None:
        tmp = self.info.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, self.info)

    def read_info(self) -> dict:
        if not self.info.exists():
            raise CxrlabError(f"{self.path}: missing {self.info.name}; is this a cxrlab run directory?")
        return json.loads(self.info.read_text())
