"""Shared fixtures: small synthetic data sets in every supported layout, written per test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.demo import synthetic_xray

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch the user's image cache from a test."""
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path / "cache"))


def xray(seed: int, size: int = 64, positive: bool = False) -> np.ndarray:
    return synthetic_xray(np.random.default_rng(seed), size, positive)[0]


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def flat_folders(tmp_path) -> Path:
    """ROOT/effusion, ROOT/normal: 12 patients per class, 1-2 images each, NIH-style names."""
    root = tmp_path / "chest_xrays"
    seed = 0
    for cls, positive, first_patient in (("effusion", True, 1), ("normal", False, 100)):
        for p in range(first_patient, first_patient + 12):
            for k in range(1 + p % 2):
                seed += 1
                write_png(root / cls / f"{p:08d}_{k:03d}.png", xray(seed, positive=positive))
    return root


@pytest.fixture
def presplit_folders(tmp_path) -> Path:
    """Kaggle pneumonia layout with Kermany names; val/ is tiny, as in the original."""
    root = tmp_path / "chest_xray"
    seed = 0
    counts = {"train": 40, "val": 1, "test": 6}
    for split, n in counts.items():
        for i in range(n):
            seed += 1
            pid = seed
            write_png(root / split / "PNEUMONIA" / f"person{pid}_bacteria_{i}.jpeg".replace(".jpeg", ".png"),
                      xray(seed, positive=True))
            write_png(root / split / "NORMAL" / f"IM-{pid:04d}-0001.png", xray(seed + 1000))
    return root


@pytest.fixture
def nih_csv(tmp_path) -> Path:
    """An NIH-style labels.csv with images/ beside it: multi-label rows and repeat patients."""
    root = tmp_path / "nih"
    rows = []
    labels_cycle = ["No Finding", "Effusion", "Effusion|Infiltration", "Pneumonia", "No Finding", "Cardiomegaly"]
    for i in range(36):
        patient = i // 2 + 1
        name = f"{patient:08d}_{i % 2:03d}.png"
        labels = labels_cycle[i % len(labels_cycle)]
        write_png(root / "images" / name, xray(i, positive="Effusion" in labels))
        rows.append([name, labels, str(patient), str(i % 2)])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Patient ID", "Follow-up #"])
        w.writerows(rows)
    return root / "labels.csv"


@pytest.fixture(scope="session")
def lesson_run(tmp_path_factory) -> Path:
    """One small trained run (the lesson's recipe, 12 epochs on 80 synthetic patients at 96 px) shared by
    every test module that only reads a run: evaluation, serving, the browser, the fault catalogue. Tests
    that change a run work on a copy."""
    from cxrlab.training import train

    tmp = tmp_path_factory.mktemp("lesson-run")
    from cxrlab.demo import make_demo_data

    data = make_demo_data(tmp / "d", n_patients=80, size=96, difficulty="easy")
    return train(lesson_config(data, 96, 12, tmp / "cache"), tmp / "run").dir.path


def train_interrupted(cfg, out, epoch: int = 2):
    """Train `cfg` into `out` and stop it with a KeyboardInterrupt after `epoch` (as Ctrl-C would), leaving
    a run to resume."""
    from cxrlab.training import train

    def interrupt(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, on_epoch=interrupt)


requires_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")


def lesson_config(source, image_size: int, epochs: int, cache_dir, **kw):
    """The lesson's recipe (seed-cnn, no augmentation, best val loss, no early stop) on small data:
    fast and deterministic for tests that need a trained run."""
    from cxrlab.config import TrainConfig

    return TrainConfig.recipe("lesson", source=str(source), positive="effusion", epochs=epochs,
                              image_size=image_size, cache_dir=str(cache_dir), **kw)
