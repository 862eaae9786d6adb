"""The embedded default: a synthetic, deterministic chest-X-ray-like data set, made on the fly.

Each image has dark lung fields, a bright mediastinum and heart, ribs, soft tissue and noise.
Positive images ("effusion") carry fluid at the base of one lung: a bright, meniscus-shaped
opacity that blunts the costophrenic angle. Its bounding box is recorded in `boxes.csv`
(NIH BBox_List_2017 columns), so explanations can be checked against where the finding is.
The teaching set (the default) varies what a real set varies: effusion size and density, exposure,
noise, and normals with a basal mimic; the easy set (every effusion large and dense) is for tests.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

POSITIVE, NEGATIVE = "effusion", "normal"
BOX_COLUMNS = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]


def _ellipse(xx, yy, cx, cy, rx, ry, soft=0.08):
    """Soft-edged ellipse mask in [0, 1]."""
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1 - d) / soft, 0, 1)


def _blur(img: np.ndarray, passes: int = 2) -> np.ndarray:
    for _ in range(passes):
        img = (img + np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1)) / 5
    return img


def _draw(sample, *args) -> float:
    """One random number as a Python float: a NumPy float64 scalar would turn every float32 image
    array it touches into float64 (NumPy 2 promotion), which made each image 2x slower to draw."""
    return float(sample(*args))


DIFFICULTIES = ("teaching", "easy")


def patient_look(rng: np.random.Generator, effusion: bool) -> dict:
    """What one patient's images share in the teaching set: how large and dense the effusion is (down to a
    sliver at the costophrenic angle), the exposure, the noise, and for some normals a mimic: a raised
    hemidiaphragm, a bright basal dome that is not fluid (its top is convex; fluid's meniscus is concave)."""
    return {"severity": _draw(rng.uniform, 0.15, 1.0) if effusion else 0.0,
            "gamma": _draw(rng.uniform, 0.7, 1.4), "contrast": _draw(rng.uniform, 0.75, 1.15),
            "offset": _draw(rng.uniform, -0.06, 0.06), "noise": _draw(rng.uniform, 0.02, 0.05),
            "mimic": (not effusion) and _draw(rng.uniform, 0, 1) < 0.2, "mimic_side": int(rng.integers(0, 2)),
            "mimic_strength": _draw(rng.uniform, 0.3, 1.0)}


def synthetic_xray(rng: np.random.Generator, size: int = 256, effusion: bool = False, look: dict | None = None):
    """One image (uint8 size x size) and the finding's box (x, y, w, h) in pixels, or None. `look`
    (patient_look) makes the teaching set's image; without it every effusion is large and dense (easy)."""
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(lin, lin)
    dx, dy = (float(v) for v in rng.normal(0, 0.03, 2))  # Python floats keep the maths in float32
    xx, yy = xx - dx, yy - dy
    body = _ellipse(xx, yy, 0, 0.1, 0.92 + _draw(rng.normal, 0, 0.03), 1.1, soft=0.1)
    img = 0.08 + 0.47 * body
    lungs = np.zeros_like(img)
    lung_geom = []
    for side in (-1, 1):
        cx, cy = side * (0.38 + _draw(rng.normal, 0, 0.02)), -0.02 + _draw(rng.normal, 0, 0.02)
        rx, ry = 0.26 + _draw(rng.normal, 0, 0.015), 0.58 + _draw(rng.normal, 0, 0.03)
        lung = _ellipse(xx, yy, cx, cy, rx, ry, soft=0.15)
        lungs = np.maximum(lungs, lung)
        lung_geom.append((cx, cy, rx, ry, lung))
    img -= 0.3 * lungs
    ribs = np.clip(np.cos((yy * 9 + 2.5 * xx**2 + _draw(rng.uniform, 0, np.pi)) * np.pi), 0, 1) ** 6
    img += 0.09 * ribs * lungs
    img += 0.3 * _ellipse(xx, yy, 0, 0.05, 0.12, 0.9, soft=0.5)  # mediastinum and spine
    img += 0.12 * _ellipse(xx, yy, 0.14 + _draw(rng.normal, 0, 0.02), 0.3, 0.26, 0.22, soft=0.8)  # heart (patient's left)
    box = None
    if look is not None and look["mimic"]:  # raised hemidiaphragm: a bright dome, highest mid-lung
        cx, cy, rx, ry, lung = lung_geom[look["mimic_side"]]
        top = cy + ry * 0.62 - 0.14 * np.clip(1 - ((xx - cx) / rx) ** 2, 0, 1)
        img += 0.2 * look["mimic_strength"] * np.clip((yy - top) / 0.04, 0, 1) * lung
    if effusion:
        side = int(rng.integers(0, 2))
        cx, cy, rx, ry, lung = lung_geom[side]
        if look is None:
            depth, density = _draw(rng.uniform, 0.25, 0.55), 0.27
        else:  # severity 1: as large and dense as the easy set's; near 0: a faint sliver at the angle
            depth = 0.25 + 0.55 * (1 - look["severity"]) + _draw(rng.uniform, -0.04, 0.04)
            density = 0.27 * (0.45 + 0.55 * look["severity"])
        level = cy + ry * depth  # fluid top, in image coordinates (down is +)
        lateral = side * 2 - 1  # -1 for the image-left lung
        meniscus = level - 0.12 * np.clip((xx - cx) * lateral / rx, 0, 1) ** 2  # rises laterally
        fluid = np.clip((yy - meniscus) / 0.03, 0, 1) * lung
        img += density * fluid
        ys, xs = np.nonzero(fluid > 0.5)
        if len(xs):
            box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    if look is None:
        img = _blur(img + rng.normal(0, 0.035, img.shape).astype(np.float32), passes=1)
        img = np.clip(img, 0, 1) ** _draw(rng.uniform, 0.85, 1.15)
    else:
        img = (img - 0.3) * look["contrast"] + 0.3 + look["offset"]
        img = _blur(img + rng.normal(0, look["noise"], img.shape).astype(np.float32), passes=1)
        img = np.clip(img, 0, 1) ** (look["gamma"] * _draw(rng.uniform, 0.95, 1.05))
    return (img * 255).astype(np.uint8), box


def make_demo_data(out_dir: str | Path, n_patients: int = 160, size: int = 256, seed: int = 0,
                   difficulty: str = "teaching") -> Path:
    """Write OUT/data/{normal,effusion}/<patient>_<k>.png (NIH-style names, 1-3 images per patient,
    one label per patient) and OUT/boxes.csv. Same seed, same bytes. Returns the data folder.
    difficulty "teaching" (the demo's): effusions of every size down to subtle, exposure and noise that vary
    between patients, and normals with a basal mimic, so a class sees misses and wide intervals; "easy":
    every effusion large and dense (tests that need a model to learn in seconds)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    rng = np.random.default_rng(seed)
    boxes = []
    for cls in (POSITIVE, NEGATIVE):
        (data_dir / cls).mkdir(parents=True, exist_ok=True)
    for patient in range(1, n_patients + 1):
        positive = patient % 2 == 0
        look = patient_look(rng, positive) if difficulty == "teaching" else None
        for k in range(int(rng.integers(1, 4))):
            img, box = synthetic_xray(rng, size, positive, look)
            name = f"{patient:08d}_{k:03d}.png"
            # zlib level 1: about half the time of the default level 6 (4.8 vs 9.0 ms), files about 15% larger
            Image.fromarray(img).save(data_dir / (POSITIVE if positive else NEGATIVE) / name, compress_level=1)
            if box:
                boxes.append([name, "Effusion", *box])
    with open(out_dir / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(BOX_COLUMNS)
        writer.writerows(boxes)
    return data_dir


DEMO_IMAGE_SIZE = 128  # the lesson uses 256; 128 keeps the demo well under a minute on 2 CPU cores
DEMO_EPOCHS = 20


def run_demo(out_dir: str | Path = "cxrlab-demo", progress=None, on_epoch=None, on_summary=None) -> dict:
    """Generate the demo data, summarise it, train the lesson's seed-cnn on it, evaluate it on the
    held-out test patients, explain four images with the CAM family, and write the HTML report."""
    from .config import AugmentConfig, DataConfig, TrainConfig
    from .data import load_data
    from .data.summary import write_summary
    from .training import train

    out_dir = Path(out_dir)
    data_dir = make_demo_data(out_dir)
    data_cfg = DataConfig(image_size=DEMO_IMAGE_SIZE, cache_dir=str(out_dir / "cache"),
                          augment=AugmentConfig(enabled=False))
    loaded = load_data(data_dir, positive=POSITIVE, negative=NEGATIVE, config=data_cfg, progress=progress)
    summary_dir = out_dir / "summary"
    summary = write_summary(loaded, summary_dir)
    if on_summary:
        on_summary(summary, summary_dir)
    # the lesson's recipe, so the demo teaches the lesson; smaller images and more epochs
    cfg = TrainConfig.recipe("lesson", source=str(data_dir), positive=POSITIVE, negative=[NEGATIVE],
                             epochs=DEMO_EPOCHS, image_size=DEMO_IMAGE_SIZE, cache_dir=str(out_dir / "cache"))
    run = train(cfg, out_dir / "run", overwrite=True, on_epoch=on_epoch)
    from .evaluation.evaluate import evaluate_run
    from .report import write_report

    from .saliency import explain, localisation, representative_images, save_explanation
    from .saliency.methods import DEFAULT_MAP_METHOD

    metrics = evaluate_run(run.dir)
    # test images only (never training images), one per patient, positives first
    examples, _ = representative_images(run.dir, 4)
    save_explanation(explain(run.dir, examples, ["layercam", "gradcam", "gradcam++", "scorecam"]),
                     out_dir / "explain", POSITIVE)
    # does the default map point at the effusion? On the test images with a box, against chance
    pointing = localisation(run.dir, out_dir / "boxes.csv", data_dir, [DEFAULT_MAP_METHOD], split="test")
    report = write_report(run.dir)
    return {"data_dir": data_dir, "summary": summary, "summary_dir": summary_dir, "run": run,
            "metrics": metrics, "report": report, "explain_dir": out_dir / "explain",
            "pointing": pointing[DEFAULT_MAP_METHOD]}


def lesson_data(data: str | Path | None = None, work: str | Path = "lesson-work") -> Path:
    """The lesson notebooks' data: `data` when given (e.g. the NIH subset), else the demo data, made
    once in WORK/demo (offline, deterministic, the same as `cxrlab demo`'s)."""
    if data is not None:
        return Path(data)
    folder = Path(work) / "demo"
    if not (folder / "data" / POSITIVE).is_dir():
        make_demo_data(folder)
    return folder / "data"


def lesson_run(data: str | Path, positive: str = POSITIVE, negative: str = NEGATIVE,
               image_size: int = DEMO_IMAGE_SIZE, work: str | Path = "lesson-work", epochs: int = DEMO_EPOCHS,
               retrain: bool = False):
    """The lesson's network trained with the lesson's recipe into WORK/run (once: later episodes reuse
    it, so each notebook also runs on its own). Returns the Run."""
    from .config import TrainConfig
    from .training import load_run, train

    out = Path(work) / "run"
    if (out / "run.json").exists() and not retrain:
        return load_run(out)
    cfg = TrainConfig.recipe("lesson", source=str(data), positive=positive, negative=[negative], epochs=epochs,
                             image_size=image_size, cache_dir=str(Path(work) / "cache"))
    return train(cfg, out, overwrite=True)
