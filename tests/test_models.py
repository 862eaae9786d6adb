import os
import subprocess
import sys

import pytest
import torch

from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.models import ModelSpec, count_parameters, create_model
from cxrlab.models.transfer import set_trainable_blocks


def test_seed_cnn_is_the_lessons_network():
    model = create_model(ModelSpec("seed-cnn"))
    assert count_parameters(model) == 54_627
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(8, 3), (8, 3), (12, 3), (12, 3), (20, 5), (20, 5), (50, 5)]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 6
    assert model.head[3].p == 0.6
    assert model(torch.zeros(2, 1, 256, 256)).shape == (2, 1)


def test_seed_cnn_bn_adds_batchnorm_before_relu():
    model = create_model(ModelSpec("seed-cnn-bn"))
    kinds = [type(m).__name__ for m in model.features][:4]
    assert kinds == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]  # plain layers: speed-ups are cxrlab.accel's
    assert model(torch.zeros(2, 1, 256, 256)).shape == (2, 1)


def _lesson_order(features: torch.nn.Sequential) -> torch.nn.Sequential:
    """The same modules in the lesson's order: ReLU, then max-pool."""
    layers = list(features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], torch.nn.MaxPool2d) and isinstance(layers[i + 1], torch.nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("name", ["seed-cnn", "seed-cnn-bn"])
def test_pool_then_relu_is_the_lessons_relu_then_pool(name):
    """cxrlab pools before the ReLU (faster); outputs and every gradient equal the lesson's order."""
    torch.manual_seed(0)
    model = create_model(ModelSpec(name, image_size=64))
    x = torch.randn(4, 1, 64, 64)
    grads = []
    for features in (model.features, _lesson_order(model.features)):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout mask for both
        out = model.head(model.pool(features(x)))
        out.sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ga), (b, gb) = grads
    assert torch.equal(a, b)
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(ga, gb))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 8, 64, 64), (2, 5, 15, 9)])
def test_fast_inference_max_pool_equals_atens(dtype, shape):
    from cxrlab.accel import FastMaxPool2x2 as MaxPool2x2

    x = torch.randn(*shape).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        fast = MaxPool2x2()(x)
    ref = torch.nn.functional.max_pool2d(x, 2)
    assert fast.shape == ref.shape and torch.equal(fast.nan_to_num(-9.0), ref.nan_to_num(-9.0))
    assert torch.isnan(fast[0, 0, 0, 0])
    assert fast.is_contiguous(memory_format=torch.channels_last)  # the next convolution stays fast


def test_max_pool_with_gradients_is_atens():
    from cxrlab.accel import FastMaxPool2x2 as MaxPool2x2

    base = torch.randint(-2, 3, (2, 4, 8, 8)).float()  # ties too
    x, y = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    g = torch.randn(2, 4, 4, 4)
    (MaxPool2x2()(x) * g).sum().backward()
    (torch.nn.functional.max_pool2d(y, 2) * g).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_kaggle_cnn_shape():
    model = create_model(ModelSpec("kaggle-cnn", image_size=224))
    assert model(torch.zeros(2, 1, 224, 224)).shape == (2, 1)


@pytest.mark.parametrize("chans", [1, 3])
def test_timm_backbone_with_seed_head(chans):
    model = create_model(ModelSpec("resnet18", in_chans=chans, image_size=64))
    assert model(torch.zeros(2, chans, 64, 64)).shape == (2, 1)
    assert isinstance(model.head[0], torch.nn.Linear) and model.head[0].out_features == 256


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        create_model(ModelSpec("resnet9000"))


def test_pretrained_offline_is_a_clear_error(tmp_path):
    # In a subprocess: the hub reads HF_HUB_OFFLINE at import time.
    code = ("from cxrlab.models import create_model, ModelSpec\n"
            "try:\n    create_model(ModelSpec('resnet18'), pretrained='imagenet')\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    assert out.startswith("CxrlabError") and "--weights" in out and "internet" in out


def test_local_weights_are_loaded(tmp_path):
    from safetensors.torch import save_file

    donor = create_model(ModelSpec("resnet18", image_size=64))
    save_file(donor.backbone.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_model(ModelSpec("resnet18", image_size=64), weights=tmp_path / "w.safetensors")
    assert torch.equal(model.backbone.conv1.weight, donor.backbone.conv1.weight)
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(CxrlabError, match="none of its tensors fit"):
        create_model(ModelSpec("resnet18", image_size=64), weights=tmp_path / "foreign.pth")


def test_weight_loading_is_strict_and_reports_what_fitted(tmp_path):
    """Every backbone tensor must come from the file, or the run starts partly at random without anyone
    knowing: a missing or reshaped tensor fails, naming it, unless partial weights are allowed."""
    from safetensors.torch import save_file

    from cxrlab.models.registry import build_model

    spec = ModelSpec("resnet18", image_size=64)
    donor = create_model(spec).backbone.state_dict()
    # a whole cxrlab run's weights: the backbone under "backbone.", and a head the backbone does not have
    whole = {**{f"backbone.{k}": v for k, v in donor.items()}, "head.0.weight": torch.zeros(3, 3)}
    save_file(whole, str(tmp_path / "run.safetensors"))
    model, report = build_model(spec, weights=tmp_path / "run.safetensors")
    counted = [k for k in donor if not k.endswith("num_batches_tracked")]
    assert report.complete and report.prefix == "backbone." and report.matched == len(counted)
    assert report.unexpected == ["head.0.weight"] and torch.equal(model.backbone.conv1.weight, donor["conv1.weight"])
    partial = {k: v for k, v in donor.items() if k != "layer4.1.bn2.weight"}
    partial["conv1.weight"] = torch.zeros(64, 1, 3, 3)  # another shape: another stem
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CxrlabError, match=r"1 missing \(layer4.1.bn2.weight\), 1 of another shape \(conv1.weight\)"
                                          r".*--allow-partial-weights"):
        build_model(spec, weights=tmp_path / "partial.safetensors")
    fresh = create_model(spec).backbone.conv1.weight.detach().clone()
    model, report = build_model(spec, weights=tmp_path / "partial.safetensors", allow_partial=True)
    assert not report.complete and report.matched == len(counted) - 2
    assert torch.equal(model.backbone.layer1[0].conv1.weight, donor["layer1.0.conv1.weight"])
    assert model.backbone.conv1.weight.shape == fresh.shape  # the reshaped tensor stayed at random


@pytest.mark.parametrize("name", ["resnet18", "seed-cnn"])
def test_trainable_blocks(name):
    model = create_model(ModelSpec(name, image_size=64))
    backbone = model.backbone if name == "resnet18" else model.features
    set_trainable_blocks(model, 0)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    set_trainable_blocks(model, 1)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    if name == "resnet18":
        assert all(n.startswith("layer4") for n in trainable)
    set_trainable_blocks(model, None)
    assert all(p.requires_grad for p in model.parameters())
