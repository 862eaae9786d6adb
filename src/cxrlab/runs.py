"""The run directory: the one place that knows its file names and formats. Every other module reads
and writes a run through `RunDir`'s typed methods."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CxrlabError

NEGATIVE_FALLBACK = "negative"  # the negative class's name when a run does not record one
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

MODEL_CARD = {
    "intended_use": "Teaching and research on detecting {positive} on chest X-rays, and comparing methods. "
                    "Not a medical device: never diagnosis or triage of real patients.",
    "limitations": "Trained on a small public data set: small validation and test sets give wide CIs; labels "
                   "of public sets are mined from reports and noisy; performance on other hospitals, devices, "
                   "ages or views is unknown; saliency maps are not proof of what the model uses.",
}


@dataclass
class OperatingPoint:
    """The stored threshold (threshold.json): chosen by `policy` on validation scores made with `tta`
    test-time views (and calibrated with `temperature` when set). `chosen_on` is "val", or "site:NAME"
    for a point chosen on a sample of another site's images (val_images / val_positives count those)."""

    policy: str
    threshold: float
    temperature: float | None = None
    tta: int = 0
    chosen_on: str = "val"
    val_images: int = 0
    val_positives: int = 0
    # multi-label: one threshold per finding, chosen on its labelled validation images (`threshold` unused)
    thresholds: dict[str, float] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "OperatingPoint":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

# what a start writes before its first epoch completes: a directory holding only these never trained
START_FILES = {"config.yaml", "split.csv", "tensorboard"}


class WriteError(CxrlabError):
    """A run file could not be written (full disk, permissions); the previous version is kept."""


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: an interruption or a full disk never
    leaves half a file, and the temporary file is removed when the write fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise WriteError(f"{reason} writing {path}") from None


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

    def never_trained(self) -> bool:
        """True for a directory left by a start that failed before its first epoch completed (it
        holds only what a start writes): it does not block its own rerun."""
        entries = [p.name for p in self.path.iterdir() if not _is_temp(p.name)]
        return bool(entries) and set(entries) <= START_FILES

    def remove_temp_files(self) -> None:
        """Temporary files of writes that never finished (a kill -9 during a checkpoint write)."""
        for p in self.path.iterdir():
            if _is_temp(p.name) and p.is_file():
                p.unlink(missing_ok=True)

    def prepare(self, overwrite: bool = False, resume: bool = False) -> None:
        """Fail before training if the directory is in use or cannot be written."""
        if self.path.exists() and not self.path.is_dir():
            raise CxrlabError(f"{self.path} is a file, not a folder; choose another --out")
        if self.path.is_dir():
            self.remove_temp_files()
        if resume:
            if not self.last_checkpoint.exists():
                done = "no epoch completed, so there is nothing to resume; run the same command without --resume" \
                    if self.path.is_dir() and self.never_trained() else f"no {self.last_checkpoint.name} to resume from"
                raise CxrlabError(f"{self.path}: {done}")
        elif self.path.exists() and any(self.path.iterdir()):
            if not (overwrite or self.never_trained()):
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

    # -- typed readers and writers --------------------------------------------------------------------
    def read_config(self):
        """The run's TrainConfig (config.yaml), as it trained: keys added since it was written take the
        value it trained with (RUN_KEYS_ADDED)."""
        from .config import RUN_KEYS_ADDED, TrainConfig, load_yaml

        if not self.config.exists():
            raise CxrlabError(f"{self.path}: missing {self.config.name}; is this a cxrlab run directory?")
        return load_yaml(TrainConfig, self.config, absent=RUN_KEYS_ADDED)

    def read_split(self):
        """split.csv as a DataFrame (path, patient, y, split); empty when the run has none."""
        import pandas as pd

        if not self.split.exists():
            return pd.DataFrame(columns=["path", "patient", "y", "split"])
        return pd.read_csv(self.split, dtype={"path": str, "patient": str, "split": str})

    def read_point(self) -> OperatingPoint | None:
        """The stored operating point, or None before one is chosen."""
        if not self.threshold.exists():
            return None
        try:
            return OperatingPoint.from_dict(json.loads(self.threshold.read_text()))
        except (ValueError, TypeError) as exc:
            raise CxrlabError(f"{self.threshold}: not a readable operating point ({exc}); "
                              "choose one again with `cxrlab threshold`") from None

    def write_point(self, point: OperatingPoint) -> None:
        atomic_write(self.threshold, json.dumps(point.to_dict(), indent=2).encode())

    # -- operating points chosen on other sites' images ---------------------------------------------------
    def site_file(self, name: str) -> Path:
        """sites/<name>.json: an operating point chosen on a labelled sample of a new site's images,
        the data it came from, and (sites/<name>-sample.csv) the images of that sample."""
        if not SITE_NAME.fullmatch(name or ""):
            raise CxrlabError(f"site name {name!r}: use letters, digits, '.', '_' or '-'")
        return self.path / "sites" / f"{name}.json"

    def site_names(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "sites").glob("*.json"))

    def write_site(self, name: str, point: OperatingPoint, about: dict, sample_paths: list[str]) -> None:
        import pandas as pd

        path = self.site_file(name)
        path.parent.mkdir(exist_ok=True)
        atomic_write(path.with_name(f"{name}-sample.csv"), pd.DataFrame({"path": sample_paths}).to_csv(index=False).encode())
        atomic_write(path, json.dumps({"point": point.to_dict(), **about}, indent=2).encode())

    def read_site(self, name: str) -> tuple[OperatingPoint, dict]:
        """(the site's point, what was recorded about the site's data)."""
        path = self.site_file(name)
        if not path.exists():
            known = ", ".join(self.site_names()) or "none yet"
            raise CxrlabError(f"{self.path}: no operating point for site {name!r} (sites: {known}); choose one with "
                              f"`cxrlab threshold {self.path} --data SITE_DATA --site {name}`")
        try:
            about = json.loads(path.read_text())
            return OperatingPoint.from_dict(about.pop("point")), about
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise CxrlabError(f"{path}: not a readable site operating point ({exc}); choose it again "
                              "with `cxrlab threshold --data`") from None

    def read_site_sample(self, name: str) -> list[str]:
        """The image paths the site's point was chosen on (read only where they are left out)."""
        import pandas as pd

        path = self.site_file(name).with_name(f"{name}-sample.csv")
        try:
            return pd.read_csv(path, dtype={"path": str})["path"].tolist()
        except (ValueError, KeyError, OSError) as exc:
            raise CxrlabError(f"{path}: not a readable site sample ({exc}); choose the site's threshold again "
                              "with `cxrlab threshold --data`") from None

    def task_names(self) -> tuple[str, str]:
        """(positive, negative) class names: the resolved task in run.json, else config.yaml's."""
        info = self.read_info() if self.info.exists() else {}
        task = info.get("task") or {}
        cfg = self.read_config()
        positive = cfg.positive or task.get("positive") or "positive"
        return positive, "/".join(task.get("negatives") or cfg.negative or [NEGATIVE_FALLBACK])

    def read_history(self):
        import pandas as pd

        return pd.read_csv(self.history)

    def write_info(self, info: dict) -> None:
        atomic_write(self.info, json.dumps(info, indent=2, default=str).encode())

    def read_info(self) -> dict:
        if not self.info.exists():
            raise CxrlabError(f"{self.path}: missing {self.info.name}; is this a cxrlab run directory?")
        return json.loads(self.info.read_text())


def _is_temp(name: str) -> bool:
    return name.startswith(".") and ".tmp" in name
