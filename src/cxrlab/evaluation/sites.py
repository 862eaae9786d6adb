"""A new site: an operating point chosen on a labelled sample of another hospital's images, without
retraining, and those images' evaluation at the source site's threshold and at the re-chosen one.

A model's scores shift between hospitals (devices, populations, views), so a threshold chosen for 95%
sensitivity on the source site's validation data may give another sensitivity elsewhere. The site's
point keeps the source point's test-time views and temperature, so every image keeps its one
probability; only the threshold, the call, changes. The sample is drawn by patient and recorded, and
evaluation leaves its images out, so the re-chosen threshold is never scored on the images it was
chosen on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data import load_data
from ..data.split import patient_sample
from ..errors import CxrlabError, DataError
from ..inference import RunModel
from ..inference.thresholds import choose_threshold
from ..runs import OperatingPoint, RunDir


@dataclass
class SitePoint:
    name: str
    point: OperatingPoint
    source: OperatingPoint
    sample_images: int
    rest_images: int


def load_other_data(model: RunModel, data: str | Path, positive: str | None = None,
                    negative: str | list[str] | None = None):
    """Another data set labelled for the run's task (its own label names given by `positive` /
    `negative` when they differ), loaded with the run's preprocessing."""
    cfg = model.config
    try:
        return load_data(data, positive or cfg.positive, negative or cfg.negative, None, cfg.data)
    except DataError as exc:
        raise DataError(f"{data} does not fit this run's task ({model.positive} vs {model.negative}): {exc}. "
                        "If its labels are named otherwise, pass --positive and --negative with its names.") from None


def default_site_name(data: str | Path) -> str:
    """The data folder's (or CSV / HDF5 file's) name, made a valid site name."""
    path = Path(data).resolve()
    stem = path.name if path.is_dir() else path.stem
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).lstrip("._-")
    return name or "site"


def choose_site_point(run_dir: str | Path, data: str | Path, site: str | None = None, policy: str | None = None,
                      sample: float = 0.5, seed: int = 0, positive: str | None = None,
                      negative: str | list[str] | None = None) -> SitePoint:
    """`cxrlab threshold RUN --data NEW_SITE`: choose `policy` (default: the run's stored policy) on
    `sample` of NEW_SITE's patients (stratified, seeded) and store it as site `site` (default: the
    data's folder name). The run's own operating point stays; `predict --site` and `evaluate --data`
    use the site's."""
    if not 0 < sample <= 1:
        raise CxrlabError(f"--sample must be in (0, 1], the share of the site's patients to choose on; got {sample}")
    model = RunModel(run_dir)
    if model.findings:
        raise CxrlabError(f"{run_dir} scores several findings: a new site's threshold is for binary runs for now")
    source = model.point
    if source is None:
        raise CxrlabError(f"{run_dir}: no operating point stored for its own scores; choose one with `cxrlab threshold` first")
    name = site or default_site_name(data)
    model.run.site_file(name)  # a bad name fails before any image is read
    scored = model.score_data(load_other_data(model, data, positive, negative), "all")
    chosen = scored[patient_sample(scored["y"].to_numpy(), scored["patient"].to_numpy(), sample, seed)]
    policy = policy or source.policy
    try:
        threshold = choose_threshold(policy, chosen["y"].to_numpy(), chosen["score"].to_numpy())
    except CxrlabError as exc:
        raise CxrlabError(f"{data}: the site's sample ({len(chosen)} images): {exc}") from None
    point = OperatingPoint(policy, threshold, source.temperature, source.tta, f"site:{name}",
                           len(chosen), int(chosen["y"].sum()))
    about = {"data": str(Path(data).resolve()), "sample_fraction": sample, "seed": seed,
             "labels": {"positive": positive or model.positive, "negative": negative or model.negative},
             "source_point": source.to_dict()}
    model.run.write_site(name, point, about, chosen["path"].tolist())
    return SitePoint(name, point, source, len(chosen), len(scored) - len(chosen))


def site_for_data(run: RunDir, data: str | Path) -> str | None:
    """The site whose operating point was chosen on a sample of `data`, if any."""
    target = str(Path(data).resolve())
    for name in run.site_names():
        if run.read_site(name)[1].get("data") == target:
            return name
    return None


def leave_out_sample(run: RunDir, site: str, scored: pd.DataFrame) -> tuple[OperatingPoint, pd.DataFrame, int]:
    """(the site's point, the scored images not in the sample it was chosen on, how many were left out)."""
    point, _ = run.read_site(site)
    sample = run.read_site_sample(site)
    used = scored["path"].isin(set(sample)).to_numpy()
    rest = scored[~used].reset_index(drop=True)
    if rest.empty:
        raise CxrlabError(f"every image of this data set was in the sample site {site!r}'s threshold was chosen on; "
                          "evaluate on other images of that site, or choose the threshold with --sample below 1")
    if rest["y"].nunique() < 2:
        raise CxrlabError(f"the images left after site {site!r}'s sample ({len(rest)}) hold one class only; "
                          "choose the site threshold with a smaller --sample")
    return point, rest, int(used.sum())

