"""Test-time augmentation: fixed views, the same score wherever an image is scored, and thresholds
chosen on scores made the same way."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import lesson_config
from cxrlab.config import AugmentConfig, TrainConfig
from cxrlab.data.augment import mean_over_views, tta_views, with_views
from cxrlab.demo import make_demo_data
from cxrlab.errors import ConfigError
from cxrlab.training import train


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tta")
    data = make_demo_data(tmp / "d", n_patients=60, size=96, difficulty="easy")
    cfg = lesson_config(data, 96, 4, tmp / "cache", precision="fp32")
    cfg.data.augment = dataclasses.replace(cfg.data.augment, enabled=True)
    return train(cfg, tmp / "run").dir.path


def test_views_are_fixed_by_the_seed_and_stay_in_the_training_ranges():
    cfg = AugmentConfig()
    views = tta_views(cfg, 8)
    assert views == tta_views(cfg, 8) and views != tta_views(cfg, 8, seed=1) and len(views) == 8
    for v in views:
        assert abs(v.angle) <= cfg.rotation and abs(v.shear) <= cfg.shear and not v.flip
        assert all(abs(t) <= cfg.shift for t in v.translate) and abs(v.scale - 1) <= cfg.zoom
        assert abs(v.brightness - 1) <= cfg.brightness and abs(v.contrast - 1) <= cfg.contrast
    assert any(v.flip for v in tta_views(dataclasses.replace(cfg, hflip=True), 8))
    assert len({v.angle for v in views}) == 8  # eight different views, not one repeated


def test_each_view_is_applied_alike_to_every_image_of_a_batch():
    batch = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    views = tta_views(AugmentConfig(), 4)
    together = with_views(batch, views)
    assert together.shape == (15, 1, 64, 64) and together.dtype == torch.uint8
    assert torch.equal(together[:3], batch)
    for i in range(3):
        alone = with_views(batch[i:i + 1], views)
        assert torch.equal(together[i::3], alone)
    assert not torch.equal(together[3:6], batch)  # the views do change the images
    assert torch.equal(mean_over_views(torch.arange(15.0), 4), torch.tensor([6.0, 7.0, 8.0]))


def _torchvision_views(batch, views):
    """The views as torchvision computes them, one call per transform: what with_views must equal."""
    from torchvision.transforms.v2 import functional as F

    h, w = batch.shape[-2:]
    out = [batch]
    for v in views:
        x = F.affine(batch, angle=v.angle, translate=[round(v.translate[0] * w), round(v.translate[1] * h)],
                     scale=v.scale, shear=[v.shear, 0.0])
        x = F.adjust_contrast(F.adjust_brightness(x, v.brightness), v.contrast)
        out.append(F.horizontal_flip(x) if v.flip else x)
    return torch.cat(out)


@pytest.mark.parametrize("shape", [(5, 1, 64, 64), (1, 1, 256, 256), (3, 1, 37, 53), (2, 1, 48, 20)])
def test_views_are_torchvisions_bit_for_bit(shape):
    torch.manual_seed(sum(shape))
    batch = torch.randint(0, 256, shape, dtype=torch.uint8)
    batch[0, :, : shape[2] // 3] = 255  # saturated and dark areas, where clamping and truncation matter
    batch[-1, :, -(shape[2] // 4):] = 0
    strong = AugmentConfig(rotation=30, shift=0.2, zoom=0.3, shear=15, brightness=0.5, contrast=0.5, hflip=True)
    for views in (tta_views(AugmentConfig(), 8), tta_views(strong, 6, seed=3)):
        assert torch.equal(with_views(batch, views), _torchvision_views(batch, views))
    assert any(v.flip for v in tta_views(strong, 6, seed=3))


def test_views_refuse_a_batch_that_is_not_one_channel():
    """Views take the cache's one-channel uint8 images (contrast is torchvision's one-channel arithmetic)."""
    with pytest.raises(ValueError, match="one-channel"):
        with_views(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), tta_views(AugmentConfig(), 2))


def test_no_ranges_means_views_equal_to_the_image():
    still = AugmentConfig(rotation=0, shift=0, zoom=0, shear=0, brightness=0, contrast=0)
    batch = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    out = with_views(batch, tta_views(still, 3))
    assert all(torch.equal(out[2 * k:2 * k + 2], batch) for k in range(4))


def test_runs_use_views_only_when_they_trained_with_augmentation(augmented_run):
    from cxrlab.inference import run_tta

    assert run_tta(TrainConfig()) == 8
    off = TrainConfig()
    off.data.augment.enabled = False
    assert run_tta(off) == 0
    with pytest.raises(ConfigError, match="tta"):
        TrainConfig(tta=-1)


def test_an_images_score_does_not_depend_on_where_it_is_scored(augmented_run):
    from cxrlab.inference import RunModel
    from cxrlab.serving import Predictor

    model = RunModel(augmented_run, "cpu")
    scored = model.score_data(model.own_data(), "test")
    plain = RunModel(augmented_run, "cpu", tta=0).score_data(model.own_data(), "test")
    assert not np.allclose(scored["score"], plain["score"])
    pred = Predictor(augmented_run, device="cpu")
    assert len(pred.views) == 8  # the operating point train stored: the run's own setting
    one_by_one = [pred.predict_proba(pred.read(p)[None])[0] for p in scored["path"].iloc[:5]]
    assert np.allclose(one_by_one, scored["score"].iloc[:5], atol=1e-5)


def test_a_split_is_read_and_scored_a_slice_at_a_time(augmented_run, monkeypatch):
    """score_data reads a split's cached images a few batches at a time, with pread, instead of the whole split
    at once (a split of 7,500 images held 0.5 GB, and as much again of the cache's pages), and its scores are
    those of one call over the whole split, to the last bit."""
    import cxrlab.inference as inference
    from cxrlab.data.dataset import read_rows

    model = inference.RunModel(augmented_run, "cpu")
    data = model.own_data()
    assert isinstance(data.images, np.memmap)
    rows = data.frame.loc[data.frame["split"] == "test", "row"].to_numpy()
    whole = model.predict_proba(np.asarray(data.images[rows]))
    assert np.array_equal(read_rows(data.images, rows), np.asarray(data.images[rows]))
    reads = []
    monkeypatch.setattr(inference, "SCORE_SLICE_BATCHES", 1)  # one batch of 7 images (+ 8 views each) a slice
    monkeypatch.setattr(inference, "read_rows", lambda images, r: reads.append(len(r)) or read_rows(images, r))
    scored = model.score_data(data, "test")
    assert len(reads) > 1 and max(reads) == 7 and sum(reads) == len(rows)
    assert np.array_equal(scored["score"].to_numpy(), whole)


def test_the_threshold_is_chosen_on_scores_made_like_the_ones_it_cuts(augmented_run, tmp_path):
    import shutil

    from cxrlab.evaluation.evaluate import evaluate_run, store_operating_point
    from cxrlab.serving import Predictor

    run = tmp_path / "run"
    shutil.copytree(augmented_run, run)
    m = evaluate_run(run, n_resamples=50)
    stored = json.loads((run / "threshold.json").read_text())  # train stored it
    assert m["tta"] == 8 and stored["tta"] == 8 and len(Predictor(run, device="cpu").views) == 8
    assert m["operating_point"]["stored"] and m["threshold"] == stored["threshold"]
    m0 = evaluate_run(run, tta=0, n_resamples=50)  # plain scores: a threshold chosen again, for this evaluation only
    assert m0["tta"] == 0 and not m0["operating_point"]["stored"]
    assert m0["operating_point"]["threshold"] != stored["threshold"]
    # evaluation is read-only: predict keeps the threshold it had before `evaluate --tta 0`
    assert json.loads((run / "threshold.json").read_text()) == stored
    assert Predictor(run, device="cpu").threshold == stored["threshold"]
    store_operating_point(run, tta=0)  # `cxrlab threshold RUN --tta 0`: now predict scores plain images
    assert Predictor(run, device="cpu").views == []
    assert Predictor(run, device="cpu").threshold == pytest.approx(m0["operating_point"]["threshold"])


def test_export_gets_a_threshold_chosen_on_plain_scores(augmented_run, tmp_path):
    import shutil

    from cxrlab.evaluation.evaluate import evaluate_run
    from cxrlab.serving.export import export_run

    run = tmp_path / "run"
    shutil.copytree(augmented_run, run)
    with_views = json.loads((run / "threshold.json").read_text())
    export_run(run, out=tmp_path / "export")
    exported = json.loads((tmp_path / "export" / "preprocess.json").read_text())
    assert json.loads((run / "threshold.json").read_text()) == with_views  # the run's own stays
    plain = evaluate_run(run, tta=0, n_resamples=50)["operating_point"]
    assert exported["threshold"] == pytest.approx(plain["threshold"]) != with_views["threshold"]
    assert exported["policy"] == with_views["policy"] and exported["test_time_views"] == 0


def test_explain_shows_the_probability_predict_gives(augmented_run):
    import pandas as pd

    from cxrlab.saliency import explain
    from cxrlab.serving import Predictor

    paths = pd.read_csv(augmented_run / "split.csv")["path"].iloc[:3].tolist()
    exp = explain(augmented_run, paths, methods=("gradcam",))
    pred = Predictor(augmented_run, device="cpu")
    assert np.allclose(exp.probabilities, [r.probability for r in pred.predict_paths(paths)], atol=1e-6)


def test_choosing_again_for_other_views_keeps_the_calibration(augmented_run, tmp_path):
    import shutil

    from cxrlab.evaluation.evaluate import evaluate_run, store_operating_point

    run = tmp_path / "run"
    shutil.copytree(augmented_run, run)
    calibrated = store_operating_point(run, calibrate=True).to_dict()
    plain = evaluate_run(run, tta=0, n_resamples=50)["operating_point"]
    assert calibrated["temperature"] and plain["temperature"] and plain["tta"] == 0
    assert plain["policy"] == calibrated["policy"]
