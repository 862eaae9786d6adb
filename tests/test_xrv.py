"""Chest X-ray weights (`--pretrained xrv:NAME`), offline: torchxrayvision's DenseNet-121 at random
weights saved to local files stands in for the download."""

import json
import pickle

import numpy as np
import pytest
import torch

torchxrayvision = pytest.importorskip("torchxrayvision")

from cxrlab.config import TrainConfig, with_overrides  # noqa: E402
from cxrlab.errors import ConfigError, CxrlabError  # noqa: E402
from cxrlab.models import ModelSpec  # noqa: E402
from cxrlab.models.registry import build_model  # noqa: E402

NAME = "densenet121-res224-all"
SPEC = ModelSpec("xrv-densenet121", 1, 224, "xrv")


@pytest.fixture(scope="module")
def donor():
    torch.manual_seed(0)
    return torchxrayvision.models.DenseNet(weights=None).eval()


@pytest.fixture
def local_weights(donor, tmp_path):
    """The whole torchxrayvision state dict (features.* and its 18-finding classifier.*), as safetensors."""
    from safetensors.torch import save_file

    path = tmp_path / "xrv-all.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    return path


def test_the_config_takes_the_networks_own_preprocessing():
    cfg = with_overrides(TrainConfig(), pretrained=f"xrv:{NAME}", image_size=512)
    assert (cfg.model, cfg.data.image_size, cfg.data.normalization) == ("xrv-densenet121", 224, "xrv")
    with pytest.raises(ConfigError, match="pretrained must be imagenet or xrv:NAME"):
        TrainConfig(pretrained="chexnet")


def test_xrv_normalisation_is_torchxrayvisions_own():
    from cxrlab.data.preprocess import normalize

    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ours = normalize(torch.from_numpy(pixels)[None, None], "xrv")[0, 0].numpy()
    theirs = torchxrayvision.datasets.normalize(pixels.astype(np.float32), 255)
    assert np.abs(ours - theirs).max() < 1e-3 and ours.min() == -1024 and ours.max() == 1024


def test_local_xrv_weights_fill_the_backbone_and_give_its_features(donor, local_weights):
    model, report = build_model(SPEC, f"xrv:{NAME}", local_weights)
    counted = [k for k in donor.features.state_dict() if not k.endswith("num_batches_tracked")]
    assert report.complete and report.prefix == "features." and report.matched == len(counted)
    assert report.unexpected == ["classifier.bias", "classifier.weight"]  # its own 18 findings: replaced by ours
    x = torch.randn(2, 1, 224, 224) * 500
    with torch.no_grad():
        assert torch.allclose(model.eval().forward_features(x), donor.features2(x), atol=1e-4)
        assert model(x).shape == (2, 1)


def test_download_is_read_safely_and_offline_is_a_clear_error(donor, tmp_path, monkeypatch):
    from cxrlab.models import xrv

    monkeypatch.setattr(torchxrayvision.utils, "get_cache_dir", lambda: str(tmp_path / "cache"))

    def offline(url, path):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setattr(torchxrayvision.utils, "download", offline)
    with pytest.raises(CxrlabError, match="needs internet once.*--weights"):
        build_model(SPEC, f"xrv:{NAME}")
    # what torchxrayvision downloads: a pickled network, read with only its layer classes allowed
    cached = tmp_path / "cache" / torchxrayvision.models.model_urls[NAME]["weights_url"].rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(donor, cached)
    model, report = build_model(SPEC, f"xrv:{NAME}")
    assert report.complete and report.source == f"torchxrayvision {NAME}"
    assert torch.equal(model.backbone.conv0.weight, donor.features.conv0.weight)

    class Payload:  # a file that would run a command when unpickled
        def __reduce__(self):
            return (print, ("unpickling ran code",))

    cached.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CxrlabError, match="cannot read torchxrayvision's weights .* safely"):
        xrv.download_xrv_state(NAME)


def test_unknown_xrv_weights_are_listed():
    with pytest.raises(ConfigError, match="unknown torchxrayvision weights; use one of xrv:densenet121-res224-all"):
        build_model(SPEC, "xrv:resnet50-res512-all")


@pytest.mark.slow
def test_train_predict_and_export_with_xrv_weights(local_weights, tmp_path):
    """A run started from chest X-ray weights records their preprocessing: predict and the exported model
    read a new image at 224 px in [-1024, 1024] and agree."""
    from cxrlab.demo import make_demo_data
    from cxrlab.inference import RunModel
    from cxrlab.serving.export import export_run
    from cxrlab.training import train

    data = make_demo_data(tmp_path / "d", n_patients=16, size=64, difficulty="easy")
    cfg = TrainConfig.recipe("lesson", source=str(data), positive="effusion", epochs=1, batch_size=8,
                             pretrained=f"xrv:{NAME}", weights=str(local_weights), cache_dir=str(tmp_path / "cache"))
    run = train(cfg, tmp_path / "run")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "model: xrv-densenet121" in saved and "image_size: 224" in saved and "normalization: xrv" in saved
    loaded = run.info["weights_loaded"]
    assert loaded["matched"] > 300 and loaded["missing"] == [] and loaded["prefix"] == "features."
    model = RunModel(tmp_path / "run", device="cpu")
    image = str(sorted(data.rglob("*.png"))[0])
    assert model.read(image).shape == (224, 224)
    export = export_run(tmp_path / "run", out=tmp_path / "export")
    meta = json.loads((export.parent / "preprocess.json").read_text())
    assert (meta["image_size"], meta["normalization"]) == (224, "xrv")
    import onnxruntime as ort

    from cxrlab.data.images import normalize_array, read_image

    pixels = read_image(image, meta["image_size"])[0][None]
    logit = ort.InferenceSession(str(export)).run(None, {"image": normalize_array(pixels, "xrv")})[0]
    assert abs(float(torch.sigmoid(torch.tensor(logit)).item()) - float(model.predict_proba(pixels)[0])) < 1e-4
