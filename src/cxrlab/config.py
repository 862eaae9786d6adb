"""Typed configuration with every default in one place; YAML in and out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

NORMALIZATIONS = ("standardize", "unit", "imagenet", "xrv")
# torchxrayvision's DenseNet-121 weights cxrlab can start from (`--pretrained xrv:NAME`): all take one
# channel at 224 px in [-1024, 1024], which `xrv` normalisation gives (the library's own `normalize`)
XRV_WEIGHTS = {f"densenet121-res224-{name}": 224 for name in ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch")}
XRV_MODEL = "xrv-densenet121"
SPLIT_SCHEMES = ("70-15-15", "lesson")
BAD_IMAGE_POLICIES = ("error", "skip")
VAL_POLICIES = ("auto", "keep", "resplit")


@dataclass
class AugmentConfig:
    """Random training-time transforms (torchvision v2). Horizontal flip is off on purpose:
    a flipped chest X-ray puts the heart on the wrong side."""

    enabled: bool = True  # on in cxrlab's default recipe (BENCHMARKS.md); the lesson's recipe has it off
    rotation: float = 10.0  # degrees, +-
    shift: float = 0.05  # fraction of width/height, +-
    zoom: float = 0.1  # scale in [1-zoom, 1+zoom]
    shear: float = 5.0  # degrees, +-
    brightness: float = 0.1  # factor in [1-b, 1+b]
    contrast: float = 0.1  # factor in [1-c, 1+c]
    hflip: bool = False


@dataclass
class DataConfig:
    """How images are read, preprocessed and split."""

    image_size: int = 256
    normalization: str = "standardize"
    split_scheme: str = "70-15-15"
    val_fraction: float | None = None  # overrides the scheme when set
    test_fraction: float | None = None
    split_seed: int = 42
    val_policy: str = "auto"  # for pre-split folders: keep their val/, or re-split it from train
    on_bad_image: str = "error"
    cache_dir: str | None = None  # default: $CXRLAB_CACHE or ~/.cache/cxrlab
    decode_workers: int | None = None  # image decoding processes; default: all cores
    views: list[str] | None = None  # keep only these view positions (PA, AP, LL...); None: every image
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"augment must be a mapping of augmentation settings, got {self.augment!r}")
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("split_scheme", self.split_scheme, SPLIT_SCHEMES)
        _check_choice("on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES)
        _check_choice("val_policy", self.val_policy, VAL_POLICIES)
        if isinstance(self.views, str):  # "PA,AP" from the command line
            self.views = [v for v in self.views.split(",") if v.strip()]
        if self.views is not None:
            self.views = [str(v).strip().upper() for v in self.views]
            if not self.views:
                raise ConfigError("views must name at least one view position, e.g. PA or PA,AP")
        if not 16 <= int(self.image_size) <= 4096:
            raise ConfigError(f"image_size must be between 16 and 4096, got {self.image_size}")

    def fractions(self) -> tuple[float, float]:
        """(val, test) fractions of all images. The lesson holds out 15% for test, then 15% of
        the rest for validation."""
        val, test = (0.15, 0.15) if self.split_scheme == "70-15-15" else (0.85 * 0.15, 0.15)
        val = self.val_fraction if self.val_fraction is not None else val
        test = self.test_fraction if self.test_fraction is not None else test
        if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
            raise ConfigError(f"val_fraction {val} and test_fraction {test} must leave room for training")
        return val, test


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# keys added to TrainConfig after runs were written without them, with the value those runs trained with:
# a run's own config.yaml (resume, RunDir.read_config) keeps it; a new run from --config gets today's default
RUN_KEYS_ADDED = {"min_epoch_images": 0, "lr_schedule": "plateau"}


def load_yaml(cls, path: str | Path, absent: dict | None = None):
    """Read a config; unknown keys are an error so a typo never silently falls back to a default. `absent`:
    values for keys the file lacks (RUN_KEYS_ADDED for a run's own config.yaml)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:  # safe_load never builds objects: a !!python tag is a parse error too
        # where the broken construct began (an unclosed '[' on line 1), else where parsing stopped
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys to values, not a {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{path}: unknown config keys {sorted(unknown)}; valid keys: {sorted(names)}")
    try:
        return cls(**{**(absent or {}), **data})
    except TypeError as exc:  # a nested section of the wrong shape, e.g. `data: [1, 2]`
        raise ConfigError(f"{path}: {exc}") from None


MONITORS = ("val_loss", "val_auc")
LR_SCHEDULES = ("plateau", "cosine")
LESSON_LR = 1e-3  # the lesson's Adam rate; its recipe (demo, benchmarks, tests) pins it
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as the run's config.yaml, which repeats the run."""

    source: str = ""
    positive: str | None = None
    negative: list[str] | None = None
    # multi-label: these findings scored at once, or ["all"] (every finding of the data); None: the binary task.
    # A run records the resolved list, in the order of the model's outputs
    findings: list[str] | None = None
    images_dir: str | None = None
    split_file: str | None = None
    model: str = "seed-cnn-bn"  # cxrlab's default recipe; the lesson's network is "seed-cnn"
    # "imagenet" (timm backbones), or "xrv:NAME" (torchxrayvision's chest X-ray DenseNet, which sets the
    # model, the image size and the normalisation to its own); both need internet once
    pretrained: str | None = None
    weights: str | None = None  # local backbone weights (.safetensors or a torch state dict)
    allow_partial_weights: bool = False  # train even when some backbone tensors are not in the weights
    init_from: str | None = None  # a run directory whose backbone to start from
    trainable_blocks: int | None = None  # None: all; 0: frozen backbone; N: last N stages
    finetune_epochs: int = 0  # second phase (the seeds' two-phase schedule); 0 = none
    finetune_blocks: int | None = 2  # stages unfrozen in the second phase (None: all)
    finetune_lr_factor: float = 0.1  # second-phase lr = lr x this (the seeds use 10-100x lower)
    cache_features: bool = True  # frozen backbone, no augmentation: compute its features once
    dropout: float = 0.6
    # 12 epochs, lr 1e-3 down a cosine, no early stop (session 18, 9 runs a task): against the earlier 40
    # epochs at 3e-4 with patience 10 and the lr halved after 3 (now `--recipe long`), the same test AUC on
    # NIH pneumonia (0.795 / 0.794), 0.011 lower on NIH effusion (0.874 / 0.885), higher on the demo's data
    # (0.926 / 0.915), in about half the time. A shorter plateau budget, 15 / 5 / 2, had lost 0.022 on
    # effusion and 0.06 on the demo (BENCHMARKS.md, sessions 12, 15 and 18)
    epochs: int = 12
    # a training budget: at most this many images seen (epochs x training images; 0: no cap). 12
    # epochs of NIH's 440-630 training images fit; Kermany's 2,900 get 10, which keeps a run within
    # 10 minutes on 2 CPU cores (BENCHMARKS.md). Applies to the first phase.
    max_train_images: int = 30_000
    # an epoch is at least this many images: a smaller training set is passed over ceil(400 / n) times
    # per epoch, so that epochs, early-stopping and lr patience mean as much learning as on NIH's
    # 445-629 training images, which they were measured on (those stay one pass). Without it 4 of 9 runs
    # on the demo's 222 images stopped early (19-35 epochs), three near chance: test AUC 0.799 over the 9,
    # the lesson's recipe 0.900; with it 0.948 (BENCHMARKS.md, session 13). 0: an epoch is one pass
    min_epoch_images: int = 400
    batch_size: int = 16
    # the lesson's 1e-3, decayed by the cosine: 3e-4 down the same cosine lost 0.027 on NIH effusion, 2e-3
    # lost 0.012 on NIH pneumonia (BENCHMARKS.md, session 18); the lesson's recipe pins LESSON_LR
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None
    # weights averaged over optimizer steps (exponential moving average, per-step decay; 0 = off).
    # Validation, the best checkpoint and evaluation use the averaged weights: on NIH's ~95-image
    # validation splits single-epoch weights make checkpoint choice noisy. Off: 0.99 did not raise
    # test AUC on NIH pneumonia (BENCHMARKS.md)
    ema_decay: float = 0.0
    class_weights: bool = True  # pos_weight = negatives / positives of the training split
    monitor: str = "val_auc"
    early_stopping: int = 0  # patience in epochs; 0 = off (the cosine's 12 epochs run to the end)
    # plateau schedule: lr x lr_factor after this many epochs in a row without improvement; 0 = off (the
    # lesson's constant lr). 3: what `--recipe long` was measured with
    lr_patience: int = 3
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    # plateau: lr x lr_factor after lr_patience epochs without improvement (ReduceLROnPlateau);
    # cosine: from lr down to min_lr over each phase's epochs, whatever the monitor does (CosineAnnealingLR)
    lr_schedule: str = "cosine"
    # test-time augmentation: scores average the plain image and this many fixed views within the
    # augmentation ranges (evaluation, predict, serve); runs trained without augmentation use none
    tta: int = 8
    shuffle_labels: bool = False  # sanity-check runs only: permute the training labels (Adebayo et al.)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: mixed on CUDA, bf16 on CPUs with native bf16, else fp32 | fp32 | bf16
    workers: int = 0  # DataLoader worker processes (decoding has its own: data.decode_workers)
    devices: int = 1  # data-parallel processes on this node (DDP); torchrun/SLURM set their own
    data: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def recipe(cls, name: str, **overrides) -> "TrainConfig":
        """`TrainConfig.recipe("lesson", epochs=20)`: a named recipe (RECIPES) with overrides."""
        return recipe(name, **overrides)

    def __post_init__(self):
        if isinstance(self.data, dict):
            data = dict(self.data)
            if "workers" in data:  # config.yaml of runs before the rename (DataLoader workers are `workers`)
                data["decode_workers"] = data.pop("workers")
            self.data = DataConfig(**data)
        if not isinstance(self.data, DataConfig):
            raise ConfigError(f"data must be a mapping of data settings, got {self.data!r}")
        if isinstance(self.negative, str):
            self.negative = [self.negative]
        if isinstance(self.findings, str):  # "all" or "Effusion,Pneumonia" from the command line
            self.findings = [f.strip() for f in self.findings.split(",") if f.strip()]
        if self.findings is not None and not self.findings:
            raise ConfigError("findings must name at least one finding, or be 'all'")
        if self.findings and (self.positive or self.negative):
            raise ConfigError("give positive/negative (one binary task) or findings (several at once), not both")
        if self.pretrained not in (None, "imagenet") and not str(self.pretrained).startswith("xrv:"):
            raise ConfigError(f"pretrained must be imagenet or xrv:NAME ({', '.join(XRV_WEIGHTS)}); got {self.pretrained!r}")
        if self.pretrained and self.pretrained.startswith("xrv:"):
            # the network's own preprocessing, recorded so that every later command reads images the same way
            self.model = XRV_MODEL
            self.data.image_size = XRV_WEIGHTS.get(self.pretrained[4:], 224)
            self.data.normalization = "xrv"
        _check_choice("monitor", self.monitor, MONITORS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if int(self.min_epoch_images) < 0:
            raise ConfigError(f"min_epoch_images must be 0 (one pass per epoch) or more, got {self.min_epoch_images}")
        if int(self.max_train_images) < 0:
            raise ConfigError(f"max_train_images must be 0 (no cap) or more, got {self.max_train_images}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.tta) < 0:
            raise ConfigError(f"tta must be 0 (the plain image) or more, got {self.tta}")
        if not 0 <= float(self.ema_decay) < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= float(self.dropout) < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if float(self.weight_decay) < 0:
            raise ConfigError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        for name in ("early_stopping", "lr_patience"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be 0 (off) or more, got {getattr(self, name)}")
        if not 0 < float(self.lr_factor) < 1:
            raise ConfigError(f"lr_factor must be in (0, 1), got {self.lr_factor}")


# Recipes, named once: what `--recipe NAME` and `TrainConfig.recipe(NAME)` start from. "default" is
# cxrlab's (the TrainConfig defaults, chosen by benchmarks/accuracy.py); "lesson" is the Carpentries
# lesson's own: its CNN, Adam at 1e-3, 10 epochs, the best validation loss, no augmentation, no class
# weights, a constant learning rate, fp32, no training budget, an epoch one pass over the data.
RECIPES: dict[str, dict] = {
    "default": {},
    # cxrlab's default before session 18: up to 40 epochs at 3e-4, the lr halved after 3 epochs without a
    # better validation AUC, stopped after 10; about twice the default's time, 0.011 more test AUC on NIH effusion
    "long": dict(lr=3e-4, epochs=40, lr_schedule="plateau", early_stopping=10, lr_patience=3),
    "lesson": dict(model="seed-cnn", lr=LESSON_LR, augment=False, epochs=10, monitor="val_loss", early_stopping=0,
                   lr_schedule="plateau", lr_patience=0, class_weights=False, precision="fp32", max_train_images=0,
                   min_epoch_images=0),
}


def recipe(name: str, **overrides) -> TrainConfig:
    """The named recipe's TrainConfig, with `overrides` (any TrainConfig or DataConfig key, as in
    `with_overrides`) on top."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return with_overrides(TrainConfig(), **{**RECIPES[name], **overrides})



def refuse_plateau_flags_without_plateau(cfg: TrainConfig, given: dict) -> None:
    """lr_patience and lr_factor only steer the plateau schedule: given for a cosine run they would be
    ignored without a word, so they are refused (`given`: the settings the user named, None = not named)."""
    named = [k for k in ("lr_patience", "lr_factor") if given.get(k) is not None]
    if named and cfg.lr_schedule != "plateau":
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in named)
        raise ConfigError(f"{flags} steer the plateau schedule, but this run's is {cfg.lr_schedule}; "
                          "add --lr-schedule plateau, or leave them out")


def with_overrides(cfg: TrainConfig, **overrides) -> TrainConfig:
    """A copy of `cfg` with the given keys replaced; None means 'not given'. Keys of the data
    config (image_size, normalization, ...) reach cfg.data; `augment` switches augmentation."""
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    data_keys = {f.name for f in dataclasses.fields(DataConfig)} - {"augment"}
    top, data, augment = {}, {}, None
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "augment":
            augment = value
        elif key in train_keys:
            top[key] = value
        elif key in data_keys:
            data[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}")
    new_data = dataclasses.replace(cfg.data, **data)
    if augment is not None:
        new_data.augment = dataclasses.replace(new_data.augment, enabled=bool(augment))
    return dataclasses.replace(cfg, **top, data=new_data)
