"""Training's device helpers: the grad scaler, the memory format and the optimizer. Device choice and
autocast are `cxrlab.device`'s, shared with inference."""

from __future__ import annotations

import torch



def needs_grad_scaler(device: torch.device, precision: str = "auto") -> bool:
    return device.type == "cuda" and precision == "auto" and not torch.cuda.is_bf16_supported()


def training_memory_format(model: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last for training: oneDNN convolutions train about 2x faster in it on CPU
    (BENCHMARKS.md). A model can opt out on CPU with `cpu_channels_last_training = False`:
    ATen's CPU batch-norm backward is slow in channels_last on narrow layers (seed-cnn-bn, 8-50
    channels: 55-64 img/s against 83-130 contiguous; wider nets such as resnet18 and kaggle-cnn
    are faster in channels_last). `cxrlab.accel` turns it back on for seed-cnn-bn when its kernels, which
    replace ATen's batch norm, are built. Inference always uses channels_last (faster for every model here)."""
    if device.type == "cpu" and not getattr(model, "cpu_channels_last_training", True):
        return torch.contiguous_format
    return torch.channels_last


class Adam(torch.optim.Adam):
    """torch.optim.Adam, the same class, state and arithmetic, without importing torch._dynamo.

    torch.optim wraps `step`, `zero_grad`, `state_dict`, `load_state_dict` and `add_param_group` so that
    torch.compile can trace around them; the wrappers import torch._dynamo on first use, 1.0-1.3 s of every
    training process on this 2-core CPU (BENCHMARKS.md, session 15), although cxrlab never compiles. This
    subclass calls the functions those wrappers wrap (`__wrapped__`); `step` keeps the wrapper's one effect
    outside compilation, no autograd (Adam's differentiable=False). Tests check it against torch.optim.Adam
    step by step and that training never imports torch._dynamo."""

    add_param_group = torch.optim.Optimizer.add_param_group.__wrapped__
    zero_grad = torch.optim.Optimizer.zero_grad.__wrapped__
    state_dict = torch.optim.Optimizer.state_dict.__wrapped__
    load_state_dict = torch.optim.Optimizer.load_state_dict.__wrapped__

    def step(self, closure=None):
        with torch.no_grad():
            return torch.optim.Adam.step.__wrapped__(self, closure)


def adam(params, device: torch.device, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel on CPU and CUDA: one pass over all parameters instead of a dozen
    element-wise ops per step. seed-cnn's step: 0.4 ms against 1.3-1.5 ms (BENCHMARKS.md)."""
    fused = device.type in ("cpu", "cuda")
    return Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
