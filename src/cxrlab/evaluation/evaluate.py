"""`cxrlab evaluate`: predictions, metrics with CIs at the run's validation-chosen operating point,
calibration, CSV exports and figures, written into RUN/eval/<split>/. Read-only on the run itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ..errors import CxrlabError
from ..inference import RunModel
from ..runs import OperatingPoint, RunDir
from . import plots
from .calibration import calibration_summary
from .metrics import binary_metrics, bootstrap_ci, call_rate_cis
from .sites import leave_out_sample, load_other_data, site_for_data


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def evaluation_point(model: RunModel, own, policy: str | None, calibrate: bool) -> tuple[OperatingPoint, bool]:
    # `own`: the run's loaded data, or None to load it only when a point has to be chosen
    """The operating point this evaluation applies, and whether it is the run's stored one. Without a
    policy or calibration asked for, the stored point, when it was chosen on scores made like these
    (the same views); otherwise one chosen on validation for this evaluation only, with the stored
    policy and calibration unless others are given. Never stored: `cxrlab threshold` stores."""
    if model.point is not None and policy is None and (not calibrate or model.point.temperature):
        return model.point, True
    stored = model.run.read_point()
    policy = policy or (stored.policy if stored else None)
    calibrate = calibrate or bool(stored and stored.temperature and policy == stored.policy)
    return model.choose_point(policy, calibrate, data=own), False


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
                 policy: str | None = None, tta: int | None = None, calibrate: bool = False,
                 n_resamples: int = 1000, seed: int = 0, data_positive: str | None = None,
                 data_negative: str | list[str] | None = None, site: str | None = None,
                 finding: str | None = None) -> dict:
    """Evaluate a run on its own `split` (or on every image of another data set `data`, whose labels
    for the run's classes are `data_positive` / `data_negative` when they are named otherwise) and write
    eval/<split>/ into the run directory. Read-only on the run itself: the operating point is the
    stored one, or one chosen for this evaluation only (see `evaluation_point`).

    With `data` from a site that has its own operating point (`site`, or the site whose threshold was
    chosen on a sample of `data`), the sample's images are left out and the metrics at the site's
    threshold are added beside those at the source's (`metrics["site"]`).

    A multi-label run is evaluated per finding; with `finding`, that one finding is scored as a binary task
    against `data_negative` (default: the normal label, e.g. No Finding) on the same test patients, into
    eval/<split>/finding-<name>/, so it compares with a binary run. Returns the metrics dictionary (also
    metrics.json)."""
    run = RunDir(run_dir)
    if split not in ("test", "val", "all"):
        raise CxrlabError(f"--split must be test, val or all, got {split!r}")
    if site and data is None:
        raise CxrlabError("--site names another site's operating point: use it with --data, that site's images")
    model = RunModel(run, tta=tta)
    if finding is not None:
        if not model.findings:
            raise CxrlabError(f"{run.path} scores one task ({model.positive} vs {model.negative}); --finding picks one "
                              "finding of a multi-label run")
        if data is not None or site or calibrate or policy:
            raise CxrlabError("--finding evaluates the run's own split at the finding's stored threshold: "
                              "--data, --site, --calibrate and --threshold do not apply")
        return _evaluate_one_finding(model, finding, data_negative, split, n_resamples, seed)
    if model.findings:
        return _evaluate_findings(model, data, split, policy, calibrate, n_resamples, seed, site)
    own = model.own_data() if data is None else None  # with --data, loaded only if a point must be chosen
    point, stored = evaluation_point(model, own, policy, calibrate)
    model.use_point(point)
    site_eval = None
    if data is not None:
        other = load_other_data(model, data, data_positive, data_negative)
        scored, split = model.score_data(other, "all"), "external" if split == "test" else split
        site = site or site_for_data(run, data)
        if site:
            site_point, scored, left_out = leave_out_sample(run, site, scored)
            if site_point.tta != model.tta or site_point.temperature != model.temperature:
                raise CxrlabError(f"site {site!r}'s operating point was chosen on scores made otherwise (test-time "
                                  f"views, temperature) than this evaluation's; choose it again with `cxrlab threshold --data`")
            site_eval = (site, site_point, left_out)
    else:
        scored = model.score_data(own, split)
    return _binary_evaluation(scored, point, stored, split, model.tta, model.positive, model.negative,
                              run.eval_dir(split), n_resamples, seed, site_eval)


def _binary_evaluation(scored: pd.DataFrame, point: OperatingPoint, stored: bool, split: str, tta: int,
                       positive: str, negative: str, out: Path, n_resamples: int, seed: int, site_eval=None):
    """Metrics with CIs, CSVs and figures of binary scores (path, patient, y, score) at `point`, into `out`."""
    threshold = point.threshold
    scored["label"] = scored["y"].map({1: positive, 0: negative})
    scored["predicted"] = (scored["score"] >= threshold).astype(int)
    y, score, patients = scored["y"].to_numpy(), scored["score"].to_numpy(), scored["patient"].to_numpy()

    metrics = binary_metrics(y, score, threshold)
    metrics["operating_point"] = {**point.to_dict(), "stored": stored}
    metrics["split"] = split
    metrics["classes"] = {"positive": positive, "negatives": negative.split("/")}
    metrics["folder"] = str(out)
    metrics["tta"] = tta
    metrics["patients"] = int(pd.Series(patients).nunique())
    metrics["ci95"] = {"auc": list(bootstrap_ci(y, score, patients, n_resamples=n_resamples, seed=seed)[1:]),
                       **_call_cis(y, score, patients, threshold, n_resamples, seed)}
    if site_eval:
        name, site_point, left_out = site_eval
        at_site = binary_metrics(y, score, site_point.threshold)
        metrics["site"] = {"name": name, "operating_point": site_point.to_dict(), "sample_images_left_out": left_out,
                           **{k: at_site[k] for k in ("threshold", "sensitivity", "specificity", "ppv", "npv",
                                                     "confusion_matrix")},
                           "ci95": _call_cis(y, score, patients, site_point.threshold, n_resamples, seed)}
    metrics["ci_method"] = f"percentile bootstrap, {n_resamples} resamples of patients, seed {seed}"
    if len(np.unique(y)) == 2:
        metrics["calibration"] = calibration_summary(y, score)

    out.mkdir(parents=True, exist_ok=True)
    columns = ["path", "patient", "label", "y", "score", "predicted"]
    if site_eval:  # the call at the site's own threshold beside the source's
        scored["predicted_at_site"] = (scored["score"] >= site_eval[1].threshold).astype(int)
        columns.append("predicted_at_site")
    scored[columns].to_csv(out / "predictions.csv", index=False)
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
    labels = [negative, positive]
    plots.roc_plot(y, score, patients, metrics, out / "roc.png", f"ROC ({split})")
    plots.pr_plot(y, score, out / "pr.png")
    plots.confusion_plot(metrics, labels, out / "confusion.png")
    plots.histogram_plot(y, score, threshold, labels, out / "histogram.png")
    plots.threshold_plot(y, score, threshold, out / "thresholds.png")
    if "calibration" in metrics:
        plots.reliability_plot(metrics["calibration"], out / "reliability.png")
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2))
    return Evaluation(metrics, scored[columns], labels)


def _evaluate_findings(model: RunModel, data, split: str, policy: str | None, calibrate: bool, n_resamples: int,
                       seed: int, site: str | None):
    """A multi-label run: every finding at its own threshold (`evaluation.multilabel`)."""
    from .multilabel import evaluate_findings

    if data is not None or site or calibrate:
        raise CxrlabError("a multi-label run is evaluated on its own split for now: --data, --site and --calibrate "
                          "apply to binary runs")
    own = model.own_data()
    if policy is not None or model.point is None:  # for this evaluation only: `cxrlab threshold` stores one
        model.use_point(model.choose_point(policy, data=own))
    return evaluate_findings(model, own, split, model.run.eval_dir(split), n_resamples, seed)


def _evaluate_one_finding(model: RunModel, finding: str, negative, split: str, n_resamples: int, seed: int):
    """One finding of a multi-label run as a binary task: images carrying it against those whose labels are
    all among `negative` (the binary tasks' rule; default the normal label), at the finding's threshold."""
    from ..data.tasks import Task, label_frame, make_task

    name = model.findings[model.finding_index(finding)]
    own = model.own_data()
    stored = model.point is not None
    if not stored:  # for this evaluation only: `cxrlab threshold` stores one
        model.use_point(model.choose_point(data=own))
    task: Task = make_task(own.manifest, name, negative)
    binary, _ = label_frame(own.manifest, task)
    scored = model.score_data(own, split)
    scored = scored.merge(binary[["path", "y"]], on="path")[["path", "patient", "y", f"score:{name}"]]
    scored = scored.rename(columns={f"score:{name}": "score"})
    threshold = float(model.threshold[model.findings.index(name)])
    point = OperatingPoint(model.point.policy, threshold, None, model.tta, "val (multi-label, this finding's)")
    return _binary_evaluation(scored, point, stored, split, model.tta, task.positive, "/".join(task.negatives),
                              finding_eval_dir(model.run, split, name), n_resamples, seed)


def finding_eval_dir(run: RunDir, split: str, finding: str) -> Path:
    """Where one finding of a multi-label run, evaluated as a binary task, is written."""
    return run.eval_dir(split) / f"finding-{finding}"


def _call_cis(y, score, patients, threshold: float, n_resamples: int, seed: int) -> dict:
    """95% CIs of sensitivity and specificity at `threshold` (`call_rate_cis`)."""
    return {name: list(ci) for name, ci in call_rate_cis(y, score, patients, threshold, n_resamples, seed).items()}


class Evaluation(dict):
    """The metrics dictionary (also metrics.json), with the scored images (`predictions`: path, patient,
    label, y, score, predicted) and, in a notebook, a table with CIs and the ROC."""

    def __init__(self, metrics: dict, predictions: pd.DataFrame, labels: list[str]):
        super().__init__(metrics)
        self.predictions, self.labels = predictions, labels

    def plot(self):
        """The ROC curve with its patient-bootstrap band and the operating point (a matplotlib Figure)."""
        p = self.predictions
        return plots.roc_figure(p["y"].to_numpy(), p["score"].to_numpy(), p["patient"].to_numpy(), self,
                                f"ROC ({self['split']})")

    def _repr_html_(self) -> str:
        from .. import display

        ci, point, cm = self["ci95"], self["operating_point"], self["confusion_matrix"]
        rows = [["AUC", display.ci(self["auc"], *ci["auc"])],
                ["sensitivity", display.ci(self["sensitivity"], *ci["sensitivity"])],
                ["specificity", display.ci(self["specificity"], *ci["specificity"])],
                ["accuracy (majority-class rate)", f"{self['accuracy']:.3f} ({self['majority_rate']:.3f})"],
                ["PPV / NPV", f"{self['ppv']:.3f} / {self['npv']:.3f}"]]
        if "site" in self:  # the new site's own threshold beside the source's, on the images left out
            site = self["site"]
            rows += [[f"sensitivity at site {site['name']}'s threshold {site['threshold']:.4g}",
                      display.ci(site["sensitivity"], *site["ci95"]["sensitivity"])],
                     [f"specificity at site {site['name']}'s threshold",
                      display.ci(site["specificity"], *site["ci95"]["specificity"])]]
        negative, positive = self.labels
        confusion = [[f"true {negative}", cm["tn"], cm["fp"]], [f"true {positive}", cm["fn"], cm["tp"]]]
        return (display.heading(f"{self['split']}: {self['n']} images ({self['positives']} {positive}), "
                                f"{self['patients']} patients",
                                f"threshold {self['threshold']:.4g} ({point['policy']}), {self['tta']} test-time views")
                + "<div style='display:flex;gap:2em;align-items:flex-start'><div>"
                + display.table(["metric", "value [95% CI, patient bootstrap]"], rows)
                + display.table(["", f"predicted {negative}", f"predicted {positive}"], confusion, "confusion matrix")
                + "</div>" + display.figure(self.plot(), width=380) + "</div>")


def plain_operating_point(run_dir: str | Path) -> OperatingPoint:
    """The run's stored policy and calibration chosen again on plain-image validation scores: the
    threshold for an exported model, which scores the plain image. The run's own point stays."""
    stored = RunDir(run_dir).read_point()
    if stored is None:
        raise CxrlabError(f"{run_dir}: no operating point stored; choose one with `cxrlab threshold`")
    return RunModel(run_dir, "cpu", tta=0).choose_point(stored.policy, bool(stored.temperature))


def store_operating_point(run_dir: str | Path, policy: str | None = None, tta: int | None = None,
                          calibrate: bool = False) -> OperatingPoint:
    """`cxrlab threshold`: choose the operating point on validation scores made with `tta` views (the
    run's own setting by default) and store it; predict, serve and export use it from then on."""
    model = RunModel(run_dir, "cpu", tta=tta)
    point = model.choose_point(policy, calibrate)
    model.store_point(point)
    return point
