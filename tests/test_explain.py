import resource

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import lesson_config
from cxrlab.demo import make_demo_data
from cxrlab.saliency import explain, localisation, save_explanation, sanity_check
from cxrlab.models import ModelSpec, create_model
from cxrlab.saliency.methods import compute_maps, default_target_layer, explainable_copy
from cxrlab.saliency.sanity import cascading_randomization, verdicts
from cxrlab.models import ModelSpec, create_model
from cxrlab.training import train


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "layercam"])
def test_map_shape_and_range(method):
    model = explainable_copy(create_model(ModelSpec("seed-cnn", image_size=64)))
    maps = compute_maps(model, torch.randn(3, 1, 64, 64), method, default_target_layer(model))
    assert maps.shape == (3, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_cam_equals_the_manual_formula_on_a_linear_head():
    """CAM (Zhou et al.) on a model whose head is linear after global pooling: sum_k w_k f_k(x, y)."""
    torch.manual_seed(0)
    model = TwoChannel().eval()
    with torch.no_grad():
        model.features[0].weight.normal_()
        model.head[1].weight.normal_()
    x = torch.randn(2, 1, 32, 32)
    ours = compute_maps(model, x, "cam", model.features[1])
    feats = model.features(x).detach()
    w = model.head[1].weight[0].detach()
    for i in range(2):
        cam = torch.relu((w[:, None, None] * feats[i]).sum(0)).numpy()
        ref = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        assert np.abs(ours[i] - ref).max() < 1e-4


def test_cam_is_refused_where_it_is_not_defined():
    """seed-cnn's head is an MLP after global pooling (Dense 128, Dense 32): Zhou et al.'s CAM is not
    defined there, and showing it beside Grad-CAM would show one method twice."""
    from cxrlab.errors import ConfigError
    from cxrlab.saliency.methods import linear_head

    model = explainable_copy(create_model(ModelSpec("seed-cnn", image_size=64)))
    assert not linear_head(model) and linear_head(TwoChannel())
    with pytest.raises(ConfigError, match="cam .* needs a linear head .* Use gradcam"):
        compute_maps(model, torch.randn(1, 1, 64, 64), "cam", default_target_layer(model))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_gradient_maps_equal_the_library_with_full_backward(method):
    """compute_maps stops backward at the target layer; the library alone back-propagates to every
    weight. The maps must be the same, and the model's requires_grad flags come back unchanged."""
    from cxrlab.saliency.methods import METHODS, PositiveLogit

    torch.manual_seed(0)
    model = explainable_copy(create_model(ModelSpec("seed-cnn", image_size=128)))
    layer, x = model.features[9], torch.randn(3, 1, 128, 128)  # a 16 x 16 layer, before the last pools
    model.head[1].weight.requires_grad_(False)  # a flag that must survive
    with METHODS[method](model=model, target_layers=[layer]) as cam:
        full = cam(input_tensor=x, targets=[PositiveLogit() for _ in range(3)])
    ours = compute_maps(model, x, method, layer)
    assert np.abs(ours - full).max() < 1e-5 and full.max() > 0
    assert not model.head[1].weight.requires_grad and model.features[0].weight.requires_grad


class TwoChannel(nn.Module):
    """Channel 0 fires on bright pixels (evidence FOR the positive class), channel 1 on dark ones
    (evidence against); the bias keeps the logit negative."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight[:] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
            self.features[0].bias.zero_()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2, 1))
        with torch.no_grad():
            self.head[1].weight[:] = torch.tensor([[1.0, -1.0]])
            self.head[1].bias.fill_(-10.0)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_positive_class_is_explained_when_the_logit_is_negative(method):
    model = TwoChannel().eval()
    x = -torch.ones(1, 1, 32, 32)
    x[..., 2:10, 2:10] = 1.0  # the positive evidence sits top-left
    assert model(x).item() < 0
    maps = compute_maps(model, x, method, model.features[1])
    y, xx = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 2 <= y < 10 and 2 <= xx < 10  # a sign-flipping target would point at the dark area


def test_densenet_inplace_activations_are_handled():
    model = explainable_copy(create_model(ModelSpec("densenet121", image_size=64)))
    maps = compute_maps(model, torch.randn(1, 1, 64, 64), "gradcam", default_target_layer(model))
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()


def test_no_hook_leak_over_many_calls():
    model = explainable_copy(create_model(ModelSpec("seed-cnn", image_size=64)))
    layer = default_target_layer(model)
    x = torch.randn(1, 1, 64, 64)
    for _ in range(20):
        compute_maps(model, x, "gradcam", layer)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(200):
        compute_maps(model, x, "gradcam", layer)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert grown_mb < 50


def test_the_default_map_layer_has_8_by_8_maps_at_any_input_size():
    from cxrlab.saliency.methods import seed_cnn_map_block

    assert [seed_cnn_map_block(s) for s in (256, 128, 64, None)] == [5, 4, 3, 5]
    model = create_model(ModelSpec("seed-cnn"))
    for size in (256, 128):
        seen = []
        layer = default_target_layer(model, size)
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size))
        handle.remove()
        assert seen == [(8, 8)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    data = make_demo_data(tmp / "demo")  # exactly the demo: 160 patients, 128 px training
    cfg = lesson_config(data, 128, 20, tmp / "cache")
    return train(cfg, tmp / "run").dir.path, tmp / "demo"


def test_sanity_check_fails_an_edge_detector_and_passes_gradcam(demo_run):
    run, demo = demo_run
    from cxrlab.data.preprocess import normalize
    from cxrlab.inference import RunModel
    from cxrlab.saliency import load_images

    model = RunModel(run, device="cpu").model
    paths = sorted((demo / "data" / "effusion").glob("*.png"))[:4] + sorted((demo / "data" / "normal").glob("*.png"))[:4]
    x = normalize(torch.from_numpy(load_images([str(p) for p in paths], 128)[0]).unsqueeze(1), "standardize")

    def edges(_model, batch):  # ignores the model entirely
        img = batch[:, 0].numpy()
        g = np.hypot(np.gradient(img, axis=1), np.gradient(img, axis=2))
        return g / g.max(axis=(1, 2), keepdims=True)

    table = cascading_randomization(model, x, {"edges": edges, "gradcam": "gradcam"})
    verdict = verdicts(table)
    assert verdict.loc["edges", "verdict"] == "fails" and verdict.loc["edges", "spearman"] > 0.99
    assert verdict.loc["gradcam", "verdict"] == "passes"
    # steps whose maps no longer differ between images are marked degenerate, never counted as passes,
    # and the verdict comes from the last step that still compares something
    grad = table[table["method"] == "gradcam"]
    assert ((grad["verdict"] == "degenerate") == ~(grad["model_responds"] & grad["maps_vary"])).all()
    step = verdict.loc["gradcam", "step"]
    assert grad.loc[grad["step"] == step, "verdict"].iloc[0] == "passes"


def test_localisation_on_synthetic_findings_beats_chance(demo_run):
    run, demo = demo_run
    # seed-cnn's last block is 2 x 2 at 128 px, too coarse to point; its 4th conv is 16 x 16
    result = localisation(run, demo / "boxes.csv", demo / "data", ["layercam"], target_layer="features.9")
    r = result["layercam"]
    assert r["images"] > 50 and r["pointing_game"] > 5 * r["pointing_chance"]
    # the default map (LayerCAM, the block with 8 x 8 maps: the 4th at 128 px) beats chance with a CI that
    # excludes it; the 5th block (4 x 4 at 128 px, the 8 x 8 one at 256 px) does not localise here
    r = localisation(run, demo / "boxes.csv", demo / "data", ["layercam"])["layercam"]
    assert r["pointing_ci95"][0] > 3 * r["pointing_chance"]


def test_boxes_of_another_finding_or_size_are_refused(demo_run, tmp_path):
    from cxrlab.errors import CxrlabError

    run, demo = demo_run
    other = tmp_path / "boxes.csv"
    other.write_text((demo / "boxes.csv").read_text().replace("Effusion", "Infiltrate"))
    with pytest.raises(CxrlabError, match="no boxes of 'effusion'; its findings: Infiltrate"):
        localisation(run, other, demo / "data", ["gradcam"])
    assert localisation(run, other, demo / "data", ["gradcam"], finding="Infiltration")["gradcam"]["images"] > 50
    with pytest.raises(CxrlabError, match="outside the 128 x 128 px .* pass --boxes-space"):
        localisation(run, demo / "boxes.csv", demo / "data", ["gradcam"], boxes_space=128)


def test_explain_writes_pngs_and_npy(demo_run, tmp_path):
    run, demo = demo_run
    images = sorted((demo / "data" / "effusion").glob("*.png"))[:2]
    exp = explain(run, images, ["gradcam", "scorecam"])
    assert exp.labels == ["effusion", "effusion"] and (exp.probabilities > 0).all()
    save_explanation(exp, tmp_path / "out", "effusion")
    stem = images[0].stem
    assert (tmp_path / "out" / f"{stem}.png").stat().st_size > 10_000
    assert np.load(tmp_path / "out" / f"{stem}.gradcam.npy").shape == (128, 128)
    assert (tmp_path / "out" / "grid.png").exists()
    table, verdict = sanity_check(run, images, ["gradcam"], out=tmp_path / "sanity")
    assert (tmp_path / "sanity" / "sanity.png").exists() and list(verdict.index) == ["gradcam", "gradcam (signed)"]
    assert set(verdict["verdict"]) <= {"passes", "fails", "undetermined"}


@pytest.mark.slow
def test_faithfulness_scores_and_data_randomisation(demo_run, tmp_path):
    from conftest import lesson_config
    from cxrlab.saliency import data_randomization

    run, demo = demo_run
    result = localisation(run, demo / "boxes.csv", demo / "data", ["gradcam"], faithfulness=True)
    assert {"road_morf", "road_lerf", "road_combined"} <= set(result["gradcam"])
    shuffled = train(lesson_config(demo / "data", 128, 3, tmp_path / "cache", shuffle_labels=True), tmp_path / "shuf")
    images = sorted((demo / "data" / "effusion").glob("*.png"))[:3]
    table = data_randomization(run, shuffled.dir.path, images, ["gradcam"])
    assert list(table.columns) == ["method", "spearman", "ssim", "passes"] and len(table) == 1


def test_batch_norm_is_reinitialised_with_its_buffers():
    """A randomised layer is a fresh one: batch norm's running statistics are reset too, not kept."""
    from cxrlab.saliency.sanity import reinitialise

    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
        bn.weight.fill_(3.0)
    reinitialise(bn, seed=1)
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
    conv = nn.Conv2d(1, 2, 3)
    reinitialise(conv, seed=1)
    first = conv.weight.clone()
    reinitialise(conv, seed=1)
    assert torch.equal(conv.weight, first)  # seeded


def test_a_model_that_ignores_its_input_makes_steps_degenerate_not_passing():
    from cxrlab.saliency.sanity import cascading_randomization, responds_to_input, verdicts

    model = TwoChannel().eval()
    x = torch.randn(4, 1, 32, 32)
    assert responds_to_input(model, x)
    with torch.no_grad():
        model.head[1].weight.zero_()  # every input now gets the bias as its logit
    assert not responds_to_input(model, x)
    # a method that draws one fixed pattern for every image compares nothing: every step is
    # degenerate, and the verdict is "undetermined", never "passes"
    pattern = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    table = cascading_randomization(TwoChannel().eval(), x, {"fixed": lambda m, b: np.stack([pattern] * len(b))})
    assert (table["verdict"] == "degenerate").all() and not table["maps_vary"].any()
    assert verdicts(table).loc["fixed", "verdict"] == "undetermined" and not verdicts(table).loc["fixed", "passes"]


def test_representative_images_are_test_images_one_per_patient_positives_first(demo_run):
    from cxrlab.saliency import representative_images

    run, _ = demo_run
    paths, how = representative_images(run, 6, seed=0)
    split = pd.read_csv(run / "split.csv").set_index("path")
    rows = split.loc[paths]
    assert (rows["split"] == "test").all() and rows["patient"].is_unique
    assert list(rows["y"]) == sorted(rows["y"], reverse=True) and rows["y"].sum() == 3
    assert representative_images(run, 6, seed=0)[0] == paths != representative_images(run, 6, seed=1)[0]
    assert how.startswith("6 test images of 6 patients (one image each, seed 0): 3 effusion, then 3 normal")


def test_sanity_compares_the_signed_gradcam_map_too():
    """Adebayo et al. compare signed maps beside absolute ones: Grad-CAM's, before its ReLU, is in [-1, 1]
    and is the rectified map where positive."""
    from cxrlab.saliency.sanity import cascading_randomization, signed_gradcam

    torch.manual_seed(0)
    model = explainable_copy(create_model(ModelSpec("seed-cnn", image_size=64)))
    x = torch.randn(3, 1, 64, 64)
    layer = model.features[8]
    signed = signed_gradcam(model, x, layer)
    assert signed.shape == (3, 64, 64) and signed.min() >= -1 and signed.max() <= 1 and (signed < 0).any()
    table = cascading_randomization(model, x, {"gradcam": "gradcam"}, "features.8")
    assert set(table["method"]) == {"gradcam", "gradcam (signed)"}


def test_energy_in_the_box_is_the_maps_share_inside_it():
    from cxrlab.saliency.localize import energy_in_box, localisation_scores

    cam = np.zeros((64, 64))
    cam[10:20, 30:40] = 1.0  # all of the map in a 10 x 10 box at x 30, y 10
    assert energy_in_box(cam, (30, 10, 10, 10)) == 1.0
    assert energy_in_box(cam, (30, 10, 5, 10)) == pytest.approx(0.5)  # half the box: half the energy
    assert energy_in_box(np.ones((64, 64)), (0, 0, 32, 16)) == pytest.approx(1 / 8)  # uniform: the area share
    assert energy_in_box(np.zeros((64, 64)), (0, 0, 8, 8)) == 0.0
    scores = localisation_scores(np.stack([cam, np.ones((64, 64))]), [(30, 10, 10, 10)] * 2)
    assert scores["energy_game"] == pytest.approx((1.0 + 100 / 4096) / 2)
