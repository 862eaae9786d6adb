"""Device choice and mixed precision: CUDA when present, else CPU."""

from __future__ import annotations

import contextlib

import torch


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError("device cuda was asked for, but no CUDA GPU is available; use --device auto or cpu")
    return device


def autocast(device: torch.device, precision: str = "auto"):
    """auto: bf16 autocast on CUDA GPUs that support it, fp16 on older ones, fp32 on CPU.
    bf16: bf16 autocast on any device (on CPUs with AVX-512 BF16/AMX it is much faster; its accuracy
    is measured in BENCHMARKS.md). fp32: no autocast."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16)


def needs_grad_scaler(device: torch.device, precision: str = "auto") -> bool:
    return device.type == "cuda" and precision == "auto" and not torch.cuda.is_bf16_supported()
