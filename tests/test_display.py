"""Objects that show themselves in a notebook: data, a run, an evaluation and an explanation each have an
HTML representation (counts, curves, the metrics with CIs, the figure) and a .plot() that returns a Figure."""

from __future__ import annotations

import re

from matplotlib.figure import Figure

import cxrlab
from cxrlab.training import load_run

PNG = re.compile(r"<img [^>]*src='data:image/png;base64,[A-Za-z0-9+/=]{200,}'>")


def test_loaded_data_shows_counts_patients_and_samples(flat_folders):
    data = cxrlab.load_data(flat_folders, positive="effusion")
    html = data._repr_html_()
    counts = data.counts()
    assert list(counts.index) == ["train", "val", "test"] and "patients" in counts.columns
    assert counts["patients"].sum() == data.frame["patient"].nunique()
    assert f"{len(data.frame)} images, 24 patients" in html and "effusion vs normal" in html
    assert "<th>patients</th>" in html and PNG.search(html)
    assert isinstance(data.plot(), Figure)


def test_run_evaluation_and_explanation_show_themselves(lesson_run):
    run = load_run(lesson_run)
    html = run._repr_html_()
    assert f"best epoch {run.best_epoch} of {run.info['epochs_run']}" in html and PNG.search(html)
    assert isinstance(run.plot(), Figure)

    ev = cxrlab.evaluate(lesson_run, n_resamples=50)
    assert isinstance(ev, dict) and ev["auc"] == ev["auc"]  # still the metrics dictionary
    assert list(ev.predictions.columns) == ["path", "patient", "label", "y", "score", "predicted"]
    html = ev._repr_html_()
    low, high = ev["ci95"]["auc"]
    assert f"{ev['auc']:.3f} [{low:.3f}, {high:.3f}]" in html and "confusion matrix" in html
    assert f"{ev['accuracy']:.3f} ({ev['majority_rate']:.3f})" in html and PNG.search(html)
    assert isinstance(ev.plot(), Figure)

    paths = ev.predictions["path"].tolist()[:2]
    exp = cxrlab.explain(lesson_run, paths, ["gradcam"])
    html = exp._repr_html_()
    assert "2 images, gradcam" in html and exp.resolution in html and PNG.search(html)
    assert isinstance(exp.plot(), Figure)
