"""Evaluation of a multi-label run: per finding, AUC with its patient-bootstrap CI, positives and negatives,
average precision, and sensitivity / specificity (with CIs) at the finding's validation-chosen threshold;
the macro mean AUC with its CI; CSVs and figures in RUN/eval/<split>/. Read-only on the run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ..inference import RunModel
from . import plots
from .metrics import auc_weighted, binary_metrics, call_rate_cis, patient_weights, percentile_ci

# Rajpurkar et al. 2017, "CheXNet" (arXiv:1711.05225): the per-finding test AUROCs the paper reports for
# CheXNet, a DenseNet-121 trained on the full NIH ChestX-ray14 (values as reproductions quote them, e.g. the
# "CheXNet (Paper)" column of public re-implementations). Context only: another model, far more training data
# and another, much larger test split, never a comparison on the same images.
CHEXNET_2017 = {"Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345,
                "Mass": 0.8676, "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887,
                "Consolidation": 0.7901, "Edema": 0.8878, "Emphysema": 0.9371, "Fibrosis": 0.8047,
                "Pleural_Thickening": 0.8062, "Hernia": 0.9164}
CHEXNET_NOTE = ("CheXNet (Rajpurkar et al. 2017): another model (a DenseNet-121 trained on the full ChestX-ray14) "
                "on another, much larger NIH test split; context, not a comparison on the same images")


class FindingsEvaluation(dict):
    """metrics.json of a multi-label evaluation, with the per-finding table (`table`) and the scored
    images (`predictions`)."""

    def __init__(self, metrics: dict, table: pd.DataFrame, predictions: pd.DataFrame):
        super().__init__(metrics)
        self.table, self.predictions = table, predictions

    def _repr_html_(self) -> str:
        from .. import display

        rows = [[r.finding, r.positives, r.negatives, display.ci(r.auc, r.auc_low, r.auc_high),
                 f"{r.sensitivity:.3f} / {r.specificity:.3f}", "" if np.isnan(r.chexnet_2017) else f"{r.chexnet_2017:.3f}"]
                for r in self.table.itertuples()]
        mean = self["macro_auc"]
        return (display.heading(f"{self['split']}: {self['n']} images, {self['patients']} patients, "
                                f"{len(self.table)} findings",
                                f"macro mean AUC {display.ci(mean, *self['macro_auc_ci'])}")
                + display.table(["finding", "positives", "negatives", "AUC [95% CI]", "sens / spec at its threshold",
                                 "CheXNet 2017 (other test set)"], rows))


def evaluate_findings(model: RunModel, data, split: str, out, n_resamples: int = 1000, seed: int = 0,
                      note: str | None = None) -> FindingsEvaluation:
    """Score `split` of `data` ('all': every image) with `model`'s stored per-finding thresholds and
    write metrics.json, per_finding.csv, predictions.csv, roc.csv, roc_grid.png and auc_bars.png to `out`."""
    scored = model.score_data(data, split)
    patients = scored["patient"].astype(str).to_numpy()
    weights = patient_weights(patients, n_resamples, seed)  # the same resamples for every finding
    rows, per_resample, panels, roc_rows = [], [], [], []
    for finding, threshold in zip(model.findings, model.threshold):
        y_all, s_all = scored[f"y:{finding}"].to_numpy(float), scored[f"score:{finding}"].to_numpy(float)
        known = ~np.isnan(y_all)
        y, s, p = y_all[known].astype(int), s_all[known], patients[known]
        m = binary_metrics(y, s, float(threshold))
        w = weights[:, known]  # every metric of every finding on the same patient resamples, drawn once
        auc = float(auc_weighted(y, s, np.ones((1, len(y))))[0])
        stats = auc_weighted(y, s, w) if not np.isnan(auc) else np.full(len(w), np.nan)
        low, high = percentile_ci(stats)  # NaN, NaN when the finding has one class here
        calls = call_rate_cis(y, s, p, float(threshold), weights=w)
        per_resample.append(stats)
        rows.append({"finding": finding, "positives": int(y.sum()), "negatives": int((y == 0).sum()),
                     "auc": auc, "auc_low": low, "auc_high": high, "average_precision": m["average_precision"],
                     "threshold": float(threshold), "sensitivity": m["sensitivity"],
                     "sensitivity_low": calls["sensitivity"][0], "sensitivity_high": calls["sensitivity"][1],
                     "specificity": m["specificity"], "specificity_low": calls["specificity"][0],
                     "specificity_high": calls["specificity"][1], "chexnet_2017": CHEXNET_2017.get(finding, np.nan)})
        panels.append((finding, y, s, p, m))
        if len(np.unique(y)) == 2:
            fpr, tpr, thr = roc_curve(y, s)
            roc_rows.append(pd.DataFrame({"finding": finding, "fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)}))
    table = pd.DataFrame(rows)
    defined = ~table["auc"].isna().to_numpy()
    macro = float(table.loc[defined, "auc"].mean()) if defined.any() else float("nan")
    macro_ci = list(percentile_ci(np.nanmean(np.stack(per_resample)[defined], axis=0))) if defined.any() \
        else [float("nan")] * 2
    out.mkdir(parents=True, exist_ok=True)
    predictions = scored.copy()
    for finding, threshold in zip(model.findings, model.threshold):
        predictions[f"predicted:{finding}"] = (predictions[f"score:{finding}"] >= threshold).astype(int)
    predictions.to_csv(out / "predictions.csv", index=False)
    table.to_csv(out / "per_finding.csv", index=False)
    if roc_rows:
        pd.concat(roc_rows).to_csv(out / "roc.csv", index=False)
    plots._save(plots.roc_grid_figure(panels), out / "roc_grid.png")
    plots._save(plots.auc_bars_figure(list(table.loc[defined, "finding"]), table.loc[defined, "auc"],
                                      table.loc[defined, "auc_low"], table.loc[defined, "auc_high"],
                                      (macro, *macro_ci)), out / "auc_bars.png")
    metrics = {"task": "multi-label", "split": split, "n": int(len(scored)), "patients": int(len(set(patients))),
               "tta": model.tta, "macro_auc": macro, "macro_auc_ci": macro_ci,
               "macro_over": [f for f, d in zip(table["finding"], defined) if d],
               "ci_method": f"percentile bootstrap, {n_resamples} resamples of patients, seed {seed}; the macro "
                            "mean's CI averages the findings' AUCs within each resample",
               "operating_point": model.point.to_dict() if model.point else None,
               "findings": json.loads(table.to_json(orient="records")), "chexnet_note": CHEXNET_NOTE,
               "folder": str(out)}
    if note:
        metrics["note"] = note
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return FindingsEvaluation(metrics, table, predictions)

