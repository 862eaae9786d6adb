"""Hand-written CPU kernels for seed-cnn training, compiled from cpu_kernels.cpp on first use.

Why by hand: profiles of a seed-cnn training step on CPU (BENCHMARKS.md) are dominated by the 2x2
max-pools and by the first block, a 3x3 convolution of the one-channel image into 8 channels at full
resolution. ATen's CPU max-pool vectorises over channels, which these 8-20-channel layers barely fill,
and saves int64 argmax indices; oneDNN's convolution is slow with one input channel; and both write
and read back the full-resolution map. No maintained library ships faster CPU kernels for these
shapes, and torch.compile trained this network slower. So:
- `pool2x2`: a 2x2 max-pool that keeps a one-byte argmax code and writes the input gradient in one pass;
- `conv1_pool`: seed-cnn's first convolution, max-pool and ReLU fused: the full-resolution map is never
  stored.
- `bn_pool`: seed-cnn-bn's batch norm (batch statistics), max-pool and ReLU fused, forward and backward;
  ATen's CPU batch norm took most of seed-cnn-bn's training step on these 8-50-channel maps.
- `conv1_bn_pool`: seed-cnn-bn's first block: batch norm folded into the first convolution's weights
  (its batch mean and variance follow from the image's patch moments), then `conv1_pool`'s kernel.

It is built with the system C++ compiler into the cache ($CXRLAB_CACHE/kernels, by default
~/.cache/cxrlab/kernels), keyed by source, compiler and CPU, with -march=native. Without a compiler,
or with CXRLAB_KERNELS=aten, both return None and callers use PyTorch's operators: the same function, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_ELEMENT_BYTES = {torch.bfloat16: 2, torch.float32: 4}
MAX_BN_CHANNELS = 64  # cpu_kernels.cpp's kMaxChannels: the backward keeps per-channel sums on the stack
_state: dict = {}


def _cache_dir() -> Path:
    from ..data.cache import default_cache_dir

    return default_cache_dir() / "kernels"


def _cpu_signature() -> str:
    """The CPU's model and feature flags: a -march=native build is only reused on the same kind of CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return platform.processor() + line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _build() -> Path:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_signature()]).encode())
    target = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target, then rename: concurrent processes (DDP) never load a half-written library
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        result = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", str(out)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed on {SOURCE}: {result.stderr.strip()[-2000:]}")
        os.replace(out, target)
    return target


def _library():
    """The compiled kernel, or None (logged once) when it cannot be built or is switched off."""
    if "lib" in _state:
        return _state["lib"]
    lib = None
    if os.environ.get("CXRLAB_KERNELS", "") != "aten" and platform.system() == "Linux":
        try:
            lib = ctypes.CDLL(str(_build()))
            i64, c_int, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
            for fn in (lib.cxr_maxpool2x2_forward, lib.cxr_maxpool2x2_backward):
                fn.argtypes = [ptr] * 3 + [c_int] + [i64] * 4 + [c_int]
                fn.restype = c_int
            lib.cxr_conv1_pool_forward.argtypes = [ptr] * 5 + [c_int] * 2 + [i64] * 3 + [c_int] * 3
            lib.cxr_conv1_pool_backward.argtypes = [ptr] * 5 + [c_int] * 2 + [i64] * 3 + [c_int] * 2
            for fn in (lib.cxr_conv1_pool_forward, lib.cxr_conv1_pool_backward):
                fn.restype = c_int
            lib.cxr_bn_stats.argtypes = [ptr, c_int] + [i64] * 3 + [ptr] * 2 + [c_int]
            lib.cxr_bn_pool_forward.argtypes = [ptr] * 5 + [c_int] + [i64] * 4 + [c_int] * 2
            lib.cxr_bn_pool_backward.argtypes = [ptr] * 9 + [c_int] + [i64] * 4 + [c_int]
            lib.cxr_conv1_moments.argtypes = [ptr, c_int] + [i64] * 3 + [c_int] + [ptr] * 2 + [c_int]
            for fn in (lib.cxr_bn_stats, lib.cxr_bn_pool_forward, lib.cxr_bn_pool_backward, lib.cxr_conv1_moments):
                fn.restype = c_int
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            log.warning("cxrlab's CPU kernels are unavailable, using PyTorch's operators (slower): %s", exc)
            lib = None
    _state["lib"] = lib
    return lib


def _exporting() -> bool:
    """Traced or compiled (ONNX, TorchScript, torch.export): a ctypes call would not be recorded."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _geometry(x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(planes, H, W, C) of x as the kernel sees it, or None if its layout is not one the kernel takes."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        return n * c, h, w, 1
    if x.is_contiguous(memory_format=torch.channels_last):
        return n, h, w, c
    return None


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, geometry: tuple[int, int, int, int]) -> torch.Tensor:
        lib = _library()
        planes, h, w, c = geometry
        fmt = torch.contiguous_format if c == 1 else torch.channels_last
        n, ch = x.shape[:2]
        y = torch.empty((n, ch, h // 2, w // 2), dtype=x.dtype, memory_format=fmt)
        code = torch.empty(planes * (h // 2) * (w // 2) * c, dtype=torch.uint8)
        lib.cxr_maxpool2x2_forward(x.data_ptr(), y.data_ptr(), code.data_ptr(), _ELEMENT_BYTES[x.dtype],
                                   planes, h, w, c, torch.get_num_threads())
        ctx.save_for_backward(code)
        ctx.geometry = (planes, h, w, c, fmt, x.shape)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (code,) = ctx.saved_tensors
        planes, h, w, c, fmt, shape = ctx.geometry
        grad = grad.contiguous(memory_format=fmt)
        # odd sizes: the last row/column is outside every window and gets no gradient
        gx = torch.empty(shape, dtype=grad.dtype, memory_format=fmt)
        if h % 2 or w % 2:
            gx.zero_()
        _library().cxr_maxpool2x2_backward(grad.data_ptr(), code.data_ptr(), gx.data_ptr(),
                                           _ELEMENT_BYTES[grad.dtype], planes, h, w, c, torch.get_num_threads())
        return gx, None


def pool2x2(x: torch.Tensor) -> torch.Tensor | None:
    """2x2 stride-2 max-pool of a 4-D CPU tensor through the fused kernel, or None when it does not
    apply (other device, dtype or layout; no compiler), in which case the caller uses ATen."""
    if (x.device.type != "cpu" or x.dim() != 4 or x.dtype not in _ELEMENT_BYTES or x.shape[-1] < 2
            or x.shape[-2] < 2 or _exporting() or _library() is None):
        return None
    geometry = _geometry(x)
    return None if geometry is None else _MaxPool2x2.apply(x, geometry)


class _Conv1Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bf16: bool, relu: bool):
        lib = _library()
        n, _, h, w = x.shape
        k, out = weight.shape[-1], weight.shape[0]
        if bf16:  # autocast's rounding of the weights; the kernel rounds the image as it reads it
            weight, bias = weight.to(torch.bfloat16).float(), bias.to(torch.bfloat16).float()
        x = x.contiguous()
        y = torch.empty((n, out, h // 2, w // 2), dtype=torch.bfloat16 if bf16 else torch.float32,
                        memory_format=torch.channels_last)
        code = torch.empty(y.numel(), dtype=torch.uint8)
        status = lib.cxr_conv1_pool_forward(x.data_ptr(), weight.detach().contiguous().data_ptr(),
                                            bias.detach().contiguous().data_ptr(), y.data_ptr(), code.data_ptr(),
                                            k, out, n, h, w, int(bf16), int(relu), torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"conv1_pool: no kernel for {k}x{k} convolutions")
        ctx.save_for_backward(x, code)
        ctx.shape = (k, out, bf16)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, code = ctx.saved_tensors
        k, out, bf16 = ctx.shape
        n, _, h, w = x.shape
        grad = grad.to(torch.bfloat16 if bf16 else torch.float32).contiguous(memory_format=torch.channels_last)
        gw = torch.empty(out, k * k)
        gb = torch.empty(out)
        _library().cxr_conv1_pool_backward(x.data_ptr(), grad.data_ptr(), code.data_ptr(), gw.data_ptr(),
                                           gb.data_ptr(), k, out, n, h, w, int(bf16), torch.get_num_threads())
        return None, gw.reshape(out, 1, k, k), gb, None, None


def _conv1_applies(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """The first block's kernel takes a one-channel fp32 CPU image without gradient and a 3x3 or 5x5 'same'
    convolution."""
    return not (x.device.type != "cpu" or x.dim() != 4 or x.shape[1] != 1 or x.dtype != torch.float32
                or x.requires_grad or conv.weight.dtype != torch.float32 or conv.in_channels != 1
                or conv.kernel_size not in ((3, 3), (5, 5)) or conv.padding != "same" or conv.padding_mode != "zeros"
                or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or x.shape[-1] < 2
                or x.shape[-2] < 2 or _exporting() or _library() is None)


def _autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def conv1_pool(x: torch.Tensor, conv: torch.nn.Conv2d, relu: bool = False) -> torch.Tensor | None:
    """max_pool2d(conv(x), 2), then ReLU if `relu`, for seed-cnn's first block (one input channel, 3x3
    or 5x5, 'same'), in bf16 when bf16 autocast is on; None when it does not apply (then run the layers)."""
    if conv.bias is None or not _conv1_applies(x, conv):
        return None
    bf16 = _autocast_bf16()
    with torch.autocast("cpu", enabled=False):
        return _Conv1Pool.apply(x, conv.weight, conv.bias, bf16, relu)


def _standard_bn(bn: torch.nn.Module) -> bool:
    return (isinstance(bn, torch.nn.BatchNorm2d) and bn.affine and bn.track_running_stats
            and bn.weight.dtype == torch.float32)


def _update_running_stats(bn: torch.nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What ATen's batch norm does in training: running averages of the batch mean and the unbiased variance."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_((var * count / max(count - 1, 1)).to(bn.running_var.dtype), momentum)


def _eval_affine(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of batch norm with its running statistics."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def conv1_bn_pool(x: torch.Tensor, conv: torch.nn.Conv2d, bn: torch.nn.Module) -> torch.Tensor | None:
    """relu(max_pool2d(bn(conv(x)), 2)) for seed-cnn-bn's first block, or None when it does not apply.

    Batch norm is affine per channel, so it folds into the convolution: weights w * s, bias b - mean * s.
    In training its batch mean and variance are those of the convolution's output, w.m and w'(G - mm')w
    for the image's patch mean m and second moments G (one pass over the image; the map is never made),
    and autograd carries the gradient through the fold to w, the scale and the shift."""
    if conv.bias is not None or not _standard_bn(bn) or not _conv1_applies(x, conv):
        return None
    out, k = conv.out_channels, conv.kernel_size[0]
    bf16 = _autocast_bf16()
    with torch.autocast("cpu", enabled=False):
        if bn.training:
            n, _, h, w = x.shape
            count = n * h * w
            m = torch.empty(k * k, dtype=torch.float64)
            g = torch.empty(k * k, k * k, dtype=torch.float64)
            x = x.contiguous()
            _library().cxr_conv1_moments(x.data_ptr(), k, n, h, w, int(bf16), m.data_ptr(), g.data_ptr(),
                                         torch.get_num_threads())
            m, g = m / count, g / count
            weight = conv.weight.reshape(out, k * k).double()
            mean = weight @ m
            var = ((weight @ (g - torch.outer(m, m))) * weight).sum(1).clamp_min(0)
            _update_running_stats(bn, mean.detach(), var.detach(), count)
            scale = bn.weight.double() * torch.rsqrt(var + bn.eps)
            shift = bn.bias.double() - mean * scale
        else:
            scale, shift = _eval_affine(bn)
        folded = (conv.weight.reshape(out, k * k) * scale[:, None]).float().reshape(conv.weight.shape)
        return _Conv1Pool.apply(x, folded, shift.float(), bf16, True)


def _pool_affine(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                 relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """max_pool2d(z * scale + shift, 2), then ReLU if `relu`, in one pass (no gradient): the pooled map and
    its argmax code (4: cut by the ReLU). Training's batch statistics and evaluation's running ones both
    end here."""
    n, c, h, w = z.shape
    y = torch.empty((n, c, h // 2, w // 2), dtype=z.dtype, memory_format=torch.channels_last)
    code = torch.empty(y.numel(), dtype=torch.uint8)
    scale, shift = scale.detach().float().contiguous(), shift.detach().float().contiguous()
    _library().cxr_bn_pool_forward(z.data_ptr(), scale.data_ptr(), shift.data_ptr(), y.data_ptr(), code.data_ptr(),
                                   _ELEMENT_BYTES[z.dtype], n, h, w, c, int(relu), torch.get_num_threads())
    return y, code


class _BatchNormPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, relu: bool,
                batch: dict):
        n, c, h, w = z.shape
        sums = torch.empty(2, c, dtype=torch.float64)
        _library().cxr_bn_stats(z.data_ptr(), _ELEMENT_BYTES[z.dtype], n * h, w, c, sums[0].data_ptr(),
                                sums[1].data_ptr(), torch.get_num_threads())
        count = n * h * w
        mean = sums[0] / count
        var = (sums[1] / count - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        scale = (weight.detach().double() * invstd).float()
        shift = (bias.detach().double() - mean * weight.detach().double() * invstd).float()
        y, code = _pool_affine(z, scale, shift, relu)
        mean, invstd = mean.float(), invstd.float()
        ctx.save_for_backward(z, code, mean, invstd, scale)
        batch.update(mean=mean, var=var.float(), count=count)  # for the running statistics
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, code, mean, invstd, scale = ctx.saved_tensors
        n, c, h, w = z.shape
        grad = grad.to(z.dtype).contiguous(memory_format=torch.channels_last)
        dz = torch.empty_like(z, memory_format=torch.channels_last)
        sums = torch.empty(2, c, dtype=torch.float64)
        _library().cxr_bn_pool_backward(grad.data_ptr(), code.data_ptr(), z.data_ptr(), mean.data_ptr(),
                                        invstd.data_ptr(), scale.data_ptr(), dz.data_ptr(), sums[0].data_ptr(),
                                        sums[1].data_ptr(), _ELEMENT_BYTES[z.dtype], n, h, w, c,
                                        torch.get_num_threads())
        d_weight = (sums[1] * invstd.double()).float()
        return dz, d_weight, sums[0].float(), None, None, None


def bn_pool(z: torch.Tensor, bn: torch.nn.Module, relu: bool = True) -> torch.Tensor | None:
    """max_pool2d(bn(z), 2), then ReLU if `relu`, for a channels_last CPU map of even size in fp32 or bf16,
    with batch statistics in training (and the running ones updated, as ATen does) and the running ones in
    evaluation; None when it does not apply (then run the layers)."""
    if (z.device.type != "cpu" or z.dim() != 4 or z.dtype not in _ELEMENT_BYTES or z.shape[-1] % 2
            or z.shape[-2] % 2 or z.shape[-1] < 2 or z.shape[1] > MAX_BN_CHANNELS
            or not z.is_contiguous(memory_format=torch.channels_last)
            or not _standard_bn(bn) or _exporting() or _library() is None):
        return None
    if not bn.training:
        if torch.is_grad_enabled() and (z.requires_grad or bn.weight.requires_grad):
            return None  # a gradient through the running statistics: ATen's layers give it
        with torch.no_grad():
            return _pool_affine(z, *_eval_affine(bn), relu)[0]
    batch: dict = {}
    with torch.autocast("cpu", enabled=False):
        y = _BatchNormPool.apply(z, bn.weight, bn.bias, bn.eps, relu, batch)
    _update_running_stats(bn, batch["mean"], batch["var"], batch["count"])
    return y
