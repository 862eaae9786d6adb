"""Saving and loading weights and training state. Nothing here unpickles arbitrary objects:
weights are safetensors, and training checkpoints are read with torch.load(weights_only=True)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .errors import CxrlabError
from .runs import atomic_write


def atomic_torch_save(obj, path: str | Path) -> None:
    """Serialise in memory, then write atomically: torch.save straight to a full disk fails with
    'basic_ios::clear: iostream error' and leaves its temporary file; a plain write reports ENOSPC."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getbuffer())


def save_state_dict(state: dict, path: str | Path) -> None:
    from safetensors.torch import save

    atomic_write(path, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    save_state_dict(model.state_dict(), path)


def load_state_dict(path: str | Path) -> dict:
    """A state dict from .safetensors, or from a torch file read with weights_only=True
    (a full training checkpoint contributes its 'model' entry)."""
    path = Path(path)
    if not path.exists():
        raise CxrlabError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CxrlabError(f"{path}: not a readable weights file ({exc.__class__.__name__}: {exc}). "
                          "It may be truncated or from another program.") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CxrlabError(f"{path}: does not hold a state dict of tensors")
    return obj


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint written by the trainer; a clear error if truncated or foreign."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CxrlabError(f"{path}: checkpoint not found; nothing to resume") from None
    except Exception as exc:
        raise CxrlabError(f"{path}: cannot read checkpoint ({exc.__class__.__name__}); it may be truncated. "
                          "Nothing was overwritten.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "cxrlab-checkpoint-1":
        raise CxrlabError(f"{path}: not a cxrlab training checkpoint. Nothing was overwritten.")
    return ckpt
