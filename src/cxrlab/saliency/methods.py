"""Saliency methods: pytorch-grad-cam's, plus CAM (which it lacks), on single-logit models.

Every map is computed for the *positive* class: the target is the logit itself, whose gradient
points towards "more positive" whether the logit is currently negative or positive (a target that
flips sign with the prediction would explain the predicted class instead).
"""

from __future__ import annotations

import contextlib

import copy
import math

import numpy as np
import torch
from torch import nn

from ..accel import plain
from ..errors import ConfigError
from ..models.seed_cnn import SeedCNN

from pytorch_grad_cam import (AblationCAM, EigenCAM, EigenGradCAM, GradCAM, GradCAMElementWise,
                              GradCAMPlusPlus, HiResCAM, LayerCAM, RandomCAM, XGradCAM)
from pytorch_grad_cam import ScoreCAM as _LibraryScoreCAM
from pytorch_grad_cam.base_cam import BaseCAM


class CAM(BaseCAM):
    """Class activation mapping (Zhou et al. 2016): sum_k w_k f_k(x, y) over the last conv layer of a
    global-average-pooling model. w_k is d logit / d pooled_k: the weight of a linear head, and its
    exact local equivalent for seed-cnn's MLP head. (pytorch-grad-cam has no CAM; through GAP,
    d logit / d f_k(x, y) = w_k / Z at every position, so w_k is the spatial sum of the gradient.)"""

    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return grads.sum(axis=(2, 3))


class ScoreCAM(_LibraryScoreCAM):
    """Score-CAM (Wang et al. 2020) as pytorch-grad-cam computes it, minus its per-batch tqdm bars
    (printed to the terminal for every image; tqdm ignores TQDM_DISABLE once imported elsewhere).
    Masked inputs are scored in batches of `batch_size`."""

    batch_size = 64

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        with torch.no_grad():
            acts = torch.from_numpy(activations).to(self.device)
            up = nn.functional.interpolate(acts, size=input_tensor.shape[-2:], mode="bilinear", align_corners=True)
            lo = up.amin(dim=(2, 3), keepdim=True)
            hi = up.amax(dim=(2, 3), keepdim=True)
            up = (up - lo) / (hi - lo + 1e-8)
            weights = []
            for target, image, masks in zip(targets, input_tensor, up):
                masked = image[None] * masks[:, None]  # channels x C x H x W
                scores = torch.cat([target(self.model(masked[i:i + self.batch_size])).reshape(-1).float()
                                    for i in range(0, len(masked), self.batch_size)])
                weights.append(torch.softmax(scores, dim=0))
            return torch.stack(weights).cpu().numpy()


METHODS: dict[str, type] = {
    "cam": CAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "hirescam": HiResCAM,
    "xgradcam": XGradCAM, "layercam": LayerCAM, "eigencam": EigenCAM, "eigengradcam": EigenGradCAM,
    "ablationcam": AblationCAM, "gradcamelementwise": GradCAMElementWise, "randomcam": RandomCAM,
}


class PositiveLogit:
    """pytorch-grad-cam target: the positive-class logit of a one-logit model, or the `output`-th logit
    (a finding of a multi-label model)."""

    def __init__(self, output: int = 0):
        self.output = output

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output.reshape(-1)[self.output] if model_output.dim() <= 1 else model_output[..., self.output]


def linear_head(model: nn.Module) -> bool:
    """Is the model's head linear after global pooling (only Flatten, Dropout and one Linear)? Zhou et
    al.'s CAM is defined only then: its weights are the head's. seed-cnn's head (Dense 128, Dense 32)
    and cxrlab's timm head (Dense 256) are not."""
    head = getattr(model, "head", None)
    if head is None:
        return False
    layers = [m for m in head.modules() if not list(m.children())]
    return (sum(isinstance(m, nn.Linear) for m in layers) == 1
            and all(isinstance(m, (nn.Linear, nn.Flatten, nn.Dropout, nn.Identity)) for m in layers))


# The single map cxrlab shows by default (report, web page, predict --heatmaps), and the seed CNNs'
# default layer: the conv block whose output is 8 x 8 (stride 32 at 256 px: the 5th block; at 128 px the
# 4th, as on the demo). Chosen by
# benchmarks/localisation.py (BENCHMARKS.md, session 9) on NIH's radiologist boxes (35 Pneumonia boxes)
# with two seed-cnn-bn Pneumonia runs: LayerCAM there had the best pointing game of every layer and
# method, 0.200 [95% CI 0.100, 0.359] and 0.086 [0.030, 0.224] against chance 0.073, so above chance
# with a CI that excludes it in one run of two only; the last block (4 x 4, the old default) scored
# 0.029-0.057 with every method. On the demo's synthetic boxes this layer scores 0.394 [0.321, 0.471]
# against chance 0.039. Small samples: read the maps as hints, not as localisation. On the teaching demo
# (session 10, 128 px, 239 boxes) LayerCAM at the 8 x 8 block (the 4th) pointed 0.874 [0.826, 0.911] against
# chance 0.031, and the 4 x 4 5th block 0.033: the block is chosen by the maps' size, not its number.
DEFAULT_MAP_METHOD = "layercam"
SEED_CNN_MAP_BLOCK = 5  # at 256 px
SEED_CNN_MAP_SIZE = 8  # the output size of that block


def seed_cnn_map_block(image_size: int | None) -> int:
    """The seed CNNs' block whose output is SEED_CNN_MAP_SIZE square at this input size (5 at 256 px)."""
    if not image_size:
        return SEED_CNN_MAP_BLOCK
    return max(1, round(math.log2(max(image_size, 2) / SEED_CNN_MAP_SIZE)))


def default_target_layer(model: nn.Module, image_size: int | None = None) -> nn.Module:
    """The layer maps come from by default: the seed CNNs' conv block with 8 x 8 maps at `image_size`
    (see above), else the last convolutional block (a timm backbone's last feature stage: not measured
    against boxes here)."""
    if hasattr(model, "backbone"):  # timm's and torchxrayvision's backbones list their stages
        info = getattr(model.backbone, "feature_info", None)
        if info is not None:
            return model.backbone.get_submodule(info[-1]["module"])
    features = getattr(model, "features", model)
    if isinstance(model, SeedCNN):
        blocks = [m for m in features if isinstance(m, nn.ReLU)]
        if blocks:
            return blocks[min(seed_cnn_map_block(image_size), len(blocks)) - 1]
    layers = [m for m in features.modules() if isinstance(m, (nn.ReLU, nn.Conv2d))]
    if not layers:
        raise ConfigError("cannot find a convolutional layer to explain; pass --target-layer")
    return layers[-1]


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if m is layer), type(layer).__name__)


def layer_resolution(model: nn.Module, layer: nn.Module, spec) -> tuple[int, int]:
    """The (height, width) of `layer`'s output for the model's input size: a map has no finer detail."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    try:
        with torch.no_grad():
            model(torch.zeros(1, spec.in_chans, spec.image_size, spec.image_size))
    finally:
        handle.remove()
    return seen[0] if seen else (0, 0)


def resolve_layer(model: nn.Module, name: str | None, image_size: int | None = None) -> nn.Module:
    if name is None:
        return default_target_layer(model, image_size)
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ReLU)) or n.count(".") < 2][:30]
        raise ConfigError(f"no layer named {name!r}; some layer names: {', '.join(n for n in names if n)}") from None


def explainable_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode with in-place activations turned off: an in-place op after the target
    layer rewrites the tensor whose gradient hook is registered (the DenseNet trap)."""
    model = plain(copy.deepcopy(model)).eval()  # the layers as written: hooks see what they hook
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    return model


def compute_maps(model: nn.Module, batch: torch.Tensor, method: str, target_layer: nn.Module,
                 batch_size: int = 64, outputs: list[int] | None = None) -> np.ndarray:
    """N x H x W maps in [0, 1] for the positive class (multi-label: for each image's finding `outputs[i]`).
    Uses the CAM object as a context manager so its hooks are always removed."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "cam" and not linear_head(model):
        raise ConfigError("cam (Zhou et al.) needs a linear head after global pooling; this model's head is an MLP, "
                          "where CAM is not defined. Use gradcam: Grad-CAM is CAM's generalisation to any head")
    cls = METHODS[method]
    with _gradients_start_at(model, target_layer), cls(model=model, target_layers=[target_layer]) as cam:
        cam.batch_size = batch_size  # Score-CAM and Ablation-CAM score their masked inputs in batches
        with torch.enable_grad():
            maps = cam(input_tensor=batch, targets=[PositiveLogit(k) for k in (outputs or [0] * len(batch))])
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


@contextlib.contextmanager
def _gradients_start_at(model: nn.Module, target_layer: nn.Module):
    """Every method here needs gradients at the target layer only. With the weights frozen and the
    target layer's output made a leaf, backward stops there instead of computing every weight's
    gradient and running through the early layers: Grad-CAM on seed-cnn at 128 px takes 7.3 instead
    of 10.8 ms for one image (2.4 instead of 3.3 ms each in batches of 8),
    same maps (tests)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)

    def leaf(module, inputs, output):
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            output.requires_grad_(True)
        return output

    handle = target_layer.register_forward_hook(leaf)  # before the CAM object's own hook
    try:
        yield
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
