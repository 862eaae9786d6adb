"""Localisation against boxes (NIH BBox_List_2017 format) and faithfulness (ROAD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import DataError

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
# NIH's BBox_List_2017.csv spells some findings otherwise than Data_Entry_2017.csv does
FINDING_ALIASES = {"infiltrate": "infiltration"}


def finding_key(name: str) -> str:
    key = str(name).strip().casefold()
    return FINDING_ALIASES.get(key, key)


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: honest at small n, where the normal one is not."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Image Index, Finding Label, x, y, w, h (original pixels). NIH's header splits the box
    column into 'Bbox [x', 'y', 'w', 'h]'; plain x, y, w, h headers are accepted too. A folder
    (NIH's download, or cxrlab's demo) stands for the one boxes CSV in it."""
    from ..data.sources import find_boxes_csv

    if Path(path).is_dir():
        found = find_boxes_csv(path)
        if found is None:
            raise DataError(f"{path}: no boxes CSV (NIH BBox_List_2017.csv layout) in this folder; give the file.")
        path = found
    table = pd.read_csv(path)
    table.columns = [c.strip().replace("Bbox [", "").replace("]", "") for c in table.columns]
    needed = ["Image Index", "Finding Label", "x", "y", "w", "h"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing box column(s) {missing}; expected the NIH BBox_List_2017.csv layout")
    return table[needed]


def scale_box(box, original: tuple[int, int], size: int) -> tuple[float, float, float, float]:
    """A box in original (width, height) pixels -> the same box on a size x size map. `original` is
    the size of the image the boxes were drawn on (NIH's: 1024 x 1024)."""
    sx, sy = size / original[0], size / original[1]
    x, y, w, h = box
    return x * sx, y * sy, w * sx, h * sy


def pointing_hit(cam: np.ndarray, box) -> bool:
    """Does the map's maximum fall inside the box?"""
    yy, xx = np.unravel_index(np.argmax(cam), cam.shape)
    x, y, w, h = box
    return bool(x <= xx <= x + w and y <= yy <= y + h)


def energy_in_box(cam: np.ndarray, box) -> float:
    """The share of the map's total inside the box: the energy-based pointing game (Wang et al. 2020,
    Score-CAM). Unlike the peak it does not jump a whole feature cell when two cells are nearly equal,
    as on coarse maps upsampled from 4 x 4 or 8 x 8."""
    x, y, w, h = box
    cam = np.clip(cam, 0, None)
    total = float(cam.sum())
    inside = float(cam[max(0, int(y)):int(np.ceil(y + h)), max(0, int(x)):int(np.ceil(x + w))].sum())
    return inside / total if total > 0 else 0.0


def heatmap_box(cam: np.ndarray, level: float = 0.5):
    """Bounding box (x, y, w, h) of the largest region where the map exceeds `level`."""
    labels, n = ndimage.label(cam >= level)
    if n == 0:
        return None
    sizes = ndimage.sum(np.ones_like(cam), labels, index=range(1, n + 1))
    sl = ndimage.find_objects((labels == int(np.argmax(sizes)) + 1).astype(int))[0]
    return sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start


def iobb(pred, truth) -> float:
    """Intersection over the predicted box's area (Wang et al. 2017)."""
    if pred is None:
        return 0.0
    px, py, pw, ph = pred
    tx, ty, tw, th = truth
    iw = max(0.0, min(px + pw, tx + tw) - max(px, tx))
    ih = max(0.0, min(py + ph, ty + th) - max(py, ty))
    return float(iw * ih / (pw * ph)) if pw * ph else 0.0


def localisation_scores(cams: np.ndarray, boxes: list) -> dict:
    """Pointing-game hit rate, the energy-based pointing game and accuracy at each T(IoBB), over images
    with a box; also the chance level of both games (the mean box area fraction)."""
    hits = [pointing_hit(c, b) for c, b in zip(cams, boxes)]
    energy = [energy_in_box(c, b) for c, b in zip(cams, boxes)]
    ious = [iobb(heatmap_box(c), b) for c, b in zip(cams, boxes)]
    area = [min(b[2] * b[3], c.size) / c.size for c, b in zip(cams, boxes)]
    return {"images": len(boxes), "pointing_game": float(np.mean(hits)) if hits else float("nan"),
            "pointing_ci95": list(wilson_interval(int(np.sum(hits)), len(hits))),
            "pointing_chance": float(np.mean(area)) if area else float("nan"),
            "energy_game": float(np.mean(energy)) if energy else float("nan"),
            "iobb_accuracy": {str(t): float(np.mean([v >= t for v in ious])) if ious else float("nan")
                              for t in IOBB_THRESHOLDS}}


def road_scores(model, batch, cams: np.ndarray) -> dict:
    """ROAD (Rong et al. 2022) from pytorch-grad-cam: the positive-logit change when the most (MoRF)
    or least (LeRF) relevant pixels are removed, averaged over percentiles. Faithful maps have a
    low MoRF score and a high LeRF score."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage

    from .methods import PositiveLogit

    targets = [PositiveLogit() for _ in range(len(batch))]
    morf = ROADMostRelevantFirstAverage()(batch, cams, targets, model)
    lerf = ROADLeastRelevantFirstAverage()(batch, cams, targets, model)
    return {"road_morf": float(np.mean(morf)), "road_lerf": float(np.mean(lerf)),
            "road_combined": float(np.mean(lerf) - np.mean(morf))}
