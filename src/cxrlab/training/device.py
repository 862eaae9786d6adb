"""Device choice and mixed precision: CUDA when present, else CPU."""

from __future__ import annotations

import contextlib

import torch

from ..allocator import keep_freed_memory


def select_device(name: str = "auto") -> torch.device:
    """The device to compute on. On CPU this also makes malloc keep large freed buffers for reuse
    (allocator.py): every training and inference path picks its device here."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError("device cuda was asked for, but no CUDA GPU is available; use --device auto or cpu")
    if device.type == "cpu":
        keep_freed_memory()
    return device


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 / AMX: where bf16 convolutions are fast (1.8x here, BENCHMARKS.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, precision: str = "auto"):
    """auto: bf16 autocast on CUDA GPUs that support it (fp16 on older ones), and on CPUs with native
    bf16 (same test AUC as fp32 on NIH effusion, BENCHMARKS.md), else fp32.
    bf16: bf16 autocast on any device. fp32: no autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def needs_grad_scaler(device: torch.device, precision: str = "auto") -> bool:
    return device.type == "cuda" and precision == "auto" and not torch.cuda.is_bf16_supported()


def training_memory_format(model: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last for training: oneDNN convolutions train about 2x faster in it on CPU
    (BENCHMARKS.md). A model can opt out on CPU with `cpu_channels_last_training = False`:
    ATen's CPU batch-norm backward is slow in channels_last on narrow layers (seed-cnn-bn, 8-50
    channels: 55-64 img/s against 83-130 contiguous; wider nets such as resnet18 and kaggle-cnn
    are faster in channels_last). Inference always uses channels_last (faster for every model here)."""
    if device.type == "cpu" and not getattr(model, "cpu_channels_last_training", True):
        return torch.contiguous_format
    return torch.channels_last


def adam(params, device: torch.device, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel on CPU and CUDA: one pass over all parameters instead of a dozen
    element-wise ops per step. seed-cnn's step: 0.4 ms against 1.3-1.5 ms (BENCHMARKS.md)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
