"""Device choice and mixed precision: CUDA when present, else CPU. Below inference and training,
which both choose their device here. Changes no process state (malloc tuning is the CLI's,
`allocator.py`)."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    """The device to compute on: `auto` is CUDA when present, else the CPU."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but no CUDA GPU is available; use --device auto or cpu")
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
