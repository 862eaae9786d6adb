import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, f1_score, precision_score,
                             recall_score, roc_auc_score)

from cxrlab.errors import ConfigError, CxrlabError, DataError
from cxrlab.evaluation.calibration import expected_calibration_error
from cxrlab.inference.calibration import apply_temperature, fit_temperature
from cxrlab.evaluation.metrics import (auc_weighted, binary_metrics, bootstrap_ci, call_rate_cis, patient_resamples,
                                      patient_weights, sensitivity_at, specificity_at)
from cxrlab.inference.thresholds import choose_threshold


def _scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    score = np.clip(0.35 * y + rng.normal(0.35, 0.2, n), 0, 1)
    return y, score


def test_metrics_equal_sklearn():
    y, score = _scores()
    m = binary_metrics(y, score, 0.5)
    pred = (score >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, score))
    assert m["average_precision"] == pytest.approx(average_precision_score(y, score))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    cm = m["confusion_matrix"]
    assert cm["fn"] == int(((y == 1) & (pred == 0)).sum()) == m["false_negatives"]


def test_one_class_auc_is_undefined_not_a_crash():
    m = binary_metrics(np.zeros(10), np.linspace(0, 1, 10))
    assert np.isnan(m["auc"]) and "one class" in m["auc_undefined_reason"]


def test_ci_contains_point_and_narrows_with_n():
    widths = []
    for n in (100, 1600):
        y, score = _scores(n)
        point, low, high = bootstrap_ci(y, score, np.arange(n), n_resamples=1000)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_patient_resampling_keeps_patients_together():
    patients = np.repeat(np.arange(20), 3)
    for rows in patient_resamples(patients, 50, seed=1):
        counts = pd.Series(patients[rows]).value_counts()
        assert (counts % 3 == 0).all()


def test_weighted_bootstrap_equals_scoring_each_resample_with_sklearn():
    """The vectorised resample metrics give exactly what scikit-learn gives on each resample's rows,
    with tied scores, patients of several images, and resamples that lose a class."""
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(12), rng.integers(1, 4, 12))
    y = (patients < 3).astype(int)  # three positive patients: some resamples draw none
    score = np.round(np.clip(0.3 * y + rng.normal(0.4, 0.2, len(y)), 0, 1), 1)  # coarse: many ties
    weights = patient_weights(patients, 300, seed=2)
    auc, sens, spec = (f(y, score, weights) for f in (auc_weighted, sensitivity_at(0.5), specificity_at(0.5)))
    skipped = 0
    for i, rows in enumerate(patient_resamples(patients, 300, seed=2)):
        assert np.array_equal(np.bincount(rows, minlength=len(y)), weights[i])
        if len(np.unique(y[rows])) < 2:
            assert np.isnan(auc[i])
            skipped += 1
            continue
        assert auc[i] == pytest.approx(roc_auc_score(y[rows], score[rows]), abs=1e-12)
        assert sens[i] == pytest.approx(recall_score(y[rows], score[rows] >= 0.5), abs=1e-12)
        assert spec[i] == pytest.approx(recall_score(1 - y[rows], score[rows] < 0.5), abs=1e-12)
    assert skipped > 0  # the case of a resample without positives was exercised
    point, low, high = bootstrap_ci(y, score, patients, n_resamples=300, seed=2)
    assert point == pytest.approx(roc_auc_score(y, score))
    kept = auc[~np.isnan(auc)]
    assert (low, high) == pytest.approx(tuple(np.quantile(kept, [0.025, 0.975])))


def test_a_perfect_rate_gets_an_exact_interval_over_its_patients_not_a_zero_width_one():
    """Every positive called: every bootstrap resample agrees, so the percentile interval would be 1.0-1.0.
    The interval is then Clopper-Pearson's for 10 of 10 patients (the 'rule of three' width, about 0.31)."""
    from scipy.stats import binomtest

    patients = np.repeat(np.arange(30), 2)  # 30 patients of 2 images; the first 10 positive
    y = (patients < 10).astype(int)
    score = np.where(y == 1, 0.9, np.linspace(0.0, 0.8, len(y)))
    cis = call_rate_cis(y, score, patients, threshold=0.5, n_resamples=200)
    exact = binomtest(10, 10).proportion_ci(0.95, method="exact")
    assert cis["sensitivity"] == pytest.approx((exact.low, exact.high)) and cis["sensitivity"][0] < 0.75
    # specificity is neither 0 nor 1 here: the patient bootstrap's percentile interval, as before
    spec = bootstrap_ci(y, score, patients, specificity_at(0.5), n_resamples=200)
    assert 0 < spec[0] < 1 and cis["specificity"] == pytest.approx(spec[1:])
    # no positive called at all: the exact interval of 0 of 10
    assert call_rate_cis(y, score, patients, threshold=0.95, n_resamples=200)["sensitivity"] == pytest.approx(
        (0.0, binomtest(0, 10).proportion_ci(0.95, method="exact").high))


def test_bootstrap_ci_of_one_class_is_nan():
    assert all(np.isnan(bootstrap_ci(np.zeros(6), np.linspace(0, 1, 6), np.arange(6))))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_threshold_reaches_target_on_its_data(target):
    y, score = _scores(200, seed=3)
    t = choose_threshold(f"sensitivity:{target}", y, score)
    assert np.mean(score[y == 1] >= t) >= target


def test_threshold_policies():
    y, score = _scores()
    assert choose_threshold("0.5", y, score) == 0.5
    assert choose_threshold("fixed:0.3", y, score) == 0.3
    assert 0 < choose_threshold("youden", y, score) < 1
    with pytest.raises(ConfigError, match="unknown threshold policy"):
        choose_threshold("magic", y, score)


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated probabilities sigmoid(z)
    over = 1 / (1 + np.exp(-z / 0.3))  # the same ranking, overconfident by a factor 1/0.3
    t = fit_temperature(y, over)
    assert t == pytest.approx(1 / 0.3, rel=0.1)
    assert expected_calibration_error(y, apply_temperature(over, t)) < expected_calibration_error(y, over) / 2


def test_temperature_on_perfectly_separated_scores_stays_finite_and_keeps_the_ranking():
    from cxrlab.inference.calibration import TEMPERATURE_BOUNDS

    # every positive above every negative, as a small validation split can be: the likelihood has no minimum
    # (a lesson run's 24 validation scores on an AVX2 CPU, where unbounded L-BFGS returned NaN)
    y = np.array([1] * 12 + [0] * 12)
    score = np.array([0.698656, 0.921215, 0.855205, 0.685984, 0.875403, 0.798373, 0.667438, 0.665935, 0.794660,
                      0.719330, 0.909525, 0.782667, 0.459025, 0.461482, 0.457328, 0.459382, 0.458297, 0.459072,
                      0.456689, 0.465263, 0.464301, 0.519403, 0.453795, 0.478475])
    t = fit_temperature(y, score)
    assert np.isfinite(t) and TEMPERATURE_BOUNDS[0] <= t <= TEMPERATURE_BOUNDS[1]
    scaled = apply_temperature(score, t)
    assert np.isfinite(scaled).all() and (np.argsort(scaled) == np.argsort(score)).all()


@pytest.fixture(scope="session")
def trained_run(lesson_run):
    return lesson_run


def test_evaluate_writes_everything(trained_run):
    from cxrlab.evaluation.evaluate import evaluate_run

    m = evaluate_run(trained_run, n_resamples=200)
    out = trained_run / "eval" / "test"
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == ["path", "patient", "label", "y", "score", "predicted"]
    assert list(pd.read_csv(out / "test_yscores.csv").columns) == ["y_true", "y_score"]
    assert list(pd.read_csv(out / "test_roc.csv").columns) == ["fpr", "tpr", "threshold"]
    assert len(pd.read_csv(out / "false_negatives.csv")) == m["false_negatives"]
    for png in ("roc", "pr", "confusion", "histogram", "thresholds", "reliability"):
        assert (out / f"{png}.png").stat().st_size > 5000
    stored = json.loads((trained_run / "threshold.json").read_text())
    assert stored["policy"] == "sensitivity:0.95" and stored["chosen_on"] == "val"
    assert m["threshold"] == stored["threshold"]
    val = evaluate_run(trained_run, split="val", n_resamples=100)
    assert val["sensitivity"] >= 0.95  # reached on the data it was chosen on
    assert m["ci95"]["auc"][0] <= m["auc"] <= m["ci95"]["auc"][1]


def test_report_is_self_contained_html(trained_run):
    from html.parser import HTMLParser

    from cxrlab.report import write_report

    page = write_report(trained_run).read_text()
    imgs = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                imgs.append(dict(attrs)["src"])

    Parser().feed(page)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    for section in ("data", "training", "metrics", "operating-point", "calibration", "errors", "model-card", "configuration"):
        assert f"id='{section}'" in page
    assert "Not a medical device" in page and not re.search(r"(src|href)=['\"]https?://", page)


def test_compare_two_runs(trained_run, tmp_path):
    import shutil

    from cxrlab.evaluation.compare import compare_runs

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    table = compare_runs([trained_run, other], out=tmp_path / "cmp")
    assert len(table) == 2 and table["auc"].iloc[0] == table["auc"].iloc[1]
    assert (tmp_path / "cmp" / "roc_comparison.png").exists()
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("\n") == 4


def test_evaluate_on_other_task_is_a_clear_error(trained_run, flat_folders, tmp_path):
    from cxrlab.evaluation.evaluate import evaluate_run

    (flat_folders / "effusion").rename(flat_folders / "pneumonia")
    with pytest.raises(DataError, match="does not fit this run's task"):
        evaluate_run(trained_run, data=flat_folders)


def test_missing_run_file_is_named(trained_run, tmp_path):
    import shutil

    from cxrlab.evaluation.evaluate import evaluate_run

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    (broken / "best.safetensors").unlink()
    with pytest.raises(CxrlabError, match="missing best.safetensors"):
        evaluate_run(broken)


def test_tta_averages_augmented_passes(trained_run):
    from cxrlab.inference import RunModel

    plain_model, tta_model = RunModel(trained_run), RunModel(trained_run, tta=4)
    plain = plain_model.score_data(plain_model.own_data(), "test")
    tta = tta_model.score_data(tta_model.own_data(), "test")
    assert list(plain["path"]) == list(tta["path"])
    assert not np.allclose(plain["score"], tta["score"]) and tta["score"].between(0, 1).all()


def test_calibrate_stores_a_temperature_and_keeps_the_ranking(trained_run, tmp_path):
    import shutil

    from cxrlab.evaluation.evaluate import evaluate_run, store_operating_point

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    store_operating_point(run, "youden")
    plain = evaluate_run(run, n_resamples=50)
    store_operating_point(run, "youden", calibrate=True)
    calibrated = evaluate_run(run, n_resamples=50)
    stored = json.loads((run / "threshold.json").read_text())
    assert stored["temperature"] > 0 and calibrated["operating_point"]["temperature"] == stored["temperature"]
    assert calibrated["operating_point"]["stored"] and plain["operating_point"]["policy"] == "youden"
    assert calibrated["auc"] == pytest.approx(plain["auc"])  # temperature scaling is monotonic


def test_compare_names_runs_apart_and_warns_about_other_test_sets(trained_run, tmp_path):
    import shutil

    from cxrlab.evaluation.compare import compare_runs

    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    shutil.copytree(trained_run, a)
    shutil.copytree(trained_run, b)
    table = compare_runs([a, b], out=tmp_path / "same")
    assert list(table["run"]) == ["a/run", "b/run"] and table.attrs["warnings"] == []
    split = pd.read_csv(b / "split.csv")
    split.loc[split.index[split["split"] == "test"][0], "split"] = "train"  # b's test set: one image fewer
    split.to_csv(b / "split.csv", index=False)
    table = compare_runs([a, b], out=tmp_path / "other")
    assert len(table.attrs["warnings"]) == 1 and "test sets differ" in table.attrs["warnings"][0]
    assert "**Warning:**" in (tmp_path / "other" / "comparison.md").read_text()


def test_evaluate_on_other_data_maps_its_label_names(trained_run, flat_folders):
    """Another data set may name the classes otherwise: --positive/--negative give its names."""
    from cxrlab.evaluation.evaluate import evaluate_run

    (flat_folders / "effusion").rename(flat_folders / "Pleural fluid")
    (flat_folders / "normal").rename(flat_folders / "clear")
    with pytest.raises(DataError, match="pass --positive and --negative"):
        evaluate_run(trained_run, data=flat_folders, n_resamples=20)
    m = evaluate_run(trained_run, data=flat_folders, n_resamples=20, data_positive="pleural fluid",
                     data_negative=["clear"])
    assert m["split"] == "external" and m["n"] == 36 and m["positives"] == 18
