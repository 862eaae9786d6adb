import warnings

import numpy as np
import pytest
import torch

from cxrlab import DataConfig, load_data
from cxrlab.config import AugmentConfig
from cxrlab.data.dataset import make_collate
from cxrlab.data.preprocess import normalize
from cxrlab.errors import ConfigError, DataError, ImageReadError


def test_folders_end_to_end(flat_folders):
    data = load_data(flat_folders, config=DataConfig(image_size=32))
    assert data.task.positive == "effusion" and data.images.shape == (36, 32, 32)
    assert set(data.frame["split"]) == {"train", "val", "test"}
    assert (data.frame.groupby("patient")["split"].nunique() == 1).all()
    ds = data.dataset("train")
    img, y = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (1, 32, 32) and y.item() in (0.0, 1.0)


def test_split_file_is_reused(tmp_path, flat_folders):
    from cxrlab.data import save_split

    a = load_data(flat_folders, config=DataConfig(image_size=32, split_seed=1))
    save_split(a.frame, tmp_path / "split.csv")
    b = load_data(flat_folders, config=DataConfig(image_size=32, split_seed=99), split_file=tmp_path / "split.csv")
    assert a.frame["split"].tolist() == b.frame["split"].tolist()


def test_bad_image_error_names_file_then_skip_lists_it(flat_folders):
    bad = flat_folders / "normal" / "00000100_000.png"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ImageReadError, match="00000100_000.png"):
        load_data(flat_folders, config=DataConfig(image_size=32))
    data = load_data(flat_folders, config=DataConfig(image_size=32, on_bad_image="skip"))
    assert len(data.frame) == 35 and data.skipped[0]["path"] == str(bad)
    assert any("skipped" in n for n in data.notes)


def test_csv_task_counts(nih_csv):
    data = load_data(nih_csv, "Effusion", "No Finding", config=DataConfig(image_size=32))
    assert int(data.frame["y"].sum()) == 12 and len(data.frame) == 24
    assert data.excluded == {"Pneumonia": 6, "Cardiomegaly": 6}


def test_csv_without_task_loads_everything(nih_csv):
    data = load_data(nih_csv, config=DataConfig(image_size=32))
    assert data.task is None and len(data.frame) == 36


def test_presplit_keeps_test(presplit_folders):
    data = load_data(presplit_folders, config=DataConfig(image_size=32))
    given = data.manifest.frame.set_index("path")["split"]
    assert (data.frame.loc[data.frame["split"] == "test", "path"].map(given) == "test").all()
    assert (data.frame["split"] == "val").sum() > 2  # tiny val/ re-split from train
    assert "re-split" in data.notes[0]


def test_unknown_label(nih_csv):
    with pytest.raises(DataError, match="unknown label"):
        load_data(nih_csv, "Pneumothorax", config=DataConfig(image_size=32))


@pytest.mark.parametrize("mode", ["standardize", "unit", "imagenet"])
def test_normalization(mode):
    batch = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    x = normalize(batch, mode)
    assert x.dtype == torch.float32
    if mode == "standardize":
        assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
        assert torch.allclose(x.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-4)
    elif mode == "unit":
        assert x.min() >= 0 and x.max() <= 1
    else:
        assert x.shape == (4, 3, 16, 16)
        assert torch.allclose(x[:, 0], (batch[:, 0].float() / 255 - 0.485) / 0.229)


def test_standardization_matches_the_two_pass_formula_and_keeps_blank_images_finite():
    batch = torch.randint(0, 256, (5, 1, 256, 256), dtype=torch.uint8)
    batch[1] = 200  # blank
    batch[2] = torch.randint(250, 256, (1, 256, 256), dtype=torch.uint8)  # bright, low variance
    x = normalize(batch, "standardize")
    f = batch.double() / 255
    ref = (f - f.mean(dim=(1, 2, 3), keepdim=True)) / f.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    assert torch.allclose(x.double(), ref, atol=1e-5)
    assert torch.equal(x[1], torch.zeros_like(x[1]))
    assert normalize(batch, "standardize", channels=3).shape == (5, 3, 256, 256)


def test_augmentation_changes_training_images_only(flat_folders):
    cfg = DataConfig(image_size=32, augment=AugmentConfig(enabled=True))
    data = load_data(flat_folders, config=cfg)
    train = data.dataset("train", augment=True)
    torch.manual_seed(0)
    assert not torch.equal(train[0][0], torch.from_numpy(np.array(data.images[train.indices[0]])).unsqueeze(0))
    test = data.dataset("test")
    assert torch.equal(test[0][0][0], torch.from_numpy(np.array(data.images[test.indices[0]])))
    images, labels = make_collate("standardize")([train[0], train[1]])
    assert images.shape == (2, 1, 32, 32) and images.dtype == torch.float32


def test_hflip_warns():
    from cxrlab.data.augment import build_augment

    with pytest.warns(UserWarning, match="heart"):
        build_augment(AugmentConfig(enabled=True, hflip=True))


@pytest.mark.parametrize("size", [256, 300])
def test_standardizing_whole_values_sums_them_exactly(size):
    """uint8 images take the float32 sum where it is exact (every partial sum below 2^24): the same bits as the
    float64 sum, including saturated images; larger images take the float64 sum."""
    from cxrlab.data.preprocess import _standardize

    batch = torch.from_numpy(np.random.default_rng(size).integers(0, 256, (4, 1, size, size), dtype=np.uint8))
    batch[0] = 255
    batch[1, :, : size // 2] = 0
    assert torch.equal(normalize(batch, "standardize"), _standardize(batch.float(), whole=False))


def test_config_yaml_round_trip_and_unknown_keys(tmp_path):
    from cxrlab.config import load_yaml, save_yaml

    cfg = DataConfig(image_size=224, normalization="imagenet", augment=AugmentConfig(enabled=True, rotation=5))
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(DataConfig, tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("image_sise: 128\n")
    with pytest.raises(ConfigError, match="image_sise"):
        load_yaml(DataConfig, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="normalization"):
        DataConfig(normalization="zscore")


def _torchvision_geometry(image, p, i):
    """Image i through torchvision's own RandomAffine op with the batch's drawn parameters."""
    from torchvision.transforms.v2 import functional as F

    return F.affine(image, angle=float(p["angle"][i]), translate=[int(p["tx"][i]), int(p["ty"][i])],
                    scale=float(p["scale"][i]), shear=[float(p["shear"][i]), 0.0])


def _torchvision_color_and_flip(image, p, i):
    """Image i through torchvision's own ColorJitter ops, in the drawn order, and flip."""
    from torchvision.transforms.v2 import functional as F

    steps = [(F.adjust_brightness, float(p["brightness"][i])), (F.adjust_contrast, float(p["contrast"][i]))]
    for op, factor in (steps if p["brightness_first"][i] else steps[::-1]):
        image = op(image, factor)
    return F.horizontal_flip(image) if p["flip"][i] else image


def _nearest_ties(p, i, h, w, tol=1e-3):
    """Output pixels of image i whose source position, in exact arithmetic, lies within `tol` pixels of a
    nearest-neighbour tie (half-way between two source pixels)."""
    from cxrlab.data.augment import image_matrix

    m = np.float32(image_matrix(p, i)).astype(np.float64)
    x, y = np.meshgrid(np.arange(w) - (w - 1) / 2, np.arange(h) - (h - 1) / 2)
    col, row = m[0] * x + m[1] * y + m[2] + (w - 1) / 2, m[3] * x + m[4] * y + m[5] + (h - 1) / 2
    tie = (np.abs(col % 1 - 0.5) < tol) | (np.abs(row % 1 - 0.5) < tol)
    return torch.from_numpy(tie)[None]


@pytest.mark.parametrize("ranges", [{}, {"rotation": 25, "shift": 0.2, "zoom": 0.3, "shear": 15, "brightness": 0.4,
                                         "contrast": 0.4, "hflip": True}])
def test_batch_augmentation_is_torchvisions_bit_for_bit(ranges):
    """Each image of a batch gets exactly what torchvision's RandomAffine and ColorJitter compute for the
    parameters drawn for it (non-square images, saturated pixels, both colour orders, flips).

    torchvision makes its sampling grid with bmm, whose last bit depends on the CPU's gemm kernel (on AMD
    EPYCs MKL computes cxrlab's products and sums exactly; a kernel with fused multiply-adds may not): so a
    pixel of the geometry may differ from torchvision's only where its source lies on a nearest-neighbour
    tie, and the colour is checked bit for bit on cxrlab's geometry. Where no pixel differs, the whole image
    is torchvision's."""
    from cxrlab.data.augment import BatchAugment, _affine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the hflip warning
        augment = BatchAugment(AugmentConfig(enabled=True, **ranges))
    torch.manual_seed(0)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (24, 1, 40, 56), dtype=np.uint8))
    images[:, :, :8] = 255
    params = augment.params(24, 40, 56)
    out = augment(images, params)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert params["brightness_first"].any() and not params["brightness_first"].all()
    geometry = _affine(images, params).to(torch.uint8)
    for i in range(24):
        differs = geometry[i] != _torchvision_geometry(images[i], params, i)
        assert not (differs & ~_nearest_ties(params, i, 40, 56)).any(), i
        assert torch.equal(out[i], _torchvision_color_and_flip(geometry[i], params, i)), i
        if not differs.any():
            assert torch.equal(out[i], _torchvision_color_and_flip(_torchvision_geometry(images[i], params, i),
                                                                   params, i)), i
    one = augment(images[0])  # one image, as the figures and notebooks call it
    assert one.shape == images[0].shape


def test_the_augmentation_grid_is_torchvisions_bmm_to_the_last_bit():
    """The sampling grid's products and sums, against torchvision's bmm: equal to the last bit on CPUs whose
    gemm computes them unfused (AMD EPYCs' MKL), within 2 float32 ulps on any other."""
    from torchvision.transforms.v2.functional._geometry import _affine_grid

    from cxrlab.data.augment import _affine_grid as cxrlab_grid

    torch.manual_seed(2)
    theta = torch.randn(6, 6) * torch.tensor([0.2, 0.2, 30.0, 0.2, 0.2, 30.0])
    ours = cxrlab_grid(theta, 40, 56)
    theirs = torch.cat([_affine_grid(theta[i].view(1, 2, 3).clone(), 56, 40, 56, 40) for i in range(6)])
    torch.testing.assert_close(ours, theirs, rtol=2.4e-7, atol=1e-7)


def test_the_inverse_affine_matrix_is_torchvisions():
    """cxrlab computes RandomAffine's matrix itself (importing torchvision imports torch._dynamo): the same
    floats as torchvision's helper, over the ranges the augmentation draws and beyond."""
    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

    from cxrlab.data.augment import _inverse_affine

    rng = np.random.default_rng(3)
    for angle, tx, ty, scale, shear in zip(rng.uniform(-90, 90, 200), rng.integers(-60, 60, 200),
                                           rng.integers(-60, 60, 200), rng.uniform(0.5, 1.5, 200),
                                           rng.uniform(-40, 40, 200)):
        args = float(angle), float(tx), float(ty), float(scale), float(shear)
        assert _inverse_affine(*args) == _get_inverse_affine_matrix([0.0, 0.0], args[0], [args[1], args[2]],
                                                                    args[3], [args[4], 0.0])


def test_batch_augmentation_draws_torchvisions_distributions():
    """The parameters' ranges and rounding are RandomAffine's and ColorJitter's (translations in whole
    pixels, factors around 1), and every image gets its own draw."""
    from cxrlab.data.augment import BatchAugment

    cfg = AugmentConfig(enabled=True)
    torch.manual_seed(1)
    p = BatchAugment(cfg).params(4000, 256, 256)
    for key, lo, hi in (("angle", -cfg.rotation, cfg.rotation), ("scale", 1 - cfg.zoom, 1 + cfg.zoom),
                        ("shear", -cfg.shear, cfg.shear), ("brightness", 1 - cfg.brightness, 1 + cfg.brightness),
                        ("contrast", 1 - cfg.contrast, 1 + cfg.contrast)):
        v = p[key]
        assert lo <= v.min() < lo + 0.05 * (hi - lo) and hi - 0.05 * (hi - lo) < v.max() <= hi, key
        assert abs(float(v.mean()) - (lo + hi) / 2) < 0.03 * (hi - lo), key
    assert torch.equal(p["tx"], p["tx"].round()) and p["tx"].abs().max() == round(cfg.shift * 256)
    assert 0.45 < float(p["brightness_first"].float().mean()) < 0.55 and not p["flip"].any()
    assert len(torch.unique(p["angle"])) == 4000


def test_training_batches_are_augmented_in_the_collate(flat_folders):
    from cxrlab.data.augment import build_augment

    cfg = DataConfig(image_size=32, augment=AugmentConfig(enabled=True))
    data = load_data(flat_folders, config=cfg)
    train = data.dataset("train")
    plain_batch, _ = make_collate("unit")([train[0], train[1]])
    torch.manual_seed(0)
    augmented, _ = make_collate("unit", augment=build_augment(cfg.augment))([train[0], train[1]])
    assert augmented.shape == plain_batch.shape and not torch.equal(augmented, plain_batch)
