"""Explanations: CAM-family heatmaps for a run, checked for sanity and against boxes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.images import is_image_file, read_image
from ..data.preprocess import normalize
from ..errors import CxrlabError
from ..inference import RunModel
from .methods import METHODS, compute_maps, explainable_copy, resolve_layer

DEFAULT_METHODS = ("gradcam", "gradcam++", "scorecam")


@dataclass
class Explanation:
    paths: list[str]
    images: np.ndarray  # N x S x S uint8, as the model saw them
    probabilities: np.ndarray
    labels: list[str | None]  # the true class when the run's data knows the image
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> N x S x S in [0, 1]
    original_sizes: list[tuple[int, int]] = field(default_factory=list)


def expand_paths(items) -> list[str]:
    out: list[str] = []
    for item in map(Path, items):
        if item.is_dir():
            out += [str(p) for p in sorted(item.rglob("*")) if p.is_file() and is_image_file(p)]
        elif item.exists():
            out.append(str(item))
        else:
            raise CxrlabError(f"{item}: no such file or folder")
    if not out:
        raise CxrlabError("no images to explain")
    return out


def _known_labels(model: RunModel) -> dict[str, str]:
    split = model.run.read_split()
    return {str(Path(p).resolve()): (model.positive if y == 1 else model.negative)
            for p, y in zip(split["path"], split["y"])}


def load_images(paths: list[str], size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    arrays, sizes = [], []
    for p in paths:
        arr, info = read_image(p, size)
        arrays.append(arr)
        sizes.append((info.width, info.height))
    return np.stack(arrays), sizes


def explain(run_dir, images, methods=DEFAULT_METHODS, target_layer: str | None = None,
            batch_size: int = 16) -> Explanation:
    """Heatmaps of `methods` for image files (or folders) under a run's model, positive class."""
    run_model = RunModel(run_dir, device="cpu")  # its model, and the probability `cxrlab predict` gives
    model, spec = explainable_copy(run_model.model).float(), run_model.spec
    paths = expand_paths(images)
    pixels, sizes = load_images(paths, spec.image_size)
    layer = resolve_layer(model, target_layer)
    known = _known_labels(run_model)
    maps: dict[str, list] = {m: [] for m in methods}
    for start in range(0, len(paths), batch_size):
        batch = normalize(torch.from_numpy(pixels[start:start + batch_size]).unsqueeze(1), spec.normalization,
                          spec.in_chans).contiguous()
        for method in methods:
            maps[method].append(compute_maps(model, batch, method, layer))
    # the probability `cxrlab predict` gives (test-time views, calibration), not a second opinion
    probs = run_model.predict_proba(pixels)
    return Explanation(paths, pixels, probs, [known.get(str(Path(p).resolve())) for p in paths],
                       {m: np.concatenate(v) for m, v in maps.items()}, sizes)


def save_explanation(exp: Explanation, out: str | Path, positive: str) -> list[Path]:
    """Per image: a side-by-side PNG of the methods and the raw maps as .npy; plus one grid."""
    from .figures import overlay_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    titles = [f"{Path(p).name}\ntrue: {lab or 'unknown'} | P({positive}) = {pr:.2f}"
              for p, lab, pr in zip(exp.paths, exp.labels, exp.probabilities)]
    written = []
    for i, path in enumerate(exp.paths):
        stem = Path(path).stem
        written.append(overlay_grid(exp.images[i:i + 1], {m: v[i:i + 1] for m, v in exp.maps.items()},
                                    titles[i:i + 1], out / f"{stem}.png"))
        for method, maps in exp.maps.items():
            np.save(out / f"{stem}.{method}.npy", maps[i])
    if len(exp.paths) > 1:
        written.append(overlay_grid(exp.images[:24], {m: v[:24] for m, v in exp.maps.items()}, titles[:24],
                                    out / "grid.png"))
    pd.DataFrame({"path": exp.paths, "label": exp.labels, "probability": exp.probabilities}).to_csv(
        out / "explained.csv", index=False)
    return written


def sanity_check(run_dir, images, methods=DEFAULT_METHODS, target_layer: str | None = None,
                 out: str | Path | None = None, max_images: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cascading model-parameter randomisation for each method; table and verdicts (and figure)."""
    from .figures import sanity_figure
    from .sanity import cascading_randomization, verdicts

    run_model = RunModel(run_dir, device="cpu")
    model, spec = run_model.model, run_model.spec
    pixels, _ = load_images(expand_paths(images)[:max_images], spec.image_size)
    batch = normalize(torch.from_numpy(pixels).unsqueeze(1), spec.normalization, spec.in_chans).contiguous()
    table = cascading_randomization(model.float(), batch, {m: m for m in methods}, target_layer)
    verdict = verdicts(table)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "sanity.csv", index=False)
        verdict.to_csv(out / "sanity_verdicts.csv")
        sanity_figure(table, out / "sanity.png")
    return table, verdict


def data_randomization(run_dir, shuffled_run_dir, images, methods=DEFAULT_METHODS,
                       target_layer: str | None = None) -> pd.DataFrame:
    """Adebayo's data-randomisation test: maps of a model trained on shuffled labels should differ
    from the real model's. One row per method: Spearman and SSIM between the two."""
    from .sanity import FAIL_SPEARMAN, similarity

    a = explain(run_dir, images, methods, target_layer)
    b = explain(shuffled_run_dir, images, methods, target_layer)
    rows = [{"method": m, **dict(zip(("spearman", "ssim"), similarity(a.maps[m], b.maps[m])))} for m in methods]
    table = pd.DataFrame(rows)
    table["passes"] = table["spearman"] < FAIL_SPEARMAN
    return table


def localisation(run_dir, boxes_csv, images_dir, methods=DEFAULT_METHODS, target_layer: str | None = None,
                 faithfulness: bool = False) -> dict:
    """Pointing game and T(IoBB) accuracy per method over the images that have a box."""
    from .localize import localisation_scores, read_boxes, road_scores, scale_box

    boxes = read_boxes(boxes_csv)
    images_dir = Path(images_dir)
    if images_dir.is_file():  # a run's source may be its labels CSV: the images lie below its folder
        images_dir = images_dir.parent
    index = {p.name: p for p in images_dir.rglob("*") if p.is_file()}
    boxes = boxes[boxes["Image Index"].isin(index)]
    if boxes.empty:
        raise CxrlabError(f"{boxes_csv}: none of its images were found under {images_dir}")
    paths = [str(index[n]) for n in boxes["Image Index"]]
    exp = explain(run_dir, paths, methods, target_layer)
    size = exp.images.shape[1]
    scaled = [scale_box(tuple(r[["x", "y", "w", "h"]]), exp.original_sizes[i], size)
              for i, (_, r) in enumerate(boxes.iterrows())]
    result = {m: localisation_scores(exp.maps[m], scaled) for m in methods}
    if faithfulness:
        run_model = RunModel(run_dir, device="cpu")
        model, spec = run_model.model, run_model.spec
        batch = normalize(torch.from_numpy(exp.images[:16]).unsqueeze(1), spec.normalization, spec.in_chans)
        for m in methods:
            result[m].update(road_scores(explainable_copy(model), batch, exp.maps[m][:16]))
    return result


__all__ = ["explain", "save_explanation", "sanity_check", "data_randomization", "localisation", "METHODS",
           "Explanation"]
