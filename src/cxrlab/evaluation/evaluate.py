"""`cxrlab evaluate`: predictions, metrics with CIs, a validation-chosen threshold, calibration,
CSV exports and figures, all written into the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ..data import load_data
from ..errors import CxrlabError, DataError
from ..runs import RunDir
from . import plots
from .calibration import apply_temperature, calibration_summary, fit_temperature
from .metrics import binary_metrics, bootstrap_ci, sensitivity_at, specificity_at
from .predict import load_run_model, run_data, run_tta, score_split
from .thresholds import choose_threshold

DEFAULT_POLICY = "sensitivity:0.95"  # screening first: miss few sick patients


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def choose_operating_point(run: RunDir, val: pd.DataFrame, policy: str | None, calibrate: bool, tta: int = 0) -> dict:
    """Pick (and store) the threshold on validation scores. Without a policy, a stored one is reused
    if it was chosen on scores made the same way (the same test-time views); otherwise its policy and
    calibration are applied to these scores."""
    stored = json.loads(run.threshold.read_text()) if run.threshold.exists() else {}
    same_scores = bool(stored) and stored.get("tta", 0) == tta
    if policy is None and same_scores and (not calibrate or stored.get("temperature")):
        return stored
    if policy is None:
        calibrate = calibrate or bool(stored.get("temperature"))
    point = operating_point(val, policy or stored.get("policy") or DEFAULT_POLICY, calibrate, tta)
    run.threshold.write_text(json.dumps(point, indent=2))
    return point


def operating_point(val: pd.DataFrame, policy: str, calibrate: bool, tta: int) -> dict:
    """The threshold of `policy` (and a temperature) on validation scores made with `tta` views."""
    y, score = val["y"].to_numpy(), val["score"].to_numpy()
    temperature = fit_temperature(y, score) if calibrate else None
    if temperature:
        score = apply_temperature(score, temperature)
    return {"policy": policy, "threshold": choose_threshold(policy, y, score), "temperature": temperature,
            "tta": tta, "chosen_on": "val", "val_images": int(len(y)), "val_positives": int(y.sum())}


def plain_operating_point(run_dir: str | Path) -> dict:
    """The run's stored policy and calibration applied to plain-image validation scores: the
    threshold for an exported model, which scores the plain image. The run's own threshold stays."""
    run = RunDir(run_dir)
    stored = json.loads(run.threshold.read_text())
    model, cfg = load_run_model(run, "cpu")
    val = score_split(model, cfg, run_data(run, cfg), "val", tta=0)
    return operating_point(val, stored["policy"], bool(stored.get("temperature")), 0)


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
                 policy: str | None = None, tta: int | None = None, calibrate: bool = False,
                 n_resamples: int = 1000, seed: int = 0) -> dict:
    """Evaluate a run on its own `split` (or on every image of another data set `data`) and write
    eval/<split>/ into the run directory. Returns the metrics dictionary (also metrics.json)."""
    run = RunDir(run_dir)
    if split not in ("test", "val", "all"):
        raise CxrlabError(f"--split must be test, val or all, got {split!r}")
    model, cfg = load_run_model(run)
    own = run_data(run, cfg)
    tta = run_tta(cfg) if tta is None else tta
    val = score_split(model, cfg, own, "val", tta)
    point = choose_operating_point(run, val, policy, calibrate, tta)
    if data is not None:
        try:
            other = load_data(data, cfg.positive, cfg.negative, None, cfg.data)
        except DataError as exc:
            raise DataError(f"{data} does not fit this run's task ({cfg.positive} vs "
                            f"{' / '.join(cfg.negative or ['normal'])}): {exc}") from None
        scored, split = score_split(model, cfg, other, "all", tta), "external" if split == "test" else split
    else:
        scored = score_split(model, cfg, own, split, tta)
    if point.get("temperature"):
        scored["score"] = apply_temperature(scored["score"].to_numpy(), point["temperature"])
    threshold = point["threshold"]
    scored["label"] = scored["y"].map({1: cfg.positive, 0: "/".join(cfg.negative or ["negative"])})
    scored["predicted"] = (scored["score"] >= threshold).astype(int)
    y, score, patients = scored["y"].to_numpy(), scored["score"].to_numpy(), scored["patient"].to_numpy()

    metrics = binary_metrics(y, score, threshold)
    metrics["operating_point"] = point
    metrics["split"] = split
    metrics["tta"] = tta
    metrics["patients"] = int(pd.Series(patients).nunique())
    ci = {}
    for name, fn in (("auc", None), ("sensitivity", sensitivity_at(threshold)), ("specificity", specificity_at(threshold))):
        kwargs = {"metric": fn} if fn else {}
        _, low, high = bootstrap_ci(y, score, patients, n_resamples=n_resamples, seed=seed, **kwargs)
        ci[name] = [low, high]
    metrics["ci95"] = ci
    metrics["ci_method"] = f"percentile bootstrap, {n_resamples} resamples of patients, seed {seed}"
    if len(np.unique(y)) == 2:
        metrics["calibration"] = calibration_summary(y, score)

    out = run.eval_dir(split)
    out.mkdir(parents=True, exist_ok=True)
    scored[["path", "patient", "label", "y", "score", "predicted"]].to_csv(out / "predictions.csv", index=False)
    fn_rows = scored[(scored["y"] == 1) & (scored["predicted"] == 0)].sort_values("score")
    fp_rows = scored[(scored["y"] == 0) & (scored["predicted"] == 1)].sort_values("score", ascending=False)
    fn_rows[["path", "patient", "score"]].to_csv(out / "false_negatives.csv", index=False)
    fp_rows[["path", "patient", "score"]].to_csv(out / "false_positives.csv", index=False)
    metrics["false_negative_files"] = fn_rows["path"].tolist()
    metrics["false_positive_files"] = fp_rows["path"].tolist()
    pd.DataFrame({"y_true": y, "y_score": score}).to_csv(out / f"{split}_yscores.csv", index=False)
    if len(np.unique(y)) == 2:
        fpr, tpr, thr = roc_curve(y, score)
        pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)}).to_csv(out / f"{split}_roc.csv", index=False)
    labels = ["/".join(cfg.negative or ["negative"]), cfg.positive]
    plots.roc_plot(y, score, patients, metrics, out / "roc.png", f"ROC ({split})")
    plots.pr_plot(y, score, out / "pr.png")
    plots.confusion_plot(metrics, labels, out / "confusion.png")
    plots.histogram_plot(y, score, threshold, labels, out / "histogram.png")
    plots.threshold_plot(y, score, threshold, out / "thresholds.png")
    if "calibration" in metrics:
        plots.reliability_plot(metrics["calibration"], out / "reliability.png")
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2))
    return metrics
