"""Multi-label: one model scores several findings at once (issue 19): tasks, the stratified patient split,
the masked loss, training, per-finding evaluation and prediction, on a synthetic NIH-style set with two
learnable findings, and on the real NIH subset when it is present."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.config import DataConfig, TrainConfig
from cxrlab.data import load_data
from cxrlab.errors import ConfigError, CxrlabError, DataError
from conftest import SHARED_DATA, requires_shared_data, train_interrupted, xray

runner = CliRunner()
LABEL_CYCLE = ["No Finding", "Effusion", "Mark", "Effusion|Mark", "No Finding", "Mark|Effusion|Infiltration"]


def marked(img: np.ndarray) -> np.ndarray:
    """The second synthetic finding: a bright square high on the left, easy to learn and to tell apart."""
    out = img.copy()
    s = img.shape[0]
    out[s // 8: s // 8 + s // 6, s // 8: s // 8 + s // 6] = 250
    return out


@pytest.fixture(scope="module")
def two_findings(tmp_path_factory):
    return write_two_findings(tmp_path_factory.mktemp("ml") / "nih")


def write_two_findings(root):
    """labels.csv + images/: 90 patients, 1-2 images each, with Effusion and/or Mark or No Finding."""
    rows = []
    for i in range(150):
        patient = i * 3 // 5 + 1
        labels = LABEL_CYCLE[patient % len(LABEL_CYCLE)]
        img = xray(i, 64, positive="Effusion" in labels)
        img = marked(img) if "Mark" in labels else img
        name = f"{patient:08d}_{i:03d}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / name)
        rows.append([name, labels, str(patient), "0"])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Patient ID", "Follow-up #"])
        w.writerows(rows)
    return root / "labels.csv"


def test_findings_resolve_by_name_and_all_means_every_finding(two_findings, tmp_path):
    cfg = DataConfig(image_size=32, cache_dir=str(tmp_path / "c"))
    data = load_data(two_findings, findings="all", config=cfg)
    assert data.multilabel and data.task.findings == ("Effusion", "Infiltration", "Mark")
    assert len(data.frame) == 150  # every image kept, "No Finding" ones as all-zero rows
    labels = data.frame[data.task.columns]
    assert labels.loc[data.frame["labels"] == "No Finding"].to_numpy().sum() == 0
    picked = load_data(two_findings, findings="mark,EFFUSION", config=cfg)
    assert picked.task.findings == ("Mark", "Effusion")  # the order given: the model's outputs
    assert picked.targets().shape == (150, 2)
    with pytest.raises(DataError, match="unknown label 'Nodule'; the data has: .*Effusion"):
        load_data(two_findings, findings="Effusion,Nodule", config=cfg)
    with pytest.raises(DataError, match="means no finding"):
        load_data(two_findings, findings="Effusion,No Finding", config=cfg)
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(source="x", positive="Effusion", findings="all")
    (tmp_path / "bad.csv").write_text("Image Index,Labels\na.png,Effusion\n")
    with pytest.raises(DataError, match="Finding Labels"):
        load_data(tmp_path / "bad.csv", findings="all", config=cfg)


def test_the_split_keeps_patients_whole_and_every_finding_in_every_split(two_findings, tmp_path):
    data = load_data(two_findings, findings="all", config=DataConfig(image_size=32, cache_dir=str(tmp_path / "c")))
    per_patient = data.frame.groupby("patient")["split"].nunique()
    assert (per_patient == 1).all()
    for column in data.task.columns:
        positives = data.frame[data.frame[column] == 1]
        assert set(positives["split"]) == {"train", "val", "test"}, column


def test_negative_rest_makes_every_other_image_a_negative(two_findings, tmp_path):
    data = load_data(two_findings, positive="Effusion", negative="rest", config=DataConfig(image_size=32,
                                                                                        cache_dir=str(tmp_path / "c")))
    assert len(data.frame) == 150 and data.excluded == {}
    assert data.frame["y"].sum() == data.frame["labels"].str.contains("Effusion").sum()


def test_missing_labels_add_nothing_to_the_loss_or_its_gradient():
    from cxrlab.training.trainer import masked_bce

    logits = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([[1, 0, float("nan")], [0, float("nan"), 1], [1, 1, 0], [0, 0, 0],
                      [float("nan")] * 3, [1, 0, 1]])
    masked_bce(logits, y, torch.tensor([2.0, 1.0, 3.0])).backward()
    known = ~torch.isnan(y)
    assert torch.all(logits.grad[~known] == 0) and torch.all(logits.grad[known] != 0)
    by_hand = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known], y[known], pos_weight=torch.tensor([2.0, 1.0, 3.0]).expand(6, 3)[known])
    assert torch.isclose(masked_bce(logits, y, torch.tensor([2.0, 1.0, 3.0])), by_hand)


@pytest.mark.slow
def test_train_evaluate_and_predict_every_finding(two_findings, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(two_findings), "--findings", "Mark,Effusion", "--recipe", "lesson",
                                 "--epochs", "12", "--image-size", "64", "--out", str(run),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "findings:\n- Mark\n- Effusion" in (run / "config.yaml").read_text()
    history = pd.read_csv(run / "history.csv")
    per = history[["val_auc:Mark", "val_auc:Effusion"]]
    assert np.allclose(history["val_auc"], per.mean(axis=1))
    point = json.loads((run / "threshold.json").read_text())
    assert set(point["thresholds"]) == {"Mark", "Effusion"}

    result = runner.invoke(app, ["evaluate", str(run), "--resamples", "100"])
    assert result.exit_code == 0, result.output
    assert "macro mean AUC" in result.output and "CheXNet" in result.output
    table = pd.read_csv(run / "eval" / "test" / "per_finding.csv").set_index("finding")
    assert list(table.index) == ["Mark", "Effusion"]
    # each output learnt its own finding (the order holds): the square is unmistakable, the effusion subtler
    assert table.loc["Mark", "auc"] > 0.9 and table.loc["Effusion", "auc"] > 0.65, table
    assert (table["auc_low"] <= table["auc"]).all() and (table["auc"] <= table["auc_high"]).all()
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["macro_auc_ci"][0] <= metrics["macro_auc"] <= metrics["macro_auc_ci"][1]
    assert metrics["macro_auc"] == pytest.approx(table["auc"].mean())
    for name in ("roc_grid.png", "auc_bars.png", "roc.csv", "predictions.csv"):
        assert (run / "eval" / "test" / name).stat().st_size > 100
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    page = (run / "report.html").read_text()
    assert "Per-finding metrics" in page and "Mark" in page and "another, much larger NIH test split" in page
    assert "<td>Mark</td>" in page and "<td>Effusion</td>" in page and "<td>0.864</td>" in page  # CheXNet's effusion

    scored = pd.read_csv(run / "eval" / "test" / "predictions.csv")
    images = scored["path"].head(3).tolist()
    result = runner.invoke(app, ["predict", str(run), *images, "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "p.csv")
    for finding in ("Mark", "Effusion"):  # one answer per image: predict gives evaluate's probability
        assert np.allclose(predicted[f"probability:{finding}"], scored[f"score:{finding}"].head(3), atol=1e-6)
        assert (predicted[f"predicted:{finding}"] == (predicted[f"probability:{finding}"] >=
                                                      point["thresholds"][finding])).all()


def test_a_finding_without_training_positives_is_refused(two_findings, tmp_path):
    """Infiltration only on test images (the same split, from a split file): the model could never learn it."""
    from cxrlab.data import save_split
    from cxrlab.training import train

    cfg = DataConfig(image_size=32, cache_dir=str(tmp_path / "c"))
    data = load_data(two_findings, findings="all", config=cfg)
    save_split(data.frame, tmp_path / "split.csv")
    test_names = {p.rsplit("/", 1)[1] for p in data.frame.loc[data.frame["split"] == "test", "path"]}
    frame = pd.read_csv(two_findings)
    frame["Finding Labels"] = frame["Finding Labels"].str.replace("|Infiltration", "")
    first_test = frame.index[frame["Image Index"].isin(test_names)][0]
    frame.loc[first_test, "Finding Labels"] = "Infiltration"
    frame.to_csv(two_findings.parent / "test-only.csv", index=False)
    run_cfg = TrainConfig.recipe("lesson", source=str(two_findings.parent / "test-only.csv"), findings="all", epochs=1,
                                 image_size=32, cache_dir=str(tmp_path / "c"), split_file=str(tmp_path / "split.csv"))
    with pytest.raises(CxrlabError, match="no positive training images for Infiltration"):
        train(run_cfg, tmp_path / "run")


@requires_shared_data
@pytest.mark.realdata
def test_nih_subset_all_fourteen_findings(tmp_path):
    data = load_data(SHARED_DATA / "nih-cxr14-subset", findings="all",
                     config=DataConfig(image_size=32, cache_dir=str(tmp_path / "c")))
    assert len(data.task.findings) == 14 and "No Finding" not in data.task.findings
    assert len(data.frame) == 1300 and (data.frame.groupby("patient")["split"].nunique() == 1).all()
    assert any("Hernia" in n and "fewer than 5 positive patients" in n for n in data.notes)


@pytest.mark.slow
def test_one_finding_of_a_multilabel_run_compares_with_a_binary_run(two_findings, tmp_path):
    """evaluate --finding scores one output as a binary task; a binary run trained on the same split then
    compares on exactly the same test images, without a warning."""
    from cxrlab.evaluation.compare import compare_runs
    from cxrlab.evaluation.evaluate import evaluate_run
    from cxrlab.training import train

    common = dict(epochs=6, image_size=64, cache_dir=str(tmp_path / "cache"))
    multi = train(TrainConfig.recipe("lesson", source=str(two_findings), findings="all", **common), tmp_path / "multi")
    binary = train(TrainConfig.recipe("lesson", source=str(two_findings), positive="Effusion", negative="No Finding",
                                      split_file=str(multi.dir.split), **common), tmp_path / "binary")
    one = evaluate_run(multi.dir, finding="effusion", n_resamples=50)
    assert one["classes"] == {"positive": "Effusion", "negatives": ["No Finding"]}
    own = pd.read_csv(tmp_path / "multi" / "eval" / "test" / "finding-Effusion" / "predictions.csv")
    assert set(own["label"]) == {"Effusion", "No Finding"}
    table = compare_runs([multi.dir, binary.dir], out=tmp_path / "cmp", finding="Effusion")
    assert len(table) == 2 and table.attrs["warnings"] == [], table.attrs["warnings"]
    assert table["images"].iloc[0] == table["images"].iloc[1] == len(own)
    with pytest.raises(CxrlabError, match="pass --finding"):
        compare_runs([multi.dir, binary.dir], out=tmp_path / "cmp2")
    with pytest.raises(CxrlabError, match="does not score 'Nodule'"):
        evaluate_run(multi.dir, finding="Nodule")


@pytest.mark.slow
def test_explain_a_finding_of_a_multilabel_run(two_findings, tmp_path):
    """The Mark finding's map peaks on the square; by default each image explains its own top finding."""
    from cxrlab.saliency import explain
    from cxrlab.training import train

    run = train(TrainConfig.recipe("lesson", source=str(two_findings), findings="Mark,Effusion", epochs=12,
                                   image_size=64, cache_dir=str(tmp_path / "cache")), tmp_path / "run").dir.path
    frame = pd.read_csv(two_findings)
    marked_images = [str(two_findings.parent / "images" / n) for n, labels in
                     zip(frame["Image Index"], frame["Finding Labels"]) if labels == "Mark"][:6]
    exp = explain(run, marked_images, ["gradcam"], finding="mark")
    assert exp.findings == ["Mark"] * 6
    # The square (rows and columns 8-18 at 64 px, 3% of the image) holds at least twice its share of every
    # map. Not the peak: on a map upsampled from 8 x 8 cells it jumps a whole cell off the square when two
    # cells are nearly equal, which it did in 3 of 6 images of an fp32 run (all 6 hit in a bf16 one).
    from cxrlab.saliency.localize import energy_in_box

    square = (8, 8, 11, 11)
    shares = [energy_in_box(m, square) / (11 * 11 / m.size) for m in exp.maps["gradcam"]]
    assert min(shares) >= 1.5 and np.median(shares) >= 2, shares
    effusion = explain(run, marked_images, ["gradcam"], finding="effusion")  # the other output: elsewhere
    assert all(energy_in_box(m, square) < energy_in_box(k, square) for m, k in zip(effusion.maps["gradcam"],
                                                                                  exp.maps["gradcam"]))
    by_default = explain(run, marked_images, ["gradcam"])  # every finding called, else the most probable
    from cxrlab.inference import RunModel

    model = RunModel(run, device="cpu")
    probs = model.predict_proba(np.stack([model.read(p) for p in marked_images]))
    rows = list(zip(by_default.paths, by_default.findings))
    for path, row in zip(marked_images, probs):
        called = [f for f, q, t in zip(model.findings, row, model.threshold) if q >= t]
        assert [f for p, f in rows if p == path] == (called or [model.findings[int(np.argmax(row))]])
    with pytest.raises(CxrlabError, match="does not score 'Nodule'"):
        explain(run, marked_images, ["gradcam"], finding="Nodule")

    # per finding: the boxes of Mark (NIH's layout) against Mark's maps, and the sanity check of Mark's maps
    from cxrlab.saliency import localisation, sanity_check

    boxes = tmp_path / "BBox_List_2017.csv"
    pd.DataFrame({"Image Index": [p.rsplit("/", 1)[1] for p in marked_images], "Finding Label": "Mark",
                  "Bbox [x": 8, "y": 8, "w": 11, "h]": 11}).to_csv(boxes, index=False)
    scores = localisation(run, boxes, two_findings.parent / "images", ["gradcam"], finding="mark")["gradcam"]
    assert scores["images"] == 6 and scores["pointing_ci95"][0] > scores["pointing_chance"]
    assert scores["energy_game"] >= 2 * scores["pointing_chance"]
    with pytest.raises(CxrlabError, match="pass --finding"):
        localisation(run, boxes, two_findings.parent / "images", ["gradcam"])
    table, verdict = sanity_check(run, marked_images, ["gradcam"], finding="Mark")
    assert verdict.loc["gradcam", "verdict"] == "passes", table


@pytest.mark.slow
def test_exported_multilabel_model_has_an_output_per_finding(two_findings, tmp_path):
    """ONNX: K outputs; the standalone predictor (no torch) prints every finding with cxrlab's plain scores."""
    import subprocess
    import sys

    from cxrlab.inference import RunModel
    from cxrlab.serving.export import export_run
    from cxrlab.training import train

    run = train(TrainConfig.recipe("lesson", source=str(two_findings), findings="Mark,Effusion", epochs=2,
                                   image_size=64, cache_dir=str(tmp_path / "cache")), tmp_path / "run").dir.path
    path = export_run(run, out=tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "preprocess.json").read_text())
    assert meta["findings"] == ["Mark", "Effusion"] and set(meta["thresholds"]) == {"Mark", "Effusion"}
    images = sorted(str(p) for p in (two_findings.parent / "images").iterdir())[:3]
    code = ("import sys, runpy; sys.modules['torch'] = None; "
            f"sys.argv = ['p', *{images!r}]; runpy.run_path({str(path.parent / 'onnx_predict.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    model = RunModel(run, device="cpu", tta=0)
    plain = model.predict_proba(np.stack([model.read(p) for p in images]))
    for row, expected in zip(printed, plain):
        by_name = {f["finding"]: f["probability"] for f in row["findings"]}
        assert np.allclose([by_name["Mark"], by_name["Effusion"]], expected, atol=1e-4)


@pytest.mark.slow
def test_resume_and_cached_features_work_for_multilabel_runs(two_findings, tmp_path):
    """An interrupted multi-label run resumes to the uninterrupted one's weights and history (the
    per-finding columns included); a frozen timm backbone trains its K-output head on cached features."""
    from safetensors.torch import load_file

    from cxrlab.training import train

    cfg = TrainConfig.recipe("lesson", source=str(two_findings), findings="all", epochs=3, image_size=64,
                             cache_dir=str(tmp_path / "cache"))
    train(cfg, tmp_path / "full")
    train_interrupted(cfg, tmp_path / "cut")
    run = train(cfg, tmp_path / "cut", resume=True)
    a, b = pd.read_csv(tmp_path / "full" / "history.csv"), pd.read_csv(tmp_path / "cut" / "history.csv")
    assert list(a.columns) == list(b.columns) and "val_auc:Mark" in a.columns and len(run.history) == 3
    assert np.allclose(a.drop(columns="seconds"), b.drop(columns="seconds"), atol=1e-5, equal_nan=True)
    full, cut = load_file(tmp_path / "full" / "best.safetensors"), load_file(tmp_path / "cut" / "best.safetensors")
    assert all(torch.allclose(full[k], cut[k], atol=1e-5) for k in full)

    frozen = TrainConfig.recipe("lesson", source=str(two_findings), findings="all", epochs=2, image_size=64,
                                model="resnet18", trainable_blocks=0, cache_dir=str(tmp_path / "cache"))
    cached = train(frozen, tmp_path / "frozen")
    assert cached.info["features_cached"] and cached.info["model"]["num_outputs"] == 3


@requires_shared_data
@pytest.mark.realdata
@pytest.mark.slow
def test_nih_subset_trains_and_evaluates_fourteen_findings(tmp_path):
    from cxrlab.evaluation.evaluate import evaluate_run
    from cxrlab.training import train

    cfg = TrainConfig.recipe("lesson", source=str(SHARED_DATA / "nih-cxr14-subset"), findings="all", epochs=1,
                             image_size=64, cache_dir=str(tmp_path / "cache"))
    run = train(cfg, tmp_path / "run")
    m = evaluate_run(run.dir, n_resamples=100)
    assert [r["finding"] for r in m["findings"]] == list(run.config.findings) and len(m["findings"]) == 14
    assert all(r["auc_low"] <= r["auc"] <= r["auc_high"] for r in m["findings"])
    assert next(r for r in m["findings"] if r["finding"] == "Hernia")["positives"] == 2  # too few to say much
    assert (tmp_path / "run" / "eval" / "test" / "roc_grid.png").exists()


@pytest.mark.slow
def test_two_process_ddp_trains_a_multilabel_run(two_findings, tmp_path):
    """Data-parallel training keeps the per-finding history and one checkpoint; the spec names the outputs."""
    from cxrlab.training import train

    cfg = TrainConfig.recipe("lesson", source=str(two_findings), findings="Mark,Effusion", epochs=2, image_size=64,
                             devices=2, cache_dir=str(tmp_path / "cache"))
    run = train(cfg, tmp_path / "run")
    assert run.info["processes"] == 2 and run.info["model"]["findings"] == ["Mark", "Effusion"]
    assert {"val_auc:Mark", "val_auc:Effusion"} <= set(run.history.columns) and len(run.history) == 2
