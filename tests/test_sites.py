"""A new site: its own threshold chosen on a labelled sample of its images, evaluated on the rest at both
thresholds, and used by predict; the run's own operating point never changes."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.errors import CxrlabError

runner = CliRunner()


@pytest.fixture(scope="module")
def site_data(tmp_path_factory):
    """Another 'hospital': the teaching demo's harder effusions, another seed, at the run's size."""
    from cxrlab.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("site") / "hospital-b", n_patients=60, size=96, seed=11)


@pytest.fixture
def run(lesson_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(lesson_run, copy)
    return copy


def test_site_threshold_is_chosen_on_a_patient_sample_and_leaves_the_run_alone(run, site_data):
    from cxrlab.evaluation.sites import choose_site_point

    own = (run / "threshold.json").read_bytes()
    s = choose_site_point(run, site_data, policy="sensitivity:0.9", sample=0.5)
    assert (run / "threshold.json").read_bytes() == own
    assert s.name == "data" and s.point.chosen_on == "site:data" and s.point.policy == "sensitivity:0.9"
    stored = json.loads((run / "sites" / "data.json").read_text())
    assert stored["point"]["threshold"] == s.point.threshold and stored["data"] == str(site_data.resolve())
    sample = pd.read_csv(run / "sites" / "data-sample.csv")["path"]
    assert len(sample) == s.sample_images == s.point.val_images and 0 < s.rest_images
    patients = sample.str.extract(r"(\d{8})_")[0]
    every = pd.Series([str(p) for p in site_data.rglob("*.png")])
    rest_patients = every[~every.isin(set(sample))].str.extract(r"(\d{8})_")[0]
    assert not set(patients) & set(rest_patients), "a patient is in the sample and in the rest"
    # the policy holds on the sample: at least 90% of its positives at or above the threshold
    from cxrlab.inference import RunModel

    model = RunModel(run, site="data")
    scores = model.predict_proba(np.stack([model.read(p) for p in sample]))
    positive = sample.str.contains("/effusion/").to_numpy()
    assert (scores[positive] >= s.point.threshold).mean() >= 0.9
    assert model.threshold == s.point.threshold and model.temperature == RunModel(run).temperature


def test_evaluate_on_the_site_reports_both_thresholds_on_the_images_left_out(run, site_data):
    from cxrlab.evaluation.evaluate import evaluate_run
    from cxrlab.evaluation.sites import choose_site_point

    s = choose_site_point(run, site_data, site="hospital-b", policy="sensitivity:0.95", sample=0.5)
    m = evaluate_run(run, data=site_data, n_resamples=50)
    preds = pd.read_csv(run / "eval" / "external" / "predictions.csv")
    sample = set(pd.read_csv(run / "sites" / "hospital-b-sample.csv")["path"])
    assert m["n"] == len(preds) == s.rest_images and not set(preds["path"]) & sample
    site = m["site"]
    assert site["name"] == "hospital-b" and site["sample_images_left_out"] == s.sample_images
    assert site["threshold"] == s.point.threshold and m["threshold"] == s.source.threshold
    for row, column in ((m, "predicted"), (site, "predicted_at_site")):
        called = preds["score"] >= row["threshold"]
        assert (preds[column] == called.astype(int)).all()
        assert row["sensitivity"] == pytest.approx(called[preds["y"] == 1].mean())
        assert row["specificity"] == pytest.approx((~called)[preds["y"] == 0].mean())
        for name in ("sensitivity", "specificity"):
            low, high = row["ci95"][name] if row is site else m["ci95"][name]
            assert low <= row[name] <= high and low < high
    assert "at site hospital-b" in m._repr_html_()  # the notebook view shows both


def test_site_errors_are_clear(run, site_data):
    from cxrlab.evaluation.evaluate import evaluate_run
    from cxrlab.evaluation.sites import choose_site_point
    from cxrlab.inference import RunModel

    with pytest.raises(CxrlabError, match=r"no operating point for site 'nowhere' \(sites: none yet\)"):
        RunModel(run, site="nowhere")
    with pytest.raises(CxrlabError, match="site name"):
        choose_site_point(run, site_data, site="../up")
    with pytest.raises(CxrlabError, match="--sample must be in"):
        choose_site_point(run, site_data, sample=0)
    choose_site_point(run, site_data, site="all-of-it", sample=1.0)
    with pytest.raises(CxrlabError, match="every image of this data set was in the sample"):
        evaluate_run(run, data=site_data, site="all-of-it", n_resamples=20)
    with pytest.raises(CxrlabError, match="use it with --data"):
        evaluate_run(run, site="all-of-it")


def test_cli_site_threshold_evaluate_and_predict(run, site_data):
    result = runner.invoke(app, ["threshold", str(run), "--data", str(site_data), "--site", "b",
                                 "--policy", "sensitivity:0.9"])
    assert result.exit_code == 0, result.output
    assert "site b: threshold" in result.output and "left for `cxrlab evaluate" in result.output
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(site_data), "--resamples", "20"])
    assert result.exit_code == 0, result.output
    assert "source site's" in result.output and "site b's" in result.output
    images = sorted(str(p) for p in site_data.rglob("*.png"))[:4]
    own, at_site = run.parent / "own.csv", run.parent / "site.csv"
    assert runner.invoke(app, ["predict", str(run), *images, "--out", str(own)]).exit_code == 0
    assert runner.invoke(app, ["predict", str(run), *images, "--out", str(at_site), "--site", "b"]).exit_code == 0
    own, at_site = pd.read_csv(own), pd.read_csv(at_site)
    assert np.allclose(own["probability"], at_site["probability"]), "a site changes the call, never the probability"
    stored = json.loads((run / "sites" / "b.json").read_text())["point"]["threshold"]
    assert (at_site["threshold"] == stored).all() and at_site["policy"].eq("sensitivity:0.9").all()
    result = runner.invoke(app, ["threshold", str(run), "--site", "b"])
    assert result.exit_code != 0 and "use them with --data" in str(result.exception)
