"""What existing training code relies on: autocast, TorchScript, state and copies,
threads, memory and deterministic mode.

torch.export, AOTInductor and inductor are in test_export.py, DDP in
test_distributed.py, hostile inputs in test_fuzz.py.
"""
import copy
import io
import pickle
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_bitwise_equal,
    assert_matches,
    atrous_conv,
    conv_and_grads,
    random_conv_inputs,
    reference_conv,
    requires_cuda,
    seeded_randn,
)
from torch import nn

import atrous_cuda
from atrous_cuda import AtrousConv1d, AtrousConv2d, convert_model, revert_model

# ---------------------------------------------------------------- autocast --


def _autocast_run(conv, device, dtype, x, w, b, **kwargs):
    """Forward under autocast from float32 leaves, backward outside it (the usual
    training loop). Returns the output and the float32 gradients of x, w, b."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    with torch.autocast(device, dtype=dtype):
        out = conv(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves, seeded_randn(out.shape, out.dtype, seed=3, device=device))
    return out, grads


def _check_autocast_matches_torch(device, dtype):
    """Under autocast torch's conv casts input, weight and bias to the autocast
    dtype and runs there (accumulating in float32, rounding once); ours must do
    the same: same output dtype, and values within one 16-bit rounding of a
    float32 reference computed from the same rounded operands (conftest.tolerance).
    Gradients reach the float32 leaves through autocast's casts, so they are
    float32 holding 16-bit values."""
    kwargs = dict(stride=(1, 2), padding=(3, 2), dilation=(3, 2), groups=2)
    x, w, b = random_conv_inputs((2, 4, 11, 12), (6, 2, 3, 3), dtype=torch.float32, device=device)
    ours, our_grads = _autocast_run(atrous_conv, device, dtype, x, w, b, **kwargs)
    theirs, their_grads = _autocast_run(reference_conv, device, dtype, x, w, b, **kwargs)
    assert ours.dtype == theirs.dtype == dtype
    # The float32 reference on the operands autocast rounded.
    rounded = [t.to(dtype).float().requires_grad_() for t in (x, w, b)]
    ref = reference_conv(*rounded, **kwargs)
    ref_grads = torch.autograd.grad(ref, rounded, seeded_randn(ref.shape, dtype, seed=3, device=device).float())
    assert_matches(ours, ref.detach(), dtype, "output")
    assert_matches(theirs, ref.detach(), dtype, "torch's output")
    for name, g, g_torch, g_ref in zip(("input", "weight", "bias"), our_grads, their_grads, ref_grads):
        assert g.dtype == g_torch.dtype == torch.float32, name
        # Each gradient is computed in `dtype` (cast back to float32 by autograd),
        # so it is exactly representable in `dtype`.
        assert torch.equal(g.to(dtype).float(), g), name
        assert_matches(g.to(dtype), g_ref, dtype, f"grad_{name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_cpu_autocast_runs_in_autocast_dtype_like_torch(dtype):
    _check_autocast_matches_torch("cpu", dtype)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_cuda_autocast_runs_in_autocast_dtype_like_torch(dtype):
    _check_autocast_matches_torch("cuda", dtype)


def test_autocast_kernels_are_registered_for_cpu_and_cuda():
    """Checked in the dispatcher, so a machine without a GPU still sees the
    CUDA registration. conv_backward has none, as torch's convolution_backward:
    autocast falls through for it."""
    for key in ("AutocastCPU", "AutocastCUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("atrous::conv_forward", key), key
        assert not torch._C._dispatch_has_kernel_for_dispatch_key("atrous::conv_backward", key), key


def test_autocast_follows_the_current_dtype_and_leaves_float64_alone():
    """torch's lower_precision_fp policy: the dtype is the autocast region's
    (switching regions switches it), float64 tensors are not cast, and an
    autocast region for another device does nothing."""
    conv = AtrousConv2d(3, 4, 3, padding=2, dilation=2)
    x = seeded_randn((1, 3, 6, 6), torch.float32)
    for dtype in (torch.bfloat16, torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype):
            assert conv(x).dtype == nn.Conv2d.forward(conv, x).dtype == dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv64, x64 = copy.deepcopy(conv).double(), x.double()
        assert conv64(x64).dtype == torch.float64
        assert torch.equal(conv64(x64), atrous_cuda.atrous_conv2d(x64, conv64.weight, conv64.bias, padding=2, dilation=2))
    with torch.autocast("cuda", dtype=torch.float16, enabled=torch.cuda.is_available()):
        assert conv(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert conv(x).dtype == torch.float32


def test_autocast_module_padding_modes_and_conv1d():
    """Every module path (F.pad for padding modes, the 1-D reshape) reaches the op under autocast."""
    torch.manual_seed(0)
    for ours in (AtrousConv2d(3, 4, 3, padding=2, dilation=2, padding_mode="reflect"),
                 AtrousConv1d(3, 4, 2, padding="causal", dilation=4)):
        x = seeded_randn((2, 3, 9, 9) if isinstance(ours, AtrousConv2d) else (2, 3, 20), torch.float32)
        theirs = revert_model(ours) if ours.padding != "causal" else None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ours(x)
            expected = theirs(x) if theirs is not None else F.conv1d(F.pad(x, (4, 0)), ours.weight, ours.bias, dilation=4)
        assert out.dtype == expected.dtype == torch.bfloat16
        ref = (theirs.float() if theirs else None)
        rounded = [t.to(torch.bfloat16).float() for t in (x, ours.weight, ours.bias)]
        if ref is not None:
            ref = F.conv2d(F.pad(rounded[0], (2, 2, 2, 2), mode="reflect"), rounded[1], rounded[2], dilation=2)
        else:
            ref = F.conv1d(F.pad(rounded[0], (4, 0)), rounded[1], rounded[2], dilation=4)
        assert_matches(out, ref.detach(), torch.bfloat16)


# ------------------------------------------------------------- TorchScript --

# Every padding form and padding mode the modules take, 1-D and 2-D.
SCRIPT_CASES = {
    "int": (AtrousConv2d, dict(padding=2, dilation=2)),
    "same_strided": (AtrousConv2d, dict(padding="same", stride=2, dilation=3)),
    "asymmetric": (AtrousConv2d, dict(padding=(0, 1, 2, 3), dilation=2)),
    "valid_groups": (AtrousConv2d, dict(padding="valid", dilation=(1, 2), groups=3)),
    "reflect": (AtrousConv2d, dict(padding=(2, 1), dilation=2, padding_mode="reflect")),
    "same_strided_circular": (AtrousConv2d, dict(padding="same", stride=2, dilation=2, padding_mode="circular")),
    "conv1d_causal": (AtrousConv1d, dict(padding="causal", dilation=4)),
    "conv1d_replicate": (AtrousConv1d, dict(padding=3, dilation=3, padding_mode="replicate")),
    "conv1d_asymmetric": (AtrousConv1d, dict(padding=(1, 4), dilation=2)),
}


def _quiet_jit(fn, *args):
    with warnings.catch_warnings():
        # torch 2.14 deprecates torch.jit.script/save/load themselves; that warning is torch's, not ours.
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        return fn(*args)


def _script(module):
    return _quiet_jit(torch.jit.script, module)


@pytest.mark.parametrize("name", SCRIPT_CASES)
def test_torchscript_runs_atrous_op_and_matches_eager(name):
    """Decision: scripting works and keeps atrous_cuda's kernels (no fallback).
    The scripted graph calls atrous::conv_forward, and its results are
    bitwise those of eager mode, batched and unbatched, gradients included."""
    cls, kwargs = SCRIPT_CASES[name]
    torch.manual_seed(0)
    module = cls(3, 6, 3, **kwargs).double()
    scripted = _script(module)
    assert "atrous::conv_forward" in str(scripted.inlined_graph)
    x = seeded_randn((2, 3, 9, 10) if cls is AtrousConv2d else (2, 3, 17))
    assert torch.equal(scripted(x), module(x))
    assert torch.equal(scripted(x[0]), module(x[0]))
    eager = conv_and_grads(lambda x, w, b: module._conv_forward(x, w, b), x, module.weight, module.bias)
    script = conv_and_grads(lambda x, w, b: scripted._conv_forward(x, w, b), x, module.weight, module.bias)
    assert_bitwise_equal(script, eager)


def test_torchscript_model_saves_and_loads():
    torch.manual_seed(0)
    model = nn.Sequential(AtrousConv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(),
                          AtrousConv2d(4, 2, 3, padding="same", stride=2, dilation=2)).double().eval()
    buffer = io.BytesIO()
    _quiet_jit(torch.jit.save, _script(model), buffer)
    buffer.seek(0)
    loaded = _quiet_jit(torch.jit.load, buffer)
    x = seeded_randn((1, 3, 10, 10))
    assert torch.equal(loaded(x), model(x))


# -------------------------------------------------------- state and copies --


def test_state_dict_round_trips_between_torch_and_atrous_modules():
    """Both directions, 1-D and 2-D: the same keys and values, the same results."""
    for torch_cls, atrous_cls, shape in ((nn.Conv2d, AtrousConv2d, (2, 3, 9, 8)), (nn.Conv1d, AtrousConv1d, (2, 3, 15))):
        torch.manual_seed(1)
        theirs = torch_cls(3, 4, 3, padding=2, dilation=2).double()
        ours = atrous_cls(3, 4, 3, padding=2, dilation=2).double()
        ours.load_state_dict(theirs.state_dict())
        x = seeded_randn(shape)
        assert_matches(ours(x), theirs(x).detach())
        again = torch_cls(3, 4, 3, padding=2, dilation=2).double()
        again.load_state_dict(ours.state_dict())
        for key, value in theirs.state_dict().items():
            assert torch.equal(again.state_dict()[key], value), key


def _trained_module():
    torch.manual_seed(0)
    conv = AtrousConv2d(3, 4, 3, stride=2, padding="same", dilation=2, padding_mode="reflect").double()
    return conv


def _assert_same_module(copy_, original):
    assert type(copy_) is type(original)
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "training"):
        assert getattr(copy_, attr) == getattr(original, attr), attr
    for (name, p), (name2, q) in zip(copy_.named_parameters(), original.named_parameters()):
        assert name == name2 and p is not q and torch.equal(p, q), name
    x = seeded_randn((1, 3, 9, 9))
    assert torch.equal(copy_(x), original(x))


def test_torch_save_and_load_whole_module():
    conv = _trained_module()
    buffer = io.BytesIO()
    torch.save(conv, buffer)
    buffer.seek(0)
    _assert_same_module(torch.load(buffer, weights_only=False), conv)


def test_plain_pickle_and_deepcopy():
    conv = _trained_module().eval()
    _assert_same_module(pickle.loads(pickle.dumps(conv)), conv)
    _assert_same_module(copy.deepcopy(conv), conv)


def test_to_dtype_and_memory_format():
    torch.manual_seed(0)
    conv = AtrousConv2d(3, 4, 3, padding=2, dilation=2)
    x = seeded_randn((2, 3, 7, 7))
    conv64 = copy.deepcopy(conv).to(torch.float64)
    assert conv64.weight.dtype == torch.float64
    assert_matches(conv64(x), F.conv2d(x, conv64.weight, conv64.bias, padding=2, dilation=2))
    conv_cl = copy.deepcopy(conv64).to(memory_format=torch.channels_last)
    assert conv_cl.weight.is_contiguous(memory_format=torch.channels_last)
    out = conv_cl(x)
    # torch's rule: a channels_last weight makes the output channels_last.
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches(out, conv64(x))
    conv_cpu = copy.deepcopy(conv).to("cpu", torch.bfloat16)
    assert conv_cpu(x.bfloat16()).dtype == torch.bfloat16


@requires_cuda
@pytest.mark.cuda
def test_to_cuda_device_and_back():
    torch.manual_seed(0)
    conv = AtrousConv2d(3, 4, 3, padding=2, dilation=2).double()
    x = seeded_randn((2, 3, 7, 7))
    on_gpu = copy.deepcopy(conv).to("cuda")
    assert on_gpu.weight.device.type == "cuda"
    assert_matches(on_gpu(x.cuda()).cpu(), conv(x))
    assert torch.equal(on_gpu.to("cpu").weight, conv.weight)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_convert_then_revert_is_lossless(training):
    """Parameters and buffers (the very same objects), every kind of hook,
    the training flag of every module and the outputs all survive the round trip."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.Dropout(0.5)).double()
    model.train(training)
    model[3].train(not training)  # a mixed tree, too
    calls = []
    model[0].register_forward_pre_hook(lambda m, i: calls.append("pre"))
    model[0].register_forward_hook(lambda m, i, o: calls.append("forward"))
    model[0].register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    model[0].register_state_dict_post_hook(lambda m, sd, prefix, local: calls.append("state_dict"))
    before = {name: (m.training, dict(m._forward_pre_hooks), dict(m._forward_hooks), dict(m._backward_hooks))
              for name, m in model.named_modules()}
    converted = convert_model(model, convert_all=True)
    assert [type(m) for m in converted.modules()][1:] == [
        AtrousConv2d, nn.BatchNorm2d, nn.ReLU, AtrousConv2d, nn.Dropout]  # it did convert
    round_trip = revert_model(converted)
    assert [type(m) for m in round_trip.modules()] == [type(m) for m in model.modules()]
    assert type(round_trip[0]) is nn.Conv2d and type(round_trip[3]) is nn.Conv2d
    for (name, p), (name2, q) in zip(model.named_parameters(), round_trip.named_parameters()):
        assert name == name2 and p is q, name
    for (name, p), (name2, q) in zip(model.named_buffers(), round_trip.named_buffers()):
        assert name == name2 and p is q, name
    after = {name: (m.training, dict(m._forward_pre_hooks), dict(m._forward_hooks), dict(m._backward_hooks))
             for name, m in round_trip.named_modules()}
    assert after == before
    round_trip.state_dict()
    x = seeded_randn((2, 3, 6, 6)).requires_grad_()
    torch.manual_seed(5)  # dropout
    round_trip(x).sum().backward()
    assert calls == ["state_dict", "pre", "forward", "backward"]


# ----------------------------------------------------------------- threads --


def test_concurrent_calls_from_python_threads():
    """Several Python threads calling forward and backward at once (different
    shapes, so they share no state) get bitwise the results of serial calls:
    the kernels are deterministic and keep no global scratch state."""
    configs = [
        ((2, 6, 17, 15), (10, 6, 3, 3), dict(padding=2, dilation=2)),
        ((2, 8, 16, 13), (8, 4, 3, 3), dict(padding="same", stride=2, dilation=3, groups=2)),
        ((3, 6, 16, 16), (12, 1, 3, 3), dict(padding=(2, 1), dilation=(2, 1), groups=6)),
        ((4, 5, 300), (7, 5, 2), dict(padding="causal", dilation=8)),
    ]
    inputs = [random_conv_inputs(xs, ws, dtype=torch.float32, seed=i) for i, (xs, ws, _) in enumerate(configs)]
    serial = [conv_and_grads(atrous_conv, *inp, **cfg[2]) for inp, cfg in zip(inputs, configs)]
    rounds = 6
    results, errors = {}, []
    barrier = threading.Barrier(len(configs))

    def worker(i):
        try:
            barrier.wait()
            results[i] = [conv_and_grads(atrous_conv, *inputs[i], **configs[i][2]) for _ in range(rounds)]
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, runs in results.items():
        for run in runs:
            assert_bitwise_equal(run, serial[i])


# ------------------------------------------------------------------ memory --


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_repeated_forward_backward_does_not_grow_memory():
    """100 forward+backward calls after a warm-up grow RSS by less than 4 MiB.

    Every output and gradient of input here is 1*8*48*48 float32 = 72 KiB, so
    leaking any one of them (or the kernels' packing buffers, larger still)
    on each call adds >= 7 MiB over the loop; the 4 MiB slack covers
    allocator noise (glibc arenas, the autograd graph's small objects)."""
    torch.manual_seed(0)
    conv = AtrousConv2d(8, 8, 3, padding=4, dilation=4)
    x = seeded_randn((1, 8, 48, 48), torch.float32).requires_grad_()

    def step():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).square().mean().backward()

    for _ in range(20):
        step()
    before = _rss_bytes()
    for _ in range(100):
        step()
    grown = _rss_bytes() - before
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 100 forward+backward calls"


# ------------------------------------------------------------- determinism --


def test_deterministic_mode_keeps_working_and_is_bitwise_reproducible():
    """The ops never call torch's nondeterminism alert (every reduction runs in a
    fixed order), so they run under use_deterministic_algorithms(True), and two
    runs of a small training step are bitwise equal."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            model = nn.Sequential(AtrousConv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(),
                                  AtrousConv2d(8, 4, 3, padding="same", stride=2, dilation=3, groups=4))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            x = seeded_randn((4, 3, 13, 13), torch.float32)
            for _ in range(3):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
            runs.append([p.detach().clone() for p in model.parameters()])
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
