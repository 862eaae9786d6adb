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
from ..runs import RunDir
from .methods import METHODS, compute_maps, explainable_copy, layer_name, layer_resolution, resolve_layer

DEFAULT_METHODS = ("layercam", "gradcam", "gradcam++", "scorecam")  # the lesson compares Grad-CAM++ and Score-CAM
# one line on what a map can and cannot show: the report and the web page print it beside every map
MAP_LIMITS = ("A map shows where one layer's evidence for the positive class lies, at that layer's resolution "
              "(upsampled for display); it is not a segmentation, and a plausible map does not prove that the model "
              "uses clinically relevant features (see the sanity check).")


@dataclass
class Explanation:
    paths: list[str]
    images: np.ndarray  # N x S x S uint8, as the model saw them
    probabilities: np.ndarray
    labels: list[str | None]  # the true class when the run's data knows the image
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> N x S x S in [0, 1]
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    layer: str = ""  # the explained layer's name
    native: tuple[int, int] = (0, 0)  # the maps' resolution at that layer, before upsampling
    findings: list[str] | None = None  # multi-label: the finding each image's maps and probability are for

    def plot(self, positive: str = "positive", max_images: int = 8):
        """The images with each method's heatmap beside them (a matplotlib Figure)."""
        from .figures import overlay_figure

        n = min(len(self.paths), max_images)
        titles = _titles(self, positive)[:n]
        return overlay_figure(self.images[:n], {m: v[:n] for m, v in self.maps.items()}, titles)

    def _repr_html_(self) -> str:
        from .. import display

        return (display.heading(f"{len(self.paths)} images, {', '.join(self.maps)}", self.resolution)
                + display.figure(self.plot()) + f"<p style='color:#667'>{display.html.escape(MAP_LIMITS)}</p>")

    @property
    def resolution(self) -> str:
        """What a map can show: e.g. "features.10: 16 x 16, upsampled to 128 px"."""
        return f"{self.layer}: {self.native[0]} x {self.native[1]}, upsampled to {self.images.shape[-1]} px"


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


def representative_images(run_dir, n: int = 8, seed: int = 0) -> tuple[list[str], str]:
    """Test images to explain, drawn so that they represent the test set: one image per patient
    (seeded), positives first (up to half of `n`, more when there are too few negatives), then
    negatives, patients in a seeded random order. Returns the paths and a sentence saying how they
    were drawn. Never a training image: maps of images the model learned are flattering."""
    run = RunDir(run_dir)
    positive, negative = run.task_names()
    split = run.read_split()
    test = split[split["split"] == "test"]
    if test.empty:
        raise CxrlabError(f"{run_dir}: its split has no test images to explain; give images to explain")
    rng = np.random.default_rng(seed)
    one_each = test.groupby("patient", sort=True).sample(1, random_state=int(rng.integers(2**31)))
    pos = one_each[one_each["y"] == 1].sample(frac=1, random_state=int(rng.integers(2**31)))
    neg = one_each[one_each["y"] == 0].sample(frac=1, random_state=int(rng.integers(2**31)))
    k_pos = min(len(pos), max(n - len(neg), (n + 1) // 2))
    picked = pd.concat([pos.head(k_pos), neg.head(n - k_pos)])
    how = (f"{len(picked)} test images of {len(picked)} patients (one image each, seed {seed}): "
           f"{min(k_pos, len(picked))} {positive}, then {len(picked) - min(k_pos, len(picked))} {negative}")
    return picked["path"].tolist(), how


def _titles(exp: Explanation, positive: str) -> list[str]:
    targets = exp.findings or [positive] * len(exp.paths)
    return [f"{Path(p).name}\ntrue: {lab or 'unknown'} | P({t}) = {pr:.2f}"
            for p, lab, pr, t in zip(exp.paths, exp.labels, exp.probabilities, targets)]


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
            batch_size: int = 16, finding: str | None = None) -> Explanation:
    """Heatmaps of `methods` for image files (or folders) under a run's model, positive class. A multi-label
    run explains `finding`, or per image every finding at or above its threshold (else its most probable
    one): an image then has one row per finding explained, and `Explanation.findings` says which."""
    run_model = RunModel(run_dir, device="cpu")  # its model, and the probability `cxrlab predict` gives
    model, spec = explainable_copy(run_model.model).float(), run_model.spec
    paths = expand_paths(images)
    pixels, sizes = load_images(paths, spec.image_size)
    probs = run_model.predict_proba(pixels)
    outputs = None
    if run_model.findings and finding is None:  # one row per (image, finding called)
        rows = [(i, k) for i, (p, called) in enumerate(zip(probs, probs >= run_model.threshold))
                for k in (np.flatnonzero(called) if called.any() else [int(np.argmax(p))])]
        index, outputs = [i for i, _ in rows], [int(k) for _, k in rows]
        paths, pixels, sizes, probs = [paths[i] for i in index], pixels[index], [sizes[i] for i in index], probs[index]
    else:
        outputs = target_findings(run_model, probs, finding)
    layer = resolve_layer(model, target_layer, spec.image_size)
    native = layer_resolution(model, layer, spec)
    known = _known_labels(run_model)
    maps: dict[str, list] = {m: [] for m in methods}
    for start in range(0, len(paths), batch_size):
        batch = normalize(torch.from_numpy(pixels[start:start + batch_size]).unsqueeze(1), spec.normalization,
                          spec.in_chans).contiguous()
        for method in methods:
            maps[method].append(compute_maps(model, batch, method, layer,
                                             outputs=outputs[start:start + batch_size] if outputs else None))
    # the probability `cxrlab predict` gives (test-time views, calibration), not a second opinion
    exp = Explanation(paths, pixels, probs[np.arange(len(paths)), outputs] if outputs else probs,
                      [known.get(str(Path(p).resolve())) for p in paths],
                      {m: np.concatenate(v) for m, v in maps.items()}, sizes, layer_name(model, layer), native)
    if outputs:
        exp.findings = [run_model.findings[k] for k in outputs]
    return exp


def target_findings(model: RunModel, probs: np.ndarray, finding: str | None) -> list[int] | None:
    """One output per image for its map: None for a binary run; `finding`'s for all; else per image the
    most probable finding at or above its threshold, or the most probable one when none is (the sanity
    check follows one map per image)."""
    if not model.findings:
        if finding is not None:
            raise CxrlabError(f"--finding picks a finding of a multi-label run; {model.run.path} scores {model.positive}")
        return None
    if finding is not None:
        return [model.finding_index(finding)] * len(probs)
    above = np.where(probs >= model.threshold, probs, -1.0)
    return [int(np.argmax(a) if a.max() >= 0 else np.argmax(p)) for a, p in zip(above, probs)]


def save_explanation(exp: Explanation, out: str | Path, positive: str) -> list[Path]:
    """Per image: a side-by-side PNG of the methods and the raw maps as .npy; plus one grid."""
    from .figures import overlay_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    titles = _titles(exp, positive)
    written = []
    for i, path in enumerate(exp.paths):
        stem = Path(path).stem + (f".{exp.findings[i]}" if exp.findings else "")  # an image per finding explained
        written.append(overlay_grid(exp.images[i:i + 1], {m: v[i:i + 1] for m, v in exp.maps.items()},
                                    titles[i:i + 1], out / f"{stem}.png"))
        for method, maps in exp.maps.items():
            np.save(out / f"{stem}.{method}.npy", maps[i])
    if len(exp.paths) > 1:
        written.append(overlay_grid(exp.images[:24], {m: v[:24] for m, v in exp.maps.items()}, titles[:24],
                                    out / "grid.png"))
    pd.DataFrame({"path": exp.paths, "label": exp.labels, "probability": exp.probabilities,
                  **({"finding": exp.findings} if exp.findings else {})}).to_csv(out / "explained.csv", index=False)
    return written


def sanity_check(run_dir, images=None, methods=DEFAULT_METHODS, target_layer: str | None = None,
                 out: str | Path | None = None, max_images: int = 8,
                 finding: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cascading model-parameter randomisation for each method; per-step table and per-method verdicts
    (and figure). Without images: `representative_images` of the run's test split. A multi-label run's
    maps are of `finding` (default per image: as `explain` chooses), through every randomisation step."""
    from .figures import sanity_figure
    from .methods import resolve_layer
    from .sanity import cascading_randomization, verdicts

    run_model = RunModel(run_dir, device="cpu")
    model, spec = run_model.model, run_model.spec
    paths = expand_paths(images)[:max_images] if images else representative_images(run_dir, max_images)[0]
    pixels, _ = load_images(paths, spec.image_size)
    batch = normalize(torch.from_numpy(pixels).unsqueeze(1), spec.normalization, spec.in_chans).contiguous()
    # a binary run's maps need no scores (target_findings refuses a --finding for it before any is made)
    outputs = target_findings(run_model, run_model.predict_proba(pixels) if run_model.findings else None, finding)
    fns = {m: m for m in methods} if outputs is None else {  # the same finding's output at every step
        m: (lambda mdl, b, m=m: compute_maps(mdl, b, m, resolve_layer(mdl, target_layer, b.shape[-1]), outputs=outputs))
        for m in methods}
    table = cascading_randomization(model.float(), batch, fns, target_layer)
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
                 faithfulness: bool = False, boxes_space: int | None = None, finding: str | None = None,
                 split: str | None = None) -> dict:
    """Pointing game (with its 95% Wilson interval and chance level) and T(IoBB) accuracy per method,
    over the images with a box of the run's positive finding (or `finding`; NIH's `Infiltrate` is
    `Infiltration`). `boxes_space`: the square size the boxes were drawn on (NIH's BBox_List_2017:
    1024); by default each image's own size, and a box outside its image is an error. `split`: only the
    images of that split of the run (e.g. "test": none it was trained or selected on)."""
    from .localize import finding_key, localisation_scores, read_boxes, road_scores, scale_box

    boxes = read_boxes(boxes_csv)
    findings = RunDir(run_dir).read_config().findings
    if findings and finding is None:
        raise CxrlabError(f"{run_dir} scores several findings: pass --finding to score the boxes of one of them")
    wanted = finding_key(finding or RunDir(run_dir).task_names()[0])
    # a multi-label run's maps are of the boxes' finding (NIH's spelling of it may differ from the run's)
    explained = next((f for f in findings if finding_key(f) == wanted), None) if findings else None
    if findings and explained is None:
        raise CxrlabError(f"{run_dir} does not score {finding!r}; its findings: {', '.join(findings)}")
    kept = boxes[boxes["Finding Label"].map(finding_key) == wanted]
    if kept.empty:
        raise CxrlabError(f"{boxes_csv}: no boxes of {wanted!r}; its findings: "
                          f"{', '.join(sorted(set(boxes['Finding Label'])))}. Pass --finding to choose one.")
    boxes = kept
    images_dir = Path(images_dir)
    if images_dir.is_file():  # a run's source may be its labels CSV: the images lie below its folder
        images_dir = images_dir.parent
    index = {p.name: p for p in images_dir.rglob("*") if p.is_file()}
    boxes = boxes[boxes["Image Index"].isin(index)]
    if split is not None:
        own = RunDir(run_dir).read_split()
        names = {Path(p).name for p in own.loc[own["split"] == split, "path"]}
        boxes = boxes[boxes["Image Index"].isin(names)]
    if boxes.empty:
        raise CxrlabError(f"{boxes_csv}: none of its images were found under {images_dir}")
    paths = [str(index[n]) for n in boxes["Image Index"]]
    exp = explain(run_dir, paths, methods, target_layer, finding=explained)
    size = exp.images.shape[1]
    scaled = []
    for i, (_, r) in enumerate(boxes.iterrows()):
        drawn_on = (boxes_space, boxes_space) if boxes_space else exp.original_sizes[i]
        x, y, w, h = (float(v) for v in r[["x", "y", "w", "h"]])
        if x + w > drawn_on[0] * 1.01 or y + h > drawn_on[1] * 1.01:
            raise CxrlabError(f"{boxes_csv}: the box of {r['Image Index']} reaches ({x + w:.0f}, {y + h:.0f}), "
                              f"outside the {drawn_on[0]} x {drawn_on[1]} px it is read against: its coordinates are "
                              "in another image size (NIH's are 1024 x 1024); pass --boxes-space with that size")
        scaled.append(scale_box((x, y, w, h), drawn_on, size))
    result = {m: localisation_scores(exp.maps[m], scaled) for m in methods}
    if faithfulness and findings:
        raise CxrlabError("ROAD faithfulness scores are for binary runs for now; leave out --faithfulness")
    if faithfulness:
        run_model = RunModel(run_dir, device="cpu")
        model, spec = run_model.model, run_model.spec
        batch = normalize(torch.from_numpy(exp.images[:16]).unsqueeze(1), spec.normalization, spec.in_chans)
        for m in methods:
            result[m].update(road_scores(explainable_copy(model), batch, exp.maps[m][:16]))
    return result


__all__ = ["explain", "save_explanation", "sanity_check", "data_randomization", "localisation", "METHODS",
           "Explanation"]
