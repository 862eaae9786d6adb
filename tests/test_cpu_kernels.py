"""cxrlab's CPU kernels (accel/kernels.py) compute what PyTorch's operators compute, and fall back cleanly."""

import logging

import pytest
import torch
import torch.nn.functional as F

from cxrlab.accel import FastMaxPool2x2 as MaxPool2x2
from cxrlab.accel import accelerate, plain
from cxrlab.accel import kernels as cpu_kernels

needs_kernel = pytest.mark.skipif(cpu_kernels._library() is None, reason="no C++ compiler: the kernel is not built")


def _pair(x: torch.Tensor):
    return x.clone().requires_grad_(True), x.clone().requires_grad_(True)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(3, 8, 16, 16), (2, 12, 9, 7), (2, 50, 6, 6), (1, 5, 2, 3), (2, 1, 8, 8)])
def test_fused_pool_equals_aten_values_and_gradients(dtype, memory_format, shape):
    """Ties (values rounded to one decimal, many equal in a window), NaNs, odd sizes, the channel counts the
    kernel specialises (1, 8, 12) and others (50, 5)."""
    torch.manual_seed(0)
    base = torch.randn(shape).round(decimals=1)
    base.view(-1)[::13] = float("nan")
    base = base.to(dtype).contiguous(memory_format=memory_format)
    ours, ref = _pair(base)
    y = MaxPool2x2()(ours)
    y_ref = F.max_pool2d(ref, 2)
    assert y.grad_fn is not None and "MaxPool2x2" in type(y.grad_fn).__name__  # the kernel ran, not ATen
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert torch.equal(y.nan_to_num(-99.0), y_ref.nan_to_num(-99.0))
    g = torch.randn(y.shape).to(dtype)
    y.backward(g)
    y_ref.backward(g)
    assert ours.grad.dtype == dtype and torch.equal(ours.grad, ref.grad)


@needs_kernel
def test_fused_pool_keeps_the_memory_format():
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert MaxPool2x2()(x).is_contiguous()
    y = MaxPool2x2()(cl)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the next convolution stays in channels_last
    y.sum().backward()
    assert cl.grad.is_contiguous(memory_format=torch.channels_last)


def _conv(k: int) -> torch.nn.Conv2d:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 8, k, padding="same")
    torch.nn.init.xavier_uniform_(conv.weight)
    return conv


def _reference_block(x, conv, relu):
    y = F.max_pool2d(conv(x), 2)
    return F.relu(y) if relu else y


@needs_kernel
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (19, 26)])
def test_fused_first_block_fp32_equals_conv_pool_relu(k, relu, size):
    conv = _conv(k)
    x = torch.randn(3, 1, *size)
    y = cpu_kernels.conv1_pool(x, conv, relu)
    ref = _reference_block(x, conv, relu)
    assert y is not None and y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, ref, atol=1e-5)
    g = torch.randn(y.shape)
    ours = torch.autograd.grad(y, [conv.weight, conv.bias], g)
    theirs = torch.autograd.grad(ref, [conv.weight, conv.bias], g)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(ours, theirs))


@needs_kernel
@pytest.mark.parametrize("relu", [False, True])
def test_fused_first_block_bf16_matches_autocast_and_has_exact_gradients(relu):
    """Under bf16 autocast the output equals PyTorch's bit for bit; the weight gradients, accumulated in
    fp32/fp64, are closer to the exact (fp64) gradient than PyTorch's bf16 ones."""
    conv = _conv(3)
    x = torch.randn(8, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu_kernels.conv1_pool(x, conv, relu)
        ref = _reference_block(x, conv, relu)
        g = torch.randn(y.shape).to(torch.bfloat16)
        ours = torch.autograd.grad(y, [conv.weight, conv.bias], g)
        theirs = torch.autograd.grad(ref, [conv.weight, conv.bias], g)
    assert y.dtype == ref.dtype == torch.bfloat16 and torch.equal(y, ref)
    w, b = (t.detach().to(torch.bfloat16).double().requires_grad_(True) for t in (conv.weight, conv.bias))
    exact_y = _reference_block(x.to(torch.bfloat16).double(), lambda v: F.conv2d(v, w, b, padding=1), relu)
    exact = torch.autograd.grad(exact_y, [w, b], g.double())
    for mine, torchs, truth in zip(ours, theirs, exact):
        err = (mine.double() - truth).norm() / truth.norm()
        assert err < 1e-5 and err <= (torchs.double() - truth).norm() / truth.norm()


@needs_kernel
def test_seed_cnn_training_uses_the_kernels_and_matches_pytorch(monkeypatch):
    """One fp32 training step of seed-cnn: the fused first block runs, and every parameter's gradient
    equals the one through PyTorch's operators."""
    from cxrlab.models import ModelSpec, create_model

    calls = []
    fused = cpu_kernels.conv1_pool
    monkeypatch.setattr("cxrlab.accel.conv1_pool", lambda *a, **k: calls.append(1) or fused(*a, **k))
    torch.manual_seed(0)
    model = accelerate(create_model(ModelSpec("seed-cnn", image_size=64))).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    grads = []
    for lib in (cpu_kernels._library(), None):
        monkeypatch.setitem(cpu_kernels._state, "lib", lib)
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout mask
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert calls  # the fused path ran (and returned None when the library was off)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*grads))


@needs_kernel
def test_seed_cnn_inference_uses_the_fused_block_with_pytorchs_bf16_output(monkeypatch):
    """Prediction (no gradients, bf16 autocast as on CPU) through the fused first block gives PyTorch's
    logits bit for bit."""
    from cxrlab.models import ModelSpec, create_model

    torch.manual_seed(0)
    model = accelerate(create_model(ModelSpec("seed-cnn", image_size=64))).eval().to(memory_format=torch.channels_last)
    x = torch.randn(5, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    calls = []
    fused = cpu_kernels.conv1_pool
    monkeypatch.setattr("cxrlab.accel.conv1_pool", lambda *a, **k: calls.append(1) or fused(*a, **k))
    outs = []
    for lib in (cpu_kernels._library(), None):
        monkeypatch.setitem(cpu_kernels._state, "lib", lib)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(model(x))
    assert calls and torch.equal(*outs)


@needs_kernel
def test_a_hook_on_the_first_block_keeps_the_plain_layers():
    """Saliency methods hook layers: a hooked first conv must see its input, so the fused path steps aside."""
    from cxrlab.models import ModelSpec, create_model

    model = accelerate(create_model(ModelSpec("seed-cnn", image_size=64)))
    seen = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    assert seen == [torch.Size([2, 8, 64, 64])]


def test_unsupported_inputs_fall_back_to_aten():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    assert cpu_kernels.pool2x2(x) is None  # dtype
    strided = torch.randn(2, 4, 8, 16, requires_grad=True)[..., ::2]
    assert cpu_kernels.pool2x2(strided) is None  # neither contiguous nor channels_last
    y = MaxPool2x2()(strided)
    assert torch.equal(y, F.max_pool2d(strided, 2))


@pytest.mark.parametrize("env", [{"CXRLAB_KERNELS": "aten"}, {"CXX": "/bin/false"}])
def test_no_kernel_means_aten_with_a_warning(monkeypatch, tmp_path, caplog, env):
    """Switched off, or no working compiler: training still works, through ATen, and says so once."""
    monkeypatch.setenv("CXRLAB_CACHE", str(tmp_path))  # no cached build to reuse
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cpu_kernels, "_state", {})
    with caplog.at_level(logging.WARNING, logger="cxrlab.accel.kernels"):
        x = torch.randn(2, 8, 8, 8, requires_grad=True)
        assert cpu_kernels.pool2x2(x) is None
        y = MaxPool2x2()(x)
    assert y.grad_fn is not None and "MaxPool2x2" not in type(y.grad_fn).__name__
    if "CXX" in env:
        assert "CPU kernels are unavailable" in caplog.text and "/bin/false" in caplog.text


@needs_kernel
def test_tracing_records_pytorch_operators_not_the_kernels():
    """A ctypes call is invisible to a tracer: traced with gradients on, seed-cnn must still give the
    right output for a new input (ONNX and TorchScript export trace the model)."""
    from cxrlab.models import ModelSpec, create_model

    torch.manual_seed(0)
    model = accelerate(create_model(ModelSpec("seed-cnn", image_size=64))).eval()
    traced = torch.jit.trace(model, torch.randn(2, 1, 64, 64), check_trace=False)
    x = torch.randn(2, 1, 64, 64)
    assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_accelerate_keeps_the_parameters_and_plain_undoes_it():
    """The speed-ups live outside the model files: a plain model's state dict loads into an accelerated
    one unchanged, and `plain` gives back the layers as written (what saliency hooks and export trace)."""
    from cxrlab.models import ModelSpec, create_model
    from cxrlab.models.seed_cnn import SeedCNN

    for name in ("seed-cnn", "seed-cnn-bn", "kaggle-cnn"):
        torch.manual_seed(0)
        model = create_model(ModelSpec(name, image_size=64)).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x = torch.randn(3, 1, 64, 64)
        with torch.no_grad():
            ref = model(x)
            fast = accelerate(model)
            assert any(isinstance(m, MaxPool2x2) for m in fast.modules())
            assert torch.allclose(fast(x), ref, atol=1e-6)
        assert all(torch.equal(before[k], v) for k, v in fast.state_dict().items())
        back = plain(fast)
        assert not any(isinstance(m, MaxPool2x2) for m in back.modules())
        assert type(back) is (SeedCNN if name.startswith("seed") else type(back))
