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


def autocast(device: torch.device):
    """bf16 autocast on CUDA GPUs that support it, fp16 on older ones; none on CPU (the trainer's
    CPU path is measured in BENCHMARKS.md before anything else is turned on)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device) -> bool:
    return device.type == "cuda" and not torch.cuda.is_bf16_supported()
