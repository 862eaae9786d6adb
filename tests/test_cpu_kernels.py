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
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("bf16", [False, True])
def test_first_block_channel_and_column_kernels_give_the_same_bits(k, bf16):
    """8 output channels run the channel-vectorised kernel, 9 the column-vectorised one: the first 8 channels
    of a 9-channel convolution are the 8-channel one's, bit for bit, with the same argmax (so gradients)."""
    torch.manual_seed(1)
    nine = torch.nn.Conv2d(1, 9, k, padding="same")
    eight = torch.nn.Conv2d(1, 8, k, padding="same")
    with torch.no_grad():
        eight.weight.copy_(nine.weight[:8]), eight.bias.copy_(nine.bias[:8])
    x = torch.randn(3, 1, 21, 30)
    x[0, 0, :4] = float("nan")  # NaN windows keep ATen's semantics in both
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y8, y9 = cpu_kernels.conv1_pool(x, eight, True), cpu_kernels.conv1_pool(x, nine, True)
    assert torch.equal(y8.float().nan_to_num(7.0), y9[:, :8].float().nan_to_num(7.0))
    g = torch.randn(y9.shape)
    grads8 = torch.autograd.grad(y8.float(), [eight.weight, eight.bias], g[:, :8].nan_to_num(0))
    grads9 = torch.autograd.grad(y9.float(), [nine.weight, nine.bias], g.nan_to_num(0))
    for a, b in zip(grads8, grads9):
        torch.testing.assert_close(a, b[:8], rtol=1e-5, atol=1e-5, equal_nan=True)


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
@pytest.mark.parametrize("name", ["seed-cnn", "seed-cnn-bn"])
def test_a_hook_on_a_block_keeps_its_plain_layers(name):
    """Saliency methods hook layers: a hooked layer must see its input and output, so the fused path steps
    aside for that block (the first, or a batch norm later on)."""
    from cxrlab.models import ModelSpec, create_model

    model = accelerate(create_model(ModelSpec(name, image_size=64))).to(memory_format=torch.channels_last)
    seen = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    if name == "seed-cnn-bn":
        model.features[5].register_forward_hook(lambda m, i, o: seen.append(o.shape))  # block 2's batch norm
    model(torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)).sum().backward()
    assert seen == [torch.Size([2, 8, 64, 64])] + ([torch.Size([2, 8, 32, 32])] if name == "seed-cnn-bn" else [])


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


# -- seed-cnn-bn: batch norm fused with the max-pool and ReLU, and folded into the first convolution ------
def _bn(c: int, seed: int = 0) -> torch.nn.BatchNorm2d:
    torch.manual_seed(seed)
    bn = torch.nn.BatchNorm2d(c)
    with torch.no_grad():  # a scale of either sign: the max-pool of a negative scale picks the minimum
        bn.weight.uniform_(-1, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


@needs_kernel
@pytest.mark.parametrize("c", [8, 12, 16, 50, 5])  # whole chunks of eight, a partial chunk, none specialised
def test_fused_batch_norm_pool_equals_aten_in_training(c):
    """Values, the map's, scale's and shift's gradients, and the running statistics, as ATen's batch norm,
    max-pool and ReLU compute them (fp32; ties from one-decimal values, a mean far from zero)."""
    torch.manual_seed(1)
    z0 = (torch.randn(4, c, 16, 12) * 3 + 5).round(decimals=1).contiguous(memory_format=torch.channels_last)
    ours, ref = z0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    bn = _bn(c)
    bn_ref = _copy(bn)
    y = cpu_kernels.bn_pool(ours, bn)
    y_ref = F.relu(F.max_pool2d(bn_ref(ref), 2))
    assert y is not None and "BatchNormPool" in type(y.grad_fn).__name__
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, y_ref, atol=2e-5)
    g = torch.randn(y.shape)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(ours.grad, ref.grad, atol=1e-5)
    assert torch.allclose(bn.weight.grad, bn_ref.weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(bn.bias.grad, bn_ref.bias.grad, rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(bn, name).float(), getattr(bn_ref, name).float(), rtol=1e-5), name


@needs_kernel
@pytest.mark.parametrize("c", [8, 12, 50])
def test_fused_batch_norm_pool_bf16_is_closer_to_exact_than_atens(c):
    """Under bf16 (autocast's convolution output) the forward is ATen's bit for bit; the gradients, summed
    in fp32/fp64, are closer to the exact (fp64) ones than ATen's bf16 batch norm's."""
    torch.manual_seed(2)
    z0 = (torch.randn(4, c, 16, 12) * 3 + 1).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    bns = [_bn(c), _bn(c), _bn(c).double()]
    zs = [z0.clone().requires_grad_(True), z0.clone().requires_grad_(True), z0.double().requires_grad_(True)]
    outs = [cpu_kernels.bn_pool(zs[0], bns[0])] + [F.relu(F.max_pool2d(b(z), 2)) for b, z in zip(bns[1:], zs[1:])]
    assert outs[0].dtype == torch.bfloat16 and torch.equal(outs[0], outs[1])
    g = torch.randn(outs[0].shape).to(torch.bfloat16)
    for out in outs:
        out.backward(g.to(out.dtype))

    def err(a, truth):
        return ((a.double() - truth).norm() / truth.norm()).item()

    assert err(zs[0].grad, zs[2].grad) < 0.005 and err(zs[0].grad, zs[2].grad) <= err(zs[1].grad, zs[2].grad)
    truth = bns[2].weight.grad
    assert err(bns[0].weight.grad, truth) < 1e-5 and err(bns[0].weight.grad, truth) <= err(bns[1].weight.grad, truth)


@needs_kernel
def test_fused_batch_norm_pool_in_evaluation_uses_the_running_statistics():
    z = torch.randn(3, 12, 8, 8).contiguous(memory_format=torch.channels_last)
    bn = _bn(12).eval()
    with torch.no_grad():
        y = cpu_kernels.bn_pool(z, bn)
        assert torch.allclose(y, F.relu(F.max_pool2d(bn(z), 2)), atol=1e-5)
    before = bn.running_mean.clone()
    assert torch.equal(bn.running_mean, before)
    # a gradient through evaluation-mode batch norm (not what training asks) is left to ATen's layers
    assert cpu_kernels.bn_pool(z.requires_grad_(True), bn) is None


@needs_kernel
def test_fused_batch_norm_pool_declines_what_it_does_not_take():
    bn = _bn(8)
    assert cpu_kernels.bn_pool(torch.randn(2, 8, 7, 8).contiguous(memory_format=torch.channels_last), bn) is None
    assert cpu_kernels.bn_pool(torch.randn(2, 8, 8, 8), bn) is None  # NCHW
    wide = torch.randn(2, 80, 8, 8).contiguous(memory_format=torch.channels_last)
    assert cpu_kernels.bn_pool(wide, torch.nn.BatchNorm2d(80)) is None  # more channels than the kernel holds
    assert cpu_kernels.bn_pool(torch.randn(2, 8, 8, 8, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last), bn) is None
    assert cpu_kernels.bn_pool(torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last),
                               torch.nn.BatchNorm2d(8, affine=False)) is None


@needs_kernel
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("shape", [(3, 20, 26), (2, 7, 9), (1, 4, 3)])
def test_patch_moments_equal_unfold(k, shape):
    """The first block's batch statistics come from the image's patch moments: checked against every
    'same'-padded patch, odd sizes and images smaller than the kernel included."""
    n, h, w = shape
    x = torch.randn(n, 1, h, w) + 0.7
    m = torch.empty(k * k, dtype=torch.float64)
    g = torch.empty(k * k, k * k, dtype=torch.float64)
    cpu_kernels._library().cxr_conv1_moments(x.data_ptr(), k, n, h, w, 0, m.data_ptr(), g.data_ptr(), 1)
    patches = F.unfold(x.double(), k, padding=k // 2).permute(1, 0, 2).reshape(k * k, -1)
    assert torch.allclose(m, patches.sum(1), rtol=1e-6, atol=1e-5)
    assert torch.allclose(g, patches @ patches.T, rtol=1e-6, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("k", [3, 5])
def test_folded_first_block_equals_conv_bn_pool_relu(k):
    """Training: output, the gradients of the convolution's weights and the batch norm's scale and shift,
    and the running statistics; evaluation: the output with the running statistics."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(1, 8, k, padding="same", bias=False)
    bn = _bn(8)
    conv_ref, bn_ref = _copy(conv), _copy(bn)
    x = torch.randn(3, 1, 20, 26) + 0.5
    y = cpu_kernels.conv1_bn_pool(x, conv, bn)
    y_ref = F.relu(F.max_pool2d(bn_ref(conv_ref(x)), 2))
    assert y is not None and torch.allclose(y, y_ref, atol=1e-5)
    g = torch.randn(y.shape)
    ours = torch.autograd.grad(y, [conv.weight, bn.weight, bn.bias], g)
    theirs = torch.autograd.grad(y_ref, [conv_ref.weight, bn_ref.weight, bn_ref.bias], g)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=2e-4) for a, b in zip(ours, theirs))
    assert torch.allclose(bn.running_var, bn_ref.running_var, rtol=1e-5)
    assert torch.allclose(bn.running_mean, bn_ref.running_mean, rtol=1e-5, atol=1e-7)
    bn.eval()
    bn_ref.eval()
    with torch.no_grad():
        assert torch.allclose(cpu_kernels.conv1_bn_pool(x, conv, bn), F.relu(F.max_pool2d(bn_ref(conv_ref(x)), 2)),
                              atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("size", [64, 96])  # 96: the last pooled map is 3x3 (odd), so that block falls back to ATen
def test_seed_cnn_bn_training_uses_the_kernels_and_matches_pytorch(monkeypatch, size):
    """Two fp32 training steps of seed-cnn-bn in channels_last, as the trainer runs it: every parameter's
    gradient and every running statistic equal those through PyTorch's operators."""
    from cxrlab.models import ModelSpec, create_model
    from cxrlab.training.device import training_memory_format

    calls = []
    for name in ("bn_pool", "conv1_bn_pool"):
        fused = getattr(cpu_kernels, name)
        monkeypatch.setattr(f"cxrlab.accel.{name}", lambda *a, _f=fused, _n=name, **k: calls.append(_n) or _f(*a, **k))
    torch.manual_seed(0)
    base = create_model(ModelSpec("seed-cnn-bn", image_size=size))
    results = []
    for lib in (cpu_kernels._library(), None):
        monkeypatch.setitem(cpu_kernels._state, "lib", lib)
        model = accelerate(_copy(base)).train()
        if lib is not None:
            assert training_memory_format(model, torch.device("cpu")) == torch.channels_last
        model = model.to(memory_format=torch.channels_last)  # ATen's side too: the same layout, compared
        grads = []
        for step in range(2):
            x = torch.randn(4, 1, size, size, generator=torch.Generator().manual_seed(step)) * 2 + 1
            model.zero_grad()
            torch.manual_seed(1)  # the same dropout mask
            model(x.contiguous(memory_format=torch.channels_last)).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        results.append((grads, {k: v.clone() for k, v in model.state_dict().items()}))
    assert {"bn_pool", "conv1_bn_pool"} <= set(calls)
    (g_fast, s_fast), (g_ref, s_ref) = results
    def close(a, b):  # fp32 rounding, relative to the tensor's scale (some gradients are near zero)
        return (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-5

    for a_step, b_step in zip(g_fast, g_ref):
        assert all(close(a, b) for a, b in zip(a_step, b_step))
    assert all(close(s_fast[k].float(), s_ref[k].float()) for k in s_ref)


@needs_kernel
def test_seed_cnn_bn_inference_matches_the_plain_model():
    from cxrlab.models import ModelSpec, create_model

    torch.manual_seed(0)
    model = create_model(ModelSpec("seed-cnn-bn", image_size=64))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(5, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fast = accelerate(_copy(model)).to(memory_format=torch.channels_last)
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)


def test_seed_cnn_bn_trains_in_channels_last_only_with_the_kernels(monkeypatch):
    """With the kernels, batch norm no longer needs NCHW (ATen's is slow in channels_last); without
    them, and for the plain model, the trainer keeps NCHW."""
    from cxrlab.models import ModelSpec, create_model
    from cxrlab.training.device import training_memory_format

    cpu = torch.device("cpu")
    model = create_model(ModelSpec("seed-cnn-bn", image_size=64))
    assert training_memory_format(model, cpu) == torch.contiguous_format
    if cpu_kernels._library() is not None:
        fast = accelerate(_copy(model))
        assert training_memory_format(fast, cpu) == torch.channels_last
        assert training_memory_format(plain(fast), cpu) == torch.contiguous_format
    monkeypatch.setitem(cpu_kernels._state, "lib", None)
    assert training_memory_format(accelerate(_copy(model)), cpu) == torch.contiguous_format
