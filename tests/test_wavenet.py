"""WaveNet (atrous_cuda.models.WaveNet) and its ops: the gated activation unit,
causality, incremental generation (step, generate) that equals the forward
bitwise on the CPU, the generation state, misuse reported by argument name,
the torch fallback path (16-bit models, CUDA).

Every model here is tiny (a few channels, 8 blocks), so the whole file runs in
seconds. `_lively` gives a model large random weights, so that greedy
generation does not settle on one class at once and the comparisons below
compare something.
"""
import contextlib
import math
import re

import pytest
import torch
from conftest import CPU_ISAS, seeded_randn, use_cpu_isa
from torch import nn

import atrous_cuda.models.wavenet as wavenet_module
from atrous_cuda import AtrousConv1d, AtrousConv2d, AtrousConvTranspose2d
from atrous_cuda._wavenet_ops import gated_activation, wavenet_generate, wavenet_step
from atrous_cuda.models import WaveNet
from atrous_cuda.models.wavenet import WaveNetState, mu_law_decode

_ATROUS_CONVS = (AtrousConv1d, AtrousConv2d, AtrousConvTranspose2d)

gate_op = torch.ops.atrous.gated_activation.default


# ----------------------------------------------------------------- helpers --


def _small_wavenet(kernel_size=2, dilations=(1, 2, 4, 8), dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    return WaveNet(2, 3, residual_channels=5, gate_channels=6, skip_channels=7, dilations=dilations,
                   stacks=2, kernel_size=kernel_size, **kwargs).to(dtype)


def _lively(model, seed=4, gain=3.0):
    """Seeded N(0, gain^2 / fan_in) parameters: outputs that depend strongly on the recent inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_((torch.randn(p.shape, generator=g, dtype=torch.float64) * gain / fan_in ** 0.5).to(p.dtype))
    return model


def _classes_wavenet(classes=4, in_channels=None, dtype=torch.float64, seed=4, gain=3.0, dilations=(1, 2, 4, 8),
                     **kwargs):
    """A model whose output classes are fed back: in_channels = classes unless given."""
    model = WaveNet(classes if in_channels is None else in_channels, classes, residual_channels=5, gate_channels=6,
                    skip_channels=7, dilations=dilations, stacks=2, **kwargs)
    return _lively(model, seed, gain).to(dtype)


def _assert_every_conv_is_atrous(model):
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert convs, "no conv in the model"
    plain = [type(m).__name__ for m in convs if type(m) not in _ATROUS_CONVS]
    assert not plain, f"convs not on the atrous kernels: {plain}"


def _conditioned_case(model, n, length, frames, seeds):
    """Seeded inputs (n, in, length), local frames (n, local, frames) and a global vector for a
    conditioned model, the upsampled features, and forward's output on them."""
    dtype = model.input_conv.weight.dtype
    x = seeded_randn((n, model.in_channels, length), dtype=dtype, seed=seeds[0])
    local = seeded_randn((n, model.local_channels, frames), dtype=dtype, seed=seeds[1])
    glob = seeded_randn((n, model.global_channels), dtype=dtype, seed=seeds[2])
    with torch.no_grad():
        return x, local, glob, model.upsample_conditioning(local), model(x, local, glob)


def _assert_bitwise(actual, expected, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert torch.equal(actual, expected), \
        f"{what}: max difference {(actual.double() - expected.double()).abs().max().item()}"


def _one_hot_inputs(classes, batch, length, seed=0, dtype=torch.float64):
    """Teacher-forcing inputs (batch, classes, length): one-hot rows of random classes."""
    k = torch.randint(classes, (batch, length), generator=torch.Generator().manual_seed(seed))
    return torch.eye(classes, dtype=dtype)[k].permute(0, 2, 1).contiguous()


@contextlib.contextmanager
def _one_thread():
    """For the reference loops only: forward's results do not depend on the thread count, and
    hundreds of tiny parallel regions cost milliseconds each on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _greedy_by_hand(model, steps, table, first_input, prime=None, frames=None, glob=None):
    """Argmax decoding with forward: X = [prime, first_input]; repeat: logits = model(X)[:, :, -1],
    k = argmax, append table[k]. Returns the classes (N, steps)."""
    x = first_input.unsqueeze(2)
    if prime is not None:
        x = torch.cat([prime, x], dim=2)
    out = []
    with _one_thread():
        for _ in range(steps):
            logits = model(x, frames, glob)[:, :, -1]
            k = logits.argmax(dim=1)
            out.append(k)
            x = torch.cat([x, table[k].unsqueeze(2)], dim=2)
    return torch.stack(out, dim=1)


def _assert_not_constant(samples):
    assert len(set(samples.flatten().tolist())) > 1, f"degenerate test: every sample is {samples.flatten()[0]}"


# -------------------------------------------------------- gated activation --


def _gate_reference(pre):
    """tanh(filter) * sigmoid(gate) in float64."""
    f, g = pre.double().chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def _wide_gate_input(dtype, shape=(3, 2 * 40, 67)):
    """Random pre-activations over a wide range; every pair of values at the kernel's branch
    points (|f| around 2^-9, 10 and 20, |g| around 110, tiny and subnormal values); and a sweep
    of f over [-25, 25] against g over [120, -120]."""
    pre = seeded_randn(shape, seed=3) * 4
    special = torch.tensor([0.0, 2.0 ** -9, 2.0 ** -9 * (1 - 2 ** -20), 2.0 ** -9 * (1 + 2 ** -20), 1e-3, 0.5, 1.0,
                            9.99, 10.0, 10.01, 19.99, 20.0, 20.01, 109.9, 110.0, 110.1, 1e-30, 1e-40, 3.0, 88.0,
                            89.0])
    special = torch.cat([special, -special])
    f, g = torch.meshgrid(special, special, indexing="ij")
    count = f.numel()
    flat = pre.view(shape[0], 2, shape[1] // 2, -1)
    flat[0, 0].view(-1)[:count] = f.flatten()
    flat[0, 1].view(-1)[:count] = g.flatten()
    sweep = flat[1, 0].numel()
    flat[1, 0].view(-1)[:] = torch.linspace(-25, 25, sweep, dtype=torch.float64)
    flat[1, 1].view(-1)[:] = torch.linspace(120, -120, sweep, dtype=torch.float64)
    return pre.to(dtype)


def test_gated_activation_float32_is_correctly_rounded_to_an_ulp():
    pre = _wide_gate_input(torch.float32)
    z = gated_activation(pre)
    assert z.dtype == torch.float32 and z.shape == (3, 40, 67)
    ref = _gate_reference(pre)
    rounded = ref.float()
    ulp = (torch.nextafter(rounded.abs(), torch.tensor(math.inf)) - rounded.abs()).double()
    ulps = ((z.double() - ref).abs() / ulp).max().item()
    assert ulps <= 1.0, f"error up to {ulps} ulp"
    normal = ref.abs() >= torch.finfo(torch.float32).tiny
    rel = ((z.double() - ref).abs()[normal] / ref.abs()[normal]).max().item()
    assert rel <= 2e-7, f"relative error {rel}"
    # About half an ulp: nearly every value is the float64 value rounded once.
    assert (z == rounded).double().mean().item() > 0.999


def test_gated_activation_float64_is_within_1e_15():
    pre = _wide_gate_input(torch.float64)
    z = gated_activation(pre)
    assert z.dtype == torch.float64
    torch.testing.assert_close(z, _gate_reference(pre), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gated_activation_16_bit_is_float32_rounded_once(dtype):
    pre = (seeded_randn((2, 8, 33), seed=5) * 3).to(dtype)
    z = gated_activation(pre)
    assert z.dtype == dtype and z.shape == (2, 4, 33)
    # Widened to float32, evaluated, rounded back once.
    _assert_bitwise(z, gated_activation(pre.float()).to(dtype), "16-bit vs float32 rounded")
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    torch.testing.assert_close(z.double(), _gate_reference(pre), rtol=u, atol=u * 1e-3)


def test_gated_activation_any_rank_and_non_contiguous_input():
    pre = seeded_randn((2, 6, 4, 5))
    ref = _gate_reference(pre)
    torch.testing.assert_close(gated_activation(pre), ref, rtol=0, atol=1e-15)
    torch.testing.assert_close(gated_activation(pre.transpose(2, 3)), ref.transpose(2, 3), rtol=0, atol=1e-15)
    two_d = seeded_randn((3, 10))
    torch.testing.assert_close(gated_activation(two_d), _gate_reference(two_d), rtol=0, atol=1e-15)
    assert gated_activation(torch.empty(0, 4, 3)).shape == (0, 2, 3)


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_gated_activation_value_does_not_depend_on_its_position(isa, restore_cpu_isa):
    """A one-column call (a step) equals the same column of a long call (the forward) bitwise,
    and a prefix of a row equals the prefix of the longer row: the vector tails agree."""
    use_cpu_isa(isa)
    pre = _wide_gate_input(torch.float32, (2, 2 * 27, 67))
    full = gated_activation(pre)
    for j in range(pre.shape[2]):
        _assert_bitwise(gated_activation(pre[:, :, j:j + 1].contiguous()), full[:, :, j:j + 1], f"column {j}")
    for length in (1, 2, 7, 8, 9, 15, 16, 17, 31, 33):
        _assert_bitwise(gated_activation(pre[:, :, :length].contiguous()), full[:, :, :length], f"prefix {length}")
    # (N, 2G) rows: the step's layout, channels contiguous.
    _assert_bitwise(gated_activation(pre[:, :, 11].contiguous()), full[:, :, 11], "2-D")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gated_activation_nan_inf_and_signed_zero(dtype):
    inf, nan = math.inf, math.nan
    # (filter, gate, tanh(filter) * sigmoid(gate))
    cases = [
        (nan, 0.0, nan), (0.0, nan, nan), (nan, inf, nan), (inf, nan, nan), (nan, -inf, nan), (-inf, nan, nan),
        (inf, 0.0, 0.5), (-inf, 0.0, -0.5),        # tanh(+-inf) = +-1
        (inf, inf, 1.0), (-inf, inf, -1.0),         # sigmoid(inf) = 1
        (inf, -inf, 0.0), (-inf, -inf, -0.0),       # sigmoid(-inf) = 0
        (0.0, 3.0, 0.0), (-0.0, 3.0, -0.0), (-0.0, -inf, -0.0), (0.0, inf, 0.0), (-0.0, inf, -0.0),
        (1e30, 1e30, 1.0), (-1e30, 1e30, -1.0), (1e30, -1e30, 0.0), (-1e30, -1e30, -0.0),
        (50.0, 0.0, 0.5), (-50.0, 0.0, -0.5), (0.0, -200.0, 0.0),
    ]
    f = torch.tensor([c[0] for c in cases], dtype=dtype)
    g = torch.tensor([c[1] for c in cases], dtype=dtype)
    z = gated_activation(torch.stack([f, g]).unsqueeze(0))[0, 0]
    for i, (fi, gi, e) in enumerate(cases):
        got = z[i].item()
        if math.isnan(e):
            assert math.isnan(got), f"gate({fi}, {gi}) = {got}, expected NaN"
        else:
            assert got == e and math.copysign(1, got) == math.copysign(1, e), \
                f"gate({fi}, {gi}) = {got!r}, expected {e!r}"
    # Finite values next to the limits: tanh(2) * sigmoid(+-inf).
    z = gated_activation(torch.tensor([[[2.0, 2.0], [inf, -inf]]], dtype=dtype))[0, 0]
    assert z[0].item() == pytest.approx(math.tanh(2.0), rel=2e-7) and z[1].item() == 0.0
    # A NaN or an infinity stays in its own element: its neighbours in the vector are unchanged.
    pre = seeded_randn((1, 2, 21), dtype=dtype, seed=4)
    clean = gated_activation(pre)
    for j, value in ((3, nan), (8, inf), (17, -inf)):
        for half in (0, 1):
            spoiled = pre.clone()
            spoiled[0, half, j] = value
            z = gated_activation(spoiled)
            others = [i for i in range(21) if i != j]
            _assert_bitwise(z[..., others], clean[..., others], f"neighbours of {value} at {j}")


def test_gated_activation_gradcheck_and_gradgradcheck_in_float64():
    pre = (seeded_randn((2, 6, 5)) * 2).requires_grad_()
    assert torch.autograd.gradcheck(gated_activation, (pre,))
    assert torch.autograd.gradgradcheck(gated_activation, (pre,))
    assert torch.autograd.gradcheck(gate_op, (pre,))


def test_gated_activation_passes_opcheck():
    torch.library.opcheck(gate_op, (seeded_randn((2, 6, 5)).requires_grad_(),))
    torch.library.opcheck(gate_op, (seeded_randn((3, 4, 2, 3), dtype=torch.float32),))


def test_gated_activation_fake_kernel_shape_on_meta():
    assert gate_op(torch.empty(2, 6, 5, device="meta")).shape == (2, 3, 5)
    with pytest.raises(RuntimeError, match="gated_activation: expected pre with an even number of channels, got 5"):
        gate_op(torch.empty(2, 5, 5, device="meta"))


def test_gated_activation_errors_name_the_argument():
    with pytest.raises(RuntimeError, match=r"gated_activation: expected pre with an even number of channels .*got 5"):
        gated_activation(torch.zeros(2, 5, 3))
    with pytest.raises(RuntimeError, match=r"gated_activation: expected pre of at least 2 dimensions .*got 1-D"):
        gated_activation(torch.zeros(6))
    with pytest.raises(RuntimeError, match="gated_activation: expected a floating-point pre, got Long"):
        gated_activation(torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="gated_activation: expected pre to be a tensor, got list"):
        gated_activation([[0.0, 0.0]])


@pytest.mark.cuda
def test_gated_activation_on_cuda_equals_the_formula(cuda):
    pre = seeded_randn((2, 6, 7), dtype=torch.float32, device=cuda)
    torch.testing.assert_close(gated_activation(pre).double().cpu(), _gate_reference(pre.cpu()),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"gated_activation: expected pre \(N, 2\*G, ...\) with an even number"):
        gated_activation(torch.zeros(2, 5, 3, device=cuda))


# ----------------------------------------------------------------- WaveNet --


def test_wavenet_default_is_dilations_1_to_512_repeated():
    model = WaveNet(1, 4, residual_channels=2, gate_channels=2, skip_channels=2)
    assert [b.conv.dilation[0] for b in model.blocks] == [2 ** i for i in range(10)] * 2
    assert model.receptive_field == 1 + 2 * 1023
    _assert_every_conv_is_atrous(model)


def test_wavenet_shapes_and_gradients():
    model = _small_wavenet()
    x = seeded_randn((2, 2, 50)).requires_grad_()
    y = model(x)
    assert y.shape == (2, 3, 50)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # The last block's residual output feeds nothing (only skips reach the output).
    unused = {f"blocks.{len(model.blocks) - 1}.residual.{p}" for p in ("weight", "bias")}
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name in unused), name


@pytest.mark.parametrize("kernel_size,dilations", [(2, (1, 2, 4, 8)), (3, (1, 3, 9))])
def test_wavenet_is_causal(kernel_size, dilations):
    model = _small_wavenet(kernel_size, dilations)
    x = seeded_randn((2, 2, 60))
    t0 = 37
    changed = x.clone()
    changed[:, :, t0:] = seeded_randn((2, 2, 60 - t0), seed=9)
    with torch.no_grad():
        y, y_changed = model(x), model(changed)
    assert torch.equal(y[:, :, :t0], y_changed[:, :, :t0])
    assert not torch.equal(y[:, :, t0], y_changed[:, :, t0])


@pytest.mark.parametrize("kernel_size,dilations", [(2, (1, 2, 4, 8)), (3, (1, 3, 9))])
def test_wavenet_receptive_field_is_exactly_the_past_it_reads(kernel_size, dilations):
    """The gradient of output t is non-zero exactly on inputs t - receptive_field + 1 .. t."""
    model = _small_wavenet(kernel_size, dilations)
    length, t = 80, 70
    x = seeded_randn((1, 2, length)).requires_grad_()
    model(x)[0, :, t].sum().backward()
    reached = (x.grad[0].abs().sum(0) > 0).nonzero().flatten().tolist()
    assert reached == list(range(t - model.receptive_field + 1, t + 1))


def test_wavenet_conditioning_is_causal_in_the_upsampled_features():
    """Output t reads the local features of samples <= t only: frame f covers samples 3f .. 3f+2."""
    model = _small_wavenet(local_channels=4, upsample_factor=3, global_channels=2)
    x, frames, g = seeded_randn((2, 2, 30)), seeded_randn((2, 4, 10), seed=1), seeded_randn((2, 2), seed=2)
    changed = frames.clone()
    changed[:, :, 6:] += 1.0  # samples 18 ..
    with torch.no_grad():
        y, y_changed = model(x, frames, g), model(x, changed, g)
    assert torch.equal(y[:, :, :18], y_changed[:, :, :18])
    assert not torch.equal(y[:, :, 18], y_changed[:, :, 18])


# ----------------------------------------------------------- step exactness --


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel_size,dilations", [(2, (1, 2, 4, 8)), (3, (1, 3))])
def test_wavenet_step_by_step_equals_forward_bitwise(dtype, kernel_size, dilations):
    model = _small_wavenet(kernel_size, dilations, dtype)
    length = 40  # past the receptive field (31 and 17), so the ring buffers wrap
    x = seeded_randn((3, 2, length), dtype=dtype)
    with torch.no_grad():
        full = model(x)
    model.reset_state(3)
    steps = torch.stack([model.step(x[:, :, t]) for t in range(length)], dim=2)
    assert torch.equal(steps, full), f"max difference {(steps - full).abs().max().item()}"
    # reset_state starts over.
    model.reset_state(3)
    assert torch.equal(model.step(x[:, :, 0]), full[:, :, 0])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel_size,dilations", [(2, (1, 2, 4, 8)), (3, (1, 3)), (3, (2, 5))])
def test_wavenet_steps_in_any_chunks_equal_forward_bitwise(batch, dtype, kernel_size, dilations):
    model = _lively(_small_wavenet(kernel_size, dilations, dtype), seed=1, gain=2.0).to(dtype)
    length = 45  # past every receptive field here (31, 17, 29): the rings wrap
    x = seeded_randn((batch, 2, length), dtype=dtype, seed=batch)
    with torch.no_grad():
        full = model(x)
    for chunks in ([1] * length, [17, length - 17], [length], [1, 2, 3, 5, 8, 13, 13]):
        model.reset_state(batch)
        outs, t = [], 0
        for size in chunks:
            out = model.step(x[:, :, t:t + size])
            assert out.shape == (batch, 3, size)
            outs.append(out)
            t += size
        assert model.state.t == length
        _assert_bitwise(torch.cat(outs, dim=2), full, f"chunks {chunks}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("upsample", ["repeat", "transposed"])
def test_wavenet_conditioned_steps_equal_forward_bitwise(dtype, upsample):
    model = _lively(_small_wavenet(local_channels=4, upsample_factor=3, upsample=upsample, global_channels=2),
                    seed=2, gain=2.0).to(dtype)
    length, n = 40, 3
    x = seeded_randn((n, 2, length), dtype=dtype)
    frames = seeded_randn((n, 4, 14), dtype=dtype, seed=1)  # 42 samples >= 40
    g = seeded_randn((n, 2), dtype=dtype, seed=2)
    with torch.no_grad():
        full = model(x, frames, g)
        features = model.upsample_conditioning(frames)
    assert features.shape == (n, 4, 42)
    model.reset_state(n)
    steps = torch.stack([model.step(x[:, :, t], features[:, :, t], g) for t in range(length)], dim=2)
    _assert_bitwise(steps, full, "one step per call")
    model.reset_state(n)
    steps = torch.cat([model.step(x[:, :, :17], features[:, :, :17], g),
                       model.step(x[:, :, 17:], features[:, :, 17:length], g)], dim=2)
    _assert_bitwise(steps, full, "17 steps, then the rest")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("isa", CPU_ISAS)
def test_wavenet_steps_equal_forward_bitwise_on_every_cpu_isa(isa, dtype, restore_cpu_isa):
    """The step op follows the GEMM's instruction set (the gate too): forward and steps agree on each."""
    use_cpu_isa(isa)
    model = _lively(_small_wavenet(local_channels=4, upsample_factor=3, global_channels=2), seed=3,
                    gain=2.0).to(dtype)
    length, n = 37, 2
    x, frames, g, features, full = _conditioned_case(model, n, length, frames=13, seeds=(0, 1, 2))
    model.reset_state(n)
    steps = torch.stack([model.step(x[:, :, t], features[:, :, t], g) for t in range(length)], dim=2)
    _assert_bitwise(steps, full, f"{isa}, one step per call")
    model.reset_state(n)
    steps = torch.cat([model.step(x[:, :, :17], features[:, :, :17], g),
                       model.step(x[:, :, 17:], features[:, :, 17:length], g)], dim=2)
    _assert_bitwise(steps, full, f"{isa}, 17 steps then the rest")


def test_wavenet_state_is_one_tensor_of_every_layers_ring():
    model = _small_wavenet(3, (1, 3))
    model.reset_state(2)
    # Histories (k-1)*d = 2, 6, 2, 6 slots of (batch, residual channels).
    assert tuple(model.state.buffers.shape) == (16, 2, 5)
    assert model.state.t == 0 and model.state.batch_size == 2


def test_wavenet_kernel_size_1_has_no_ring():
    model = _small_wavenet(1, (1, 2))
    model.reset_state(2)
    assert tuple(model.state.buffers.shape) == (0, 2, 5) and model.receptive_field == 1
    x = seeded_randn((2, 2, 6))
    _assert_bitwise(model.step(x), model(x).detach(), "kernel_size 1")


# ------------------------------------------------------ threads of a step --
#
# The tiny models above have one panel of gates, so their steps run on one
# thread. These have several: with 2 threads a batch of 1-3 runs on a team
# that shares the columns of every product (barriers between the phases),
# and a batch of 4 or more on threads that share the rows.


def _wide_wavenet(dtype):
    model = WaveNet(4, 4, residual_channels=20, gate_channels=40, skip_channels=24, dilations=(1, 2, 4), stacks=2,
                    local_channels=3, upsample_factor=2, global_channels=2)
    return _lively(model, seed=7, gain=3.0).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_wavenet_steps_on_two_threads_equal_forward_bitwise(two_threads, dtype, batch):
    model = _wide_wavenet(dtype)
    length = 23
    x, frames, glob, features, full = _conditioned_case(model, batch, length, frames=12, seeds=(0, 3, 5))
    model.reset_state(batch)
    one_call = model.step(x, features[:, :, :length], glob)
    _assert_bitwise(one_call, full, f"one call, batch {batch}")
    model.reset_state(batch)
    per_step = torch.stack([model.step(x[:, :, t], features[:, :, t], glob) for t in range(length)], dim=2)
    _assert_bitwise(per_step, full, f"one step a call, batch {batch}")


@pytest.mark.parametrize("batch", [2, 5])
def test_wavenet_greedy_generate_on_two_threads_equals_argmax_of_forward(two_threads, batch):
    model = _wide_wavenet(torch.float64)
    frames = seeded_randn((batch, 3, 15), dtype=torch.float64, seed=3)
    glob = seeded_randn((batch, 2), dtype=torch.float64, seed=5)
    model.reset_state(batch)
    samples = model.generate(30, greedy=True, local_conditioning=frames, global_conditioning=glob)
    _assert_not_constant(samples)
    expected = _greedy_by_hand(model, 30, torch.eye(4, dtype=torch.float64),
                               torch.zeros(batch, 4, dtype=torch.float64), frames=frames, glob=glob)
    assert torch.equal(samples, expected)


@pytest.mark.parametrize("batch", [2, 3])
def test_wavenet_sampling_on_a_two_thread_team_equals_one_thread(batch):
    """At a batch of 2-3 the team's members draw the classes of their own rows
    and meet before feeding them back; a member that fed back a row's class
    before its owner had drawn it would take the previous step's class. 64
    classes at temperature 1 keep the draws slow and the sequences long enough
    for a skew between the members to show (with that meeting dropped, one of
    the two batches failed in each of 3 runs)."""
    torch.manual_seed(0)
    model = WaveNet(64, 64, residual_channels=32, gate_channels=48, skip_channels=32, dilations=(1, 2, 4, 8),
                    stacks=2)
    model = _lively(model, seed=11, gain=2.0).float()
    first = torch.zeros(batch, 64)
    first[:, 0] = 1

    def sample(threads):
        saved = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            model.reset_state(batch)
            return model.generate(600, first, generator=torch.Generator().manual_seed(5))
        finally:
            torch.set_num_threads(saved)

    one = sample(1)
    _assert_not_constant(one)
    _assert_bitwise(sample(2), one, f"two threads, batch {batch}")


# ---------------------------------------------------------------- generate --


def test_mu_law_decode_spans_minus_one_to_one_symmetrically():
    values = mu_law_decode(torch.arange(256))
    assert values[0].item() == pytest.approx(-1.0, abs=1e-15) and values[255].item() == pytest.approx(1.0, abs=1e-15)
    assert (values[1:] > values[:-1]).all()
    torch.testing.assert_close(values, -values.flip(0), rtol=0, atol=1e-15)


@pytest.mark.parametrize("batch", [1, 3])
def test_wavenet_greedy_generate_one_hot_equals_argmax_of_forward(batch):
    model = _classes_wavenet()
    table = torch.eye(4, dtype=torch.float64)
    model.reset_state(batch)
    samples = model.generate(40, greedy=True)
    assert samples.dtype == torch.int64 and samples.shape == (batch, 40)
    _assert_not_constant(samples)
    expected = _greedy_by_hand(model, 40, table, torch.zeros(batch, 4, dtype=torch.float64))
    _assert_bitwise(samples, expected, "greedy classes")
    assert model.state.t == 40
    _assert_bitwise(model.state.next_input, table[samples[:, -1]], "next_input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wavenet_greedy_generate_from_a_first_input_per_sequence(dtype):
    model = _classes_wavenet(dtype=dtype)
    table = torch.eye(4, dtype=dtype)
    first = table[torch.tensor([0, 1, 2, 3])]
    model.reset_state(4)
    samples = model.generate(35, first, greedy=True)
    _assert_bitwise(samples, _greedy_by_hand(model, 35, table, first), "greedy classes")
    assert not torch.equal(samples[0], samples[1]) or not torch.equal(samples[2], samples[3])


def test_wavenet_greedy_generate_mu_law_equals_argmax_of_forward():
    model = _classes_wavenet(classes=8, in_channels=1, seed=0)
    table = mu_law_decode(torch.arange(8), 8).unsqueeze(1)
    model.reset_state(2)
    first = torch.tensor([[0.0], [0.7]], dtype=torch.float64)
    samples = model.generate(40, first, greedy=True, feedback="mu_law")
    _assert_not_constant(samples)
    _assert_bitwise(samples, _greedy_by_hand(model, 40, table, first), "mu-law classes")


def test_wavenet_greedy_generate_with_an_embedding_table():
    model = _classes_wavenet(classes=6, in_channels=3, seed=6)
    torch.manual_seed(3)
    embedding = nn.Embedding(6, 3).double()
    model.reset_state(2)
    samples = model.generate(40, greedy=True, feedback=embedding)
    _assert_not_constant(samples)
    expected = _greedy_by_hand(model, 40, embedding.weight.detach(), torch.zeros(2, 3, dtype=torch.float64))
    _assert_bitwise(samples, expected, "embedding-fed classes")
    # Its weight as a tensor.
    model.reset_state(2)
    _assert_bitwise(model.generate(40, greedy=True, feedback=embedding.weight), expected, "embedding.weight")


@pytest.mark.parametrize("upsample", ["repeat", "transposed"])
def test_wavenet_greedy_generate_with_local_and_global_conditioning(upsample):
    model = _classes_wavenet(local_channels=4, upsample_factor=3, upsample=upsample, global_channels=2, seed=4)
    table = torch.eye(4, dtype=torch.float64)
    frames = seeded_randn((3, 4, 10), seed=1)
    g = seeded_randn((3, 2), seed=2)
    model.reset_state(3)
    samples = model.generate(local_conditioning=frames, global_conditioning=g, greedy=True)
    assert samples.shape == (3, 30)  # num_samples defaults to the frames' 10 * 3 samples
    _assert_not_constant(samples)
    expected = _greedy_by_hand(model, 30, table, torch.zeros(3, 4, dtype=torch.float64), frames=frames, glob=g)
    _assert_bitwise(samples, expected, "conditioned classes")
    # Fewer samples than the frames cover.
    model.reset_state(3)
    _assert_bitwise(model.generate(20, local_conditioning=frames, global_conditioning=g, greedy=True),
                    expected[:, :20], "first 20")


def test_wavenet_sampling_is_reproducible_with_a_seeded_generator():
    model = _classes_wavenet(gain=1.0)

    def sample(seed, n=3):
        model.reset_state(n)
        return model.generate(40, generator=torch.Generator().manual_seed(seed))

    a = sample(1)
    _assert_not_constant(a)
    _assert_bitwise(sample(1), a, "same seed")
    assert not torch.equal(sample(2), a)
    # The sequences of a batch draw differently.
    assert not torch.equal(a[0], a[1])
    # The global generator when none is given.
    model.reset_state(3)
    torch.manual_seed(7)
    b = model.generate(40)
    model.reset_state(3)
    torch.manual_seed(7)
    _assert_bitwise(model.generate(40), b, "global generator")
    # The same seed gives the same samples at any thread count.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _assert_bitwise(sample(1), a, "one thread")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_wavenet_sampled_classes_follow_softmax_of_logits_over_temperature(temperature):
    """With every weight zero the logits are the output bias, whatever the input."""
    model = _classes_wavenet()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        bias = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
        model.output[3].bias.copy_(bias)
    n, steps = 8, 1500
    model.reset_state(n)
    assert torch.equal(model.step(seeded_randn((n, 4))), bias.expand(n, 4))
    samples = model.generate(steps, temperature=temperature,
                             generator=torch.Generator().manual_seed(int(10 * temperature)))
    counts = torch.bincount(samples.flatten(), minlength=4).double()
    expected = torch.softmax(bias / temperature, dim=0) * n * steps
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # 3 degrees of freedom: P(chi2 > 30) is about 1e-6.
    assert chi2 < 30, f"counts {counts.tolist()}, expected {expected.tolist()}, chi2 {chi2}"


def test_wavenet_sampling_at_a_small_temperature_is_greedy():
    model = _classes_wavenet()
    first = torch.eye(4, dtype=torch.float64)[[0, 1, 2]]
    model.reset_state(3)
    greedy = model.generate(40, first, greedy=True)
    _assert_not_constant(greedy)
    model.reset_state(3)
    sampled = model.generate(40, first, temperature=1e-3, generator=torch.Generator().manual_seed(0))
    _assert_bitwise(sampled, greedy, "temperature 1e-3 vs greedy")
    # While at temperature 1 the same draws pick other classes.
    model.reset_state(3)
    assert not torch.equal(model.generate(40, first, generator=torch.Generator().manual_seed(0)), greedy)


def test_wavenet_generate_continues_where_teacher_forced_steps_left_off():
    model = _classes_wavenet()
    table = torch.eye(4, dtype=torch.float64)
    prime = _one_hot_inputs(4, 3, 35, seed=1)  # past the receptive field (31)
    model.reset_state(3)
    last = model.step(prime)[:, :, -1]
    first = table[last.argmax(dim=1)]
    samples = model.generate(25, first, greedy=True)
    assert model.state.t == 35 + 25
    _assert_not_constant(samples)
    _assert_bitwise(samples, _greedy_by_hand(model, 25, table, first, prime=prime), "primed classes")
    # Without first_input after step(), the first generated step's input is zeros.
    model.reset_state(3)
    model.step(prime)
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    _assert_bitwise(model.generate(25, greedy=True), _greedy_by_hand(model, 25, table, zeros, prime=prime),
                    "primed, zero first input")


def test_wavenet_generate_twice_continues_the_sequence():
    model = _classes_wavenet(gain=1.5)
    model.reset_state(3)
    whole = model.generate(30, generator=torch.Generator().manual_seed(5))
    model.reset_state(3)
    generator = torch.Generator().manual_seed(5)
    parts = torch.cat([model.generate(12, generator=generator), model.generate(18, generator=generator)], dim=1)
    _assert_bitwise(parts, whole, "12 + 18 samples")
    assert model.state.t == 30
    # And a step after generate takes up the sequence (state.t) like a forward over the generated inputs.
    table = torch.eye(4, dtype=torch.float64)
    x = torch.cat([torch.zeros(3, 4, 1, dtype=torch.float64), table[whole].permute(0, 2, 1)], dim=2)
    with torch.no_grad():
        full = model(x)
    _assert_bitwise(model.step(x[:, :, 30]), full[:, :, 30], "step after generate")


@pytest.mark.parametrize("greedy", [True, False])
def test_wavenet_generate_in_chunks_equals_one_chunk(greedy, monkeypatch):
    model = _classes_wavenet(gain=1.5)
    model.reset_state(3)
    one = model.generate(23, greedy=greedy, generator=torch.Generator().manual_seed(3))
    _assert_not_constant(one)
    monkeypatch.setattr(wavenet_module, "_GENERATE_CHUNK", 5)
    model.reset_state(3)
    calls = []
    chunked = model.generate(23, greedy=greedy, generator=torch.Generator().manual_seed(3),
                             progress=lambda done, total: calls.append((done, total)))
    _assert_bitwise(chunked, one, "chunks of 5")
    assert calls == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    assert model.state.t == 23


def test_wavenet_generate_with_local_conditioning_in_chunks(monkeypatch):
    model = _classes_wavenet(local_channels=4, upsample_factor=3, global_channels=2)
    frames, g = seeded_randn((2, 4, 9), seed=1), seeded_randn((2, 2), seed=2)
    model.reset_state(2)
    one = model.generate(local_conditioning=frames, global_conditioning=g, greedy=True)
    monkeypatch.setattr(wavenet_module, "_GENERATE_CHUNK", 4)
    model.reset_state(2)
    _assert_bitwise(model.generate(local_conditioning=frames, global_conditioning=g, greedy=True), one,
                    "chunks of 4")


def test_wavenet_generate_progress_bar_runs(capsys):
    model = _classes_wavenet()
    model.reset_state(1)
    expected = model.generate(7, greedy=True)
    model.reset_state(1)
    _assert_bitwise(model.generate(7, greedy=True, progress=True), expected, "with a progress bar")


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("greedy", [True, False])
def test_wavenet_generate_interrupted_keeps_finished_chunks_and_continues(greedy, monkeypatch):
    monkeypatch.setattr(wavenet_module, "_GENERATE_CHUNK", 5)
    model = _classes_wavenet(gain=1.5)
    table = torch.eye(4, dtype=torch.float64)
    model.reset_state(3)
    whole = model.generate(23, greedy=greedy, generator=torch.Generator().manual_seed(9))

    def interrupt(done, total):
        if done == 10:
            raise _Interrupt()

    model.reset_state(3)
    generator = torch.Generator().manual_seed(9)
    with pytest.raises(_Interrupt):
        model.generate(23, greedy=greedy, generator=generator, progress=interrupt)
    state = model.state
    assert state.t == 10
    _assert_bitwise(state.next_input, table[whole[:, 9]], "next_input after the interrupt")
    rest = model.generate(13, greedy=greedy, generator=generator)
    _assert_bitwise(rest, whole[:, 10:], "continued after the interrupt")
    assert model.state.t == 23


# ------------------------------------------------------------------- state --


def test_wavenet_state_clone_and_restore_replays_identically():
    model = _classes_wavenet(gain=1.5)
    x = _one_hot_inputs(4, 2, 50, seed=2)
    model.reset_state(2)
    model.step(x[:, :, :33])
    saved = model.state.clone()
    assert saved.t == 33 and saved.buffers is not model.state.buffers
    first = model.step(x[:, :, 33:])
    sampled = model.generate(10, generator=torch.Generator().manual_seed(1))
    assert saved.t == 33  # stepping the model's state leaves the clone alone
    model.state = saved.clone()
    _assert_bitwise(model.step(x[:, :, 33:]), first, "replayed steps")
    _assert_bitwise(model.generate(10, generator=torch.Generator().manual_seed(1)), sampled, "replayed samples")
    # Replayed step by step, from the same saved state.
    model.state = saved
    replay = torch.stack([model.step(x[:, :, t]) for t in range(33, 50)], dim=2)
    _assert_bitwise(replay, first, "replayed one step at a time")
    with torch.no_grad():
        _assert_bitwise(first, model(x)[:, :, 33:], "against forward")


def test_wavenet_state_to_and_repr():
    model = _small_wavenet()
    model.reset_state(2)
    model.step(seeded_randn((2, 2, 5)))
    state = model.state.to(torch.float32)
    assert state.buffers.dtype == torch.float32 and state.t == 5 and state.batch_size == 2
    assert "WaveNetState(batch_size=2, t=5, slots=30" in repr(model.state)


def test_wavenet_reset_state_clears_everything():
    model = _classes_wavenet(gain=1.5)
    x = _one_hot_inputs(4, 2, 20, seed=3)
    model.reset_state(2)
    model.step(x)
    model.generate(5, greedy=True)
    assert model.state.t == 25 and model.state.next_input is not None
    model.reset_state(3)
    state = model.state
    assert state.t == 0 and state.next_input is None and state.batch_size == 3
    assert not state.buffers.any()
    model.reset_state(2)
    with torch.no_grad():
        _assert_bitwise(model.step(x), model(x), "after reset_state")


def test_wavenet_step_follows_the_model_when_it_is_cast_after_reset_state():
    # reset_state in float32, then model.double(): the cache follows the parameters (no
    # dtype error inside step) and generation still equals forward, now in float64.
    model = _small_wavenet(2, (1, 2, 4)).float()
    x = seeded_randn((2, 2, 9), dtype=torch.float64)
    model.reset_state(2)
    first = model.step(x[:, :, 0].float())
    model.double()
    rest = [model.step(x[:, :, t]) for t in range(1, 9)]
    assert all(r.dtype == torch.float64 for r in rest)
    assert model.state.buffers.dtype == torch.float64
    full = model(x)
    # Step 0 ran in float32 and its cached block inputs were rounded to float32, then
    # widened: every later step matches the float64 forward to float32 accuracy.
    torch.testing.assert_close(first.double(), full[:, :, 0], rtol=1e-5, atol=1e-5)
    steps = torch.stack(rest, dim=2)
    torch.testing.assert_close(steps, full[:, :, 1:], rtol=1e-5, atol=1e-5)
    # And a fresh reset_state in float64 gives forward bitwise, as before any cast.
    model.reset_state(2)
    assert torch.equal(torch.stack([model.step(x[:, :, t]) for t in range(9)], dim=2), full)


@pytest.mark.parametrize("restart", ["reset_state", "assign_state"])
def test_wavenet_packed_weights_follow_an_in_place_parameter_update(restart):
    model = _small_wavenet(dtype=torch.float32)
    x = seeded_randn((2, 2, 40), dtype=torch.float32)
    model.reset_state(2)
    before = model.step(x)  # packs the weights
    with torch.no_grad():
        model.blocks[0].conv.weight.add_(0.1)
        model.output[3].bias.mul_(2)
    if restart == "reset_state":
        model.reset_state(2)
    else:  # the packed weights are kept: only the parameters' versions tell
        model.state = WaveNetState(torch.zeros_like(model.state.buffers))
    with torch.no_grad():
        expected = model(x)
    assert not torch.equal(expected, before)
    _assert_bitwise(model.step(x), expected, "after the update")


def test_wavenet_packed_weights_follow_an_optimizer_step():
    model = _small_wavenet()
    x = seeded_randn((2, 2, 20))
    model.reset_state(2)
    before = model.step(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().mean().backward()
    optimizer.step()
    model.state = WaveNetState(torch.zeros_like(model.state.buffers))
    with torch.no_grad():
        expected = model(x)
    assert not torch.equal(expected, before)
    _assert_bitwise(model.step(x), expected, "after an optimizer step")


@pytest.mark.parametrize("restart", ["reset_state", "assign_state"])
def test_wavenet_packed_weights_follow_load_state_dict(restart):
    model = _classes_wavenet(seed=1)
    other = _classes_wavenet(seed=2)
    x = _one_hot_inputs(4, 2, 36, seed=4)
    model.reset_state(2)
    before = model.step(x)
    model.load_state_dict(other.state_dict())
    if restart == "reset_state":
        model.reset_state(2)
    else:
        model.state = WaveNetState(torch.zeros_like(model.state.buffers))
    with torch.no_grad():
        expected = other(x)
    assert not torch.equal(expected, before)
    _assert_bitwise(model.step(x), expected, "after load_state_dict")
    model.reset_state(2)
    other.reset_state(2)
    _assert_bitwise(model.generate(20, greedy=True), other.generate(20, greedy=True), "generate")


# ------------------------------------------------------------------ misuse --


def test_wavenet_misuse_is_reported():
    model = _small_wavenet()
    with pytest.raises(RuntimeError, match="reset_state"):
        model.step(torch.zeros(1, 2, dtype=torch.float64))
    model.reset_state(2)
    with pytest.raises(ValueError, match=r"expected x of size \(2, 2\) or \(2, 2, steps\), got \(2, 3\)"):
        model.step(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected input \(N, 2, T\)"):
        model(torch.zeros(1, 3, 10, dtype=torch.float64))


def test_wavenet_step_rejects_x_of_another_dtype_naming_x():
    model = _small_wavenet()
    model.reset_state(2)
    with pytest.raises(TypeError, match=r"expected x of dtype torch.float64 on cpu .*got torch.float32 on cpu"):
        model.step(torch.zeros(2, 2, dtype=torch.float32))
    with pytest.raises(TypeError, match="expected x to be a tensor, got list"):
        model.step([[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"expected x of size \(2, 2\) or \(2, 2, steps\), got \(3, 2\)"):
        model.step(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected batch_size to be an int >= 1, got 0"):
        model.reset_state(0)


def test_wavenet_step_and_generate_before_reset_state():
    model = _classes_wavenet()
    assert model.state is None
    with pytest.raises(RuntimeError, match=r"WaveNet.step: call reset_state\(batch_size\) first"):
        model.step(torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"WaveNet.generate: call reset_state\(batch_size\) first"):
        model.generate(3)


def test_wavenet_step_rejects_wrong_x_naming_it():
    model = _small_wavenet()
    model.reset_state(2)
    with pytest.raises(ValueError, match=r"WaveNet.step: expected x of size \(2, 2\) or \(2, 2, steps\), got \(3, 2, 4\)"):
        model.step(torch.zeros(3, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected x of size .*got \(2, 5, 4\)"):
        model.step(torch.zeros(2, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected x of size .*got \(2, 2, 1, 1\)"):
        model.step(torch.zeros(2, 2, 1, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"WaveNet.step: expected x of dtype torch.float64 on cpu .*got torch.float64 on meta"):
        model.step(torch.zeros(2, 2, device="meta", dtype=torch.float64))
    with pytest.raises(TypeError, match=r"expected x of dtype torch.float64 .*got torch.bfloat16 on cpu"):
        model.step(torch.zeros(2, 2, dtype=torch.bfloat16))
    assert model.state.t == 0  # nothing was stepped


def test_wavenet_generate_rejects_bad_num_samples_and_temperature():
    model = _classes_wavenet()
    model.reset_state(2)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=rf"WaveNet.generate: expected num_samples to be an int >= 1, got {bad!r}"):
            model.generate(bad)
    with pytest.raises(ValueError, match=r"WaveNet.generate: expected num_samples \(an int >= 1\), got None"):
        model.generate()
    for bad in (0, 0.0, -1, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match=r"WaveNet.generate: expected temperature > 0 \(or greedy=True\), got "
                                             + re.escape(repr(bad))):
            model.generate(3, temperature=bad)
    # greedy ignores the temperature
    assert model.generate(3, temperature=0, greedy=True).shape == (2, 3)
    with pytest.raises(TypeError, match="WaveNet.generate: expected generator to be a torch.Generator, got int"):
        model.generate(3, generator=0)
    with pytest.raises(ValueError, match=r"WaveNet.generate: expected first_input of size \(2, 4\), got \[2, 3\]"):
        model.generate(3, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"expected first_input of dtype torch.float64 on cpu .*got torch.float32"):
        model.generate(3, torch.zeros(2, 4))
    assert model.state.t == 3  # only the greedy call ran


def test_wavenet_generate_rejects_bad_feedback():
    model = _small_wavenet()  # in_channels 2, out_channels 3
    model.reset_state(2)
    with pytest.raises(ValueError, match=r"feedback='one_hot' needs in_channels == out_channels, got 2 and 3"):
        model.generate(3)
    with pytest.raises(ValueError, match=r"feedback='mu_law' needs in_channels == 1, got 2"):
        model.generate(3, feedback="mu_law")
    with pytest.raises(ValueError, match=r"expected feedback to be 'one_hot', 'mu_law', a tensor \(3, 2\) or an "
                                         r"nn.Embedding, got 'onehot'"):
        model.generate(3, feedback="onehot")
    with pytest.raises(ValueError, match=r"expected feedback of size \(3, 2\) \(the model input for each output "
                                         r"class\), got \[2, 3\]"):
        model.generate(3, feedback=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected feedback of size \(3, 2\) .*got \[3, 2, 1\]"):
        model.generate(3, feedback=torch.zeros(3, 2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected feedback of size \(3, 2\) .*got \[4, 2\]"):
        model.generate(3, feedback=nn.Embedding(4, 2))
    with pytest.raises(ValueError, match=r"expected feedback of size \(3, 2\) .*got list"):
        model.generate(3, feedback=[[0.0, 1.0]] * 3)
    # A table of another dtype is converted.
    assert model.generate(3, feedback=torch.zeros(3, 2), greedy=True).shape == (2, 3)


def _conditioned():
    return _small_wavenet(local_channels=4, upsample_factor=3, global_channels=2)


def test_wavenet_local_conditioning_misuse_names_it():
    model = _conditioned()
    n = 2
    x = torch.zeros(n, 2, dtype=torch.float64)
    g = torch.zeros(n, 2, dtype=torch.float64)
    model.reset_state(n)
    # step: the upsampled features of the steps
    with pytest.raises(ValueError, match=r"WaveNet.step: expected local_conditioning of size \(2, 4, 1\), got \[2, 5, 1\]"):
        model.step(x, torch.zeros(n, 5, dtype=torch.float64), g)
    with pytest.raises(ValueError, match=r"WaveNet.step: expected local_conditioning of size \(2, 4, 3\), got \[2, 4, 2\]"):
        model.step(torch.zeros(n, 2, 3, dtype=torch.float64), torch.zeros(n, 4, 2, dtype=torch.float64), g)
    with pytest.raises(ValueError, match=r"WaveNet.step: expected local_conditioning \(the model has local_channels=4\)"):
        model.step(x, global_conditioning=g)
    with pytest.raises(TypeError, match=r"WaveNet.step: expected local_conditioning of dtype torch.float64"):
        model.step(x, torch.zeros(n, 4), g)
    # generate: frames
    with pytest.raises(ValueError, match=r"expected local_conditioning frames \(N, 4, F\), got size \[2, 5, 3\]"):
        model.generate(local_conditioning=torch.zeros(n, 5, 3, dtype=torch.float64), global_conditioning=g,
                       feedback=torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"WaveNet.generate: expected local_conditioning frames \(2, 4, F\), got size "
                                         r"\[3, 4, 3\]"):
        model.generate(local_conditioning=torch.zeros(3, 4, 3, dtype=torch.float64), global_conditioning=g)
    with pytest.raises(ValueError, match=r"WaveNet.generate: expected local_conditioning to cover the 10 samples "
                                         r"\(at least 4 frames\), got 3 frames"):
        model.generate(10, local_conditioning=torch.zeros(n, 4, 3, dtype=torch.float64), global_conditioning=g,
                       feedback=torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"WaveNet.generate: expected local_conditioning frames \(N, 4, F\): the model "
                                         r"was built with local_channels"):
        model.generate(3, global_conditioning=g, feedback=torch.zeros(3, 2, dtype=torch.float64))
    # forward
    with pytest.raises(ValueError, match=r"WaveNet: expected local_conditioning to cover the 10 samples \(at least 4 "
                                         r"frames of 3\), got 3 frames"):
        model(torch.zeros(n, 2, 10, dtype=torch.float64), torch.zeros(n, 4, 3, dtype=torch.float64), g)
    with pytest.raises(ValueError, match=r"WaveNet: expected local_conditioning frames \(N, 4, F\), got size "
                                         r"\[2, 3, 4\]"):
        model(torch.zeros(n, 2, 10, dtype=torch.float64), torch.zeros(n, 3, 4, dtype=torch.float64), g)
    with pytest.raises(ValueError, match=r"WaveNet: expected local_conditioning frames \(N, 4, F\): the model was "
                                         r"built with local_channels"):
        model(torch.zeros(n, 2, 10, dtype=torch.float64), global_conditioning=g)
    assert model.state.t == 0
    # A model without local conditioning.
    plain = _small_wavenet()
    plain.reset_state(n)
    with pytest.raises(ValueError, match="WaveNet.step: got local_conditioning, but the model has local_channels=0"):
        plain.step(x, torch.zeros(n, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"this model has no local conditioning \(local_channels=0\)"):
        plain.generate(3, local_conditioning=torch.zeros(n, 4, 3, dtype=torch.float64),
                       feedback=torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="WaveNet: got local_conditioning, but the model has local_channels=0"):
        plain(torch.zeros(n, 2, 5, dtype=torch.float64), torch.zeros(n, 4, 5, dtype=torch.float64))


def test_wavenet_global_conditioning_misuse_names_it():
    model = _conditioned()
    n = 2
    x = torch.zeros(n, 2, dtype=torch.float64)
    local = torch.zeros(n, 4, dtype=torch.float64)
    frames = torch.zeros(n, 4, 2, dtype=torch.float64)
    table = torch.zeros(3, 2, dtype=torch.float64)
    model.reset_state(n)
    with pytest.raises(ValueError, match=r"WaveNet.step: expected global_conditioning of size \(2, 2\), got \[2, 3\]"):
        model.step(x, local, torch.zeros(n, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"WaveNet.step: expected global_conditioning of size \(2, 2\), got \[2\]"):
        model.step(x, local, torch.zeros(n, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"WaveNet.step: expected global_conditioning \(the model has "
                                         r"global_channels=2\)"):
        model.step(x, local)
    with pytest.raises(ValueError, match=r"WaveNet.generate: expected global_conditioning of size \(2, 2\), "
                                         r"got \[1, 2\]"):
        model.generate(local_conditioning=frames, global_conditioning=torch.zeros(1, 2, dtype=torch.float64),
                       feedback=table)
    with pytest.raises(ValueError, match=r"WaveNet.generate: expected global_conditioning \(the model has "
                                         r"global_channels=2\)"):
        model.generate(local_conditioning=frames, feedback=table)
    with pytest.raises(ValueError, match=r"WaveNet: expected global_conditioning of size \(2, 2\), got \[2, 5\]"):
        model(torch.zeros(n, 2, 5, dtype=torch.float64), frames, torch.zeros(n, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"WaveNet: expected global_conditioning \(N, 2\): the model was built with "
                                         r"global_channels"):
        model(torch.zeros(n, 2, 5, dtype=torch.float64), frames)
    assert model.state.t == 0
    plain = _small_wavenet()
    plain.reset_state(n)
    with pytest.raises(ValueError, match="WaveNet.step: got global_conditioning, but the model has global_channels=0"):
        plain.step(x, global_conditioning=torch.zeros(n, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="WaveNet.generate: got global_conditioning, but the model has "
                                         "global_channels=0"):
        plain.generate(3, global_conditioning=torch.zeros(n, 2, dtype=torch.float64), feedback=table)
    with pytest.raises(ValueError, match="WaveNet: got global_conditioning, but the model has global_channels=0"):
        plain(torch.zeros(n, 2, 5, dtype=torch.float64), global_conditioning=torch.zeros(n, 2, dtype=torch.float64))


def test_wavenet_constructor_rejects_conditioning_arguments_naming_them():
    with pytest.raises(ValueError, match="WaveNet: expected upsample to be 'repeat' or 'transposed', got 'linear'"):
        WaveNet(1, 1, local_channels=2, upsample="linear")
    with pytest.raises(ValueError, match="WaveNet: expected local_channels to be an int >= 0, got -1"):
        WaveNet(1, 1, local_channels=-1)
    with pytest.raises(ValueError, match="WaveNet: expected global_channels to be an int >= 0, got -2"):
        WaveNet(1, 1, global_channels=-2)
    with pytest.raises(ValueError, match="WaveNet: expected upsample_factor to be an int >= 1, got 0"):
        WaveNet(1, 1, local_channels=2, upsample_factor=0)


def test_wavenet_state_assignment_checks_type_and_size():
    model = _small_wavenet()  # 30 slots of 5 channels
    model.reset_state(2)
    with pytest.raises(TypeError, match="WaveNet.state: expected a WaveNetState or None, got int"):
        model.state = 3
    with pytest.raises(TypeError, match="WaveNet.state: expected a WaveNetState or None, got Tensor"):
        model.state = torch.zeros(30, 2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"WaveNet.state: expected buffers of size \(30, N, 5\) for this model, "
                                         r"got \[29, 2, 5\]"):
        model.state = WaveNetState(torch.zeros(29, 2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected buffers of size \(30, N, 5\) for this model, got \[30, 2, 4\]"):
        model.state = WaveNetState(torch.zeros(30, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected buffers of size \(30, N, 5\) for this model, got \[30, 10\]"):
        model.state = WaveNetState(torch.zeros(30, 10, dtype=torch.float64))
    model.state = None
    with pytest.raises(RuntimeError, match="reset_state"):
        model.step(torch.zeros(2, 2, dtype=torch.float64))
    # A state of another batch size is fine: it sets the batch.
    model.state = WaveNetState(torch.zeros(30, 4, 5, dtype=torch.float64))
    assert model.step(torch.zeros(4, 2, dtype=torch.float64)).shape == (4, 3)


def _raw_op_arguments(dtype=torch.float64):
    model = _small_wavenet(dtype=dtype)  # 30 slots, 5 residual channels, 2 in, 3 out
    model.reset_state(2)
    _, packed, plan = model._generation("step")
    return model, packed, plan


def _position(t=0):
    return torch.tensor([t], dtype=torch.int64)


def test_raw_wavenet_step_checks_the_state_and_inputs():
    model, packed, plan = _raw_op_arguments()
    x = torch.zeros(2, 2, 3, dtype=torch.float64)
    state = torch.zeros(30, 2, 5, dtype=torch.float64)
    position = _position()
    assert wavenet_step(state, packed, plan, x, None, None, position).shape == (2, 3, 3)
    assert position.tolist() == [3]  # advanced by the op
    with pytest.raises(RuntimeError, match=r"wavenet_step: expected position to be an int64 CPU tensor of size "
                                           r"\(1\), got Long \[2\]"):
        wavenet_step(state, packed, plan, x, None, None, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"wavenet: expected a contiguous state of size \(30, N, 5\), got \[29, 2, 5\]"):
        wavenet_step(torch.zeros(29, 2, 5, dtype=torch.float64), packed, plan, x, None, None, _position())
    with pytest.raises(RuntimeError, match=r"expected a contiguous state of size \(30, N, 5\), got \[30, 2, 5\] "
                                           r"\(not contiguous\)"):
        wavenet_step(torch.zeros(30, 5, 2, dtype=torch.float64).transpose(1, 2), packed, plan, x, None, None, _position())
    with pytest.raises(RuntimeError, match=r"wavenet: expected state to be a CPU tensor of dtype Double .*got Float"):
        wavenet_step(torch.zeros(30, 2, 5), packed, plan, x, None, None, _position())
    with pytest.raises(RuntimeError, match=r"wavenet_step: expected inputs of size \(2, 2, steps\), got \[2, 3, 3\]"):
        wavenet_step(state, packed, plan, torch.zeros(2, 3, 3, dtype=torch.float64), None, None, _position())
    with pytest.raises(RuntimeError, match=r"wavenet_step: expected inputs to be a CPU tensor of dtype Double, "
                                           r"got Float"):
        wavenet_step(state, packed, plan, torch.zeros(2, 2, 3), None, None, _position())
    with pytest.raises(RuntimeError, match="wavenet_step: expected position >= 0, got -1"):
        wavenet_step(state, packed, plan, x, None, None, _position(-1))
    with pytest.raises(RuntimeError, match=r"wavenet: expected local_conditioning of size \(2, 96, 3\), got \[2, 96, 2\]"):
        wavenet_step(state, packed, plan, x, torch.zeros(2, 96, 2, dtype=torch.float64), None, _position())
    with pytest.raises(RuntimeError, match=r"wavenet: expected global_conditioning of size \(2, 96\), got \[2, 95\]"):
        wavenet_step(state, packed, plan, x, None, torch.zeros(2, 95, dtype=torch.float64), _position())
    with pytest.raises(RuntimeError, match="wavenet: expected packed to be the tensor returned by wavenet_pack"):
        wavenet_step(state, packed.unsqueeze(0), plan, x, None, None, _position())
    # The kernels trust the plan's offsets: a packed tensor of another size, or a plan whose
    # offsets run past packed, is refused before anything is read.
    pair = r"wavenet: expected packed \(\d+ elements of Double\) and plan to be the pair returned by one wavenet_pack"
    with pytest.raises(RuntimeError, match=pair):
        wavenet_step(state, packed[:-1].contiguous(), plan, x, None, None, _position())
    with pytest.raises(RuntimeError, match=pair):
        wavenet_step(state, torch.cat([packed, packed]), plan, x, None, None, _position())
    for field in range(plan.numel()):
        if field == 0:
            continue  # the format number: "of this build", tested below
        broken = plan.clone()
        broken[field] += 100000
        with pytest.raises(RuntimeError, match=r"wavenet: expected (packed|plan|a contiguous state)"):
            wavenet_step(state, packed, broken, x, None, None, _position())
    with pytest.raises(RuntimeError, match=r"wavenet: expected plan to be the int64 plan returned by wavenet_pack "
                                           r"\(of this build\)"):
        broken = plan.clone()
        broken[0] += 1
        wavenet_step(state, packed, broken, x, None, None, _position())


def test_raw_wavenet_generate_checks_steps_and_temperature():
    model, packed, plan = _raw_op_arguments()
    state = torch.zeros(30, 2, 5, dtype=torch.float64)
    first = torch.zeros(2, 2, dtype=torch.float64)
    table = torch.zeros(3, 2, dtype=torch.float64)
    position = _position()
    samples = wavenet_generate(state, packed, plan, first, table, None, None, position, 4, 1.0, True, None)
    assert samples.shape == (2, 4) and samples.dtype == torch.int64
    # The op advances the position and leaves in `first` the input of the next step.
    assert position.tolist() == [4] and torch.equal(first, table[samples[:, -1]])
    with pytest.raises(RuntimeError, match=r"wavenet_generate: expected position to be an int64 CPU tensor of "
                                           r"size \(1\), got Int"):
        wavenet_generate(state, packed, plan, first, table, None, None, torch.zeros(1, dtype=torch.int32), 4, 1.0,
                         True, None)
    with pytest.raises(RuntimeError, match=r"expected input to be a contiguous CPU tensor .*\(not contiguous\)"):
        wavenet_generate(state, packed, plan, torch.zeros(2, 2, dtype=torch.float64).t(), table, None, None,
                         _position(), 4, 1.0, True, None)
    with pytest.raises(RuntimeError, match="wavenet_generate: expected steps >= 1, got 0"):
        wavenet_generate(state, packed, plan, first, table, None, None, _position(), 0, 1.0, True, None)
    with pytest.raises(RuntimeError, match="wavenet_generate: expected steps >= 1, got -3"):
        wavenet_generate(state, packed, plan, first, table, None, None, _position(), -3, 1.0, True, None)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(RuntimeError, match="wavenet_generate: expected temperature > 0, got"):
            wavenet_generate(state, packed, plan, first, table, None, None, _position(), 4, bad, False, None)
    with pytest.raises(RuntimeError, match="wavenet_generate: expected position >= 0, got -1"):
        wavenet_generate(state, packed, plan, first, table, None, None, _position(-1), 4, 1.0, True, None)
    with pytest.raises(RuntimeError, match=r"wavenet_generate: expected input to be a contiguous CPU tensor of size "
                                           r"\(2, 2\) and dtype Double, got \[2, 3\]"):
        wavenet_generate(state, packed, plan, torch.zeros(2, 3, dtype=torch.float64), table, None, None, _position(), 4, 1.0,
                         True, None)
    with pytest.raises(RuntimeError, match=r"wavenet_generate: expected feedback to be a CPU tensor of size \(3, 2\) "
                                           r"\(a model input per output class\) and dtype Double, got \[2, 2\]"):
        wavenet_generate(state, packed, plan, first, torch.zeros(2, 2, dtype=torch.float64), None, None, _position(), 4, 1.0,
                         True, None)
    with pytest.raises(RuntimeError, match=r"wavenet: expected a contiguous state of size \(30, N, 5\), got \[30, 2\]"):
        wavenet_generate(torch.zeros(30, 2, dtype=torch.float64), packed, plan, first, table, None, None, _position(), 4, 1.0,
                         True, None)
    with pytest.raises(RuntimeError, match=r"wavenet: expected state to be a CPU tensor of dtype Double"):
        wavenet_generate(state.float(), packed, plan, first, table, None, None, _position(), 4, 1.0, True, None)


# ---------------------------------------------------- torch fallback path --


def _small_16_bit_classes_wavenet(dtype):
    """4 blocks (receptive field 7): the torch path runs a few ops per block and step."""
    return _classes_wavenet(dtype=dtype, dilations=(1, 2), seed=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_wavenet_16_bit_model_steps_with_torch_ops_like_forward(dtype):
    model = _small_16_bit_classes_wavenet(dtype)
    assert not model._native()
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    length = 12  # past the receptive field: the rings wrap
    x = _one_hot_inputs(4, 2, length, seed=5, dtype=dtype)
    with torch.no_grad():
        full = model(x)
    scale = full.abs().max().item()
    model.reset_state(2)
    steps = torch.stack([model.step(x[:, :, t]) for t in range(length)], dim=2)
    assert steps.dtype == dtype
    torch.testing.assert_close(steps.float(), full.float(), rtol=4 * u, atol=4 * u * scale)
    model.reset_state(2)
    chunked = torch.cat([model.step(x[:, :, :5]), model.step(x[:, :, 5:])], dim=2)
    torch.testing.assert_close(chunked.float(), full.float(), rtol=4 * u, atol=4 * u * scale)
    assert model.state.buffers.dtype == dtype and model.state.t == length


def test_wavenet_16_bit_model_generates_with_torch_ops():
    dtype, u = torch.bfloat16, 2.0 ** -8
    model = _small_16_bit_classes_wavenet(dtype)
    table = torch.eye(4, dtype=dtype)
    model.reset_state(2)
    samples = model.generate(12, greedy=True)
    assert samples.shape == (2, 12) and samples.dtype == torch.int64
    _assert_not_constant(samples)
    # Each greedy class is, to bfloat16 accuracy, the argmax of the forward's logits over
    # the generated sequence ...
    fed = torch.cat([torch.zeros(2, 4, 1, dtype=dtype), table[samples[:, :-1]].permute(0, 2, 1)], dim=2)
    with torch.no_grad():
        logits = model(fed).float()
    chosen = logits.gather(1, samples.unsqueeze(1))[:, 0]
    gap = (logits.max(dim=1).values - chosen).max().item()
    assert gap <= 4 * u * logits.abs().max().item(), f"a greedy class is {gap} below the forward's largest logit"
    # ... and exactly the argmax of the steps' own logits.
    model.reset_state(2)
    x_t, by_step = torch.zeros(2, 4, dtype=dtype), []
    for _ in range(12):
        k = model.step(x_t).argmax(dim=1)
        by_step.append(k)
        x_t = table[k]
    _assert_bitwise(samples, torch.stack(by_step, dim=1), "greedy vs argmax of steps")

    # Sampling: reproducible with a seeded generator, classes in range.
    def sample(seed):
        model.reset_state(2)
        return model.generate(8, temperature=4.0, generator=torch.Generator().manual_seed(seed))

    a = sample(0)
    assert a.min().item() >= 0 and a.max().item() < 4
    _assert_bitwise(sample(0), a, "same seed")
    assert not torch.equal(sample(1), a)


def test_wavenet_16_bit_generate_in_chunks_and_interrupted(monkeypatch):
    model = _small_16_bit_classes_wavenet(torch.bfloat16)
    model.reset_state(2)
    whole = model.generate(8, temperature=4.0, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(wavenet_module, "_GENERATE_CHUNK", 3)

    def interrupt(done, total):
        if done == 3:
            raise _Interrupt()

    model.reset_state(2)
    generator = torch.Generator().manual_seed(2)
    with pytest.raises(_Interrupt):
        model.generate(8, temperature=4.0, generator=generator, progress=interrupt)
    assert model.state.t == 3
    _assert_bitwise(model.generate(5, temperature=4.0, generator=generator), whole[:, 3:], "continued")


def _cuda_model(dtype, cuda, **kwargs):
    return _classes_wavenet(dtype=dtype, **kwargs).to(cuda)


@pytest.mark.cuda
def test_wavenet_cuda_step_equals_forward_closely(cuda):
    model = _cuda_model(torch.float32, cuda, gain=1.5, local_channels=4, upsample_factor=3, global_channels=2)
    assert not model._native()
    n, length = 3, 40
    x = _one_hot_inputs(4, n, length, seed=1, dtype=torch.float32).to(cuda)
    frames = seeded_randn((n, 4, 14), dtype=torch.float32, seed=1, device=cuda)
    g = seeded_randn((n, 2), dtype=torch.float32, seed=2, device=cuda)
    with torch.no_grad():
        full = model(x, frames, g)
        features = model.upsample_conditioning(frames)
    model.reset_state(n)
    assert model.state.buffers.device.type == "cuda"
    steps = torch.stack([model.step(x[:, :, t], features[:, :, t], g) for t in range(length)], dim=2)
    scale = full.abs().max().item()
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5 * scale)
    model.reset_state(n)
    chunked = torch.cat([model.step(x[:, :, :17], features[:, :, :17], g),
                         model.step(x[:, :, 17:], features[:, :, 17:length], g)], dim=2)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.cuda
def test_wavenet_cuda_greedy_generate_equals_argmax_of_forward(cuda):
    model = _cuda_model(torch.float64, cuda)
    table = torch.eye(4, dtype=torch.float64, device=cuda)
    first = table[torch.tensor([0, 1, 2], device=cuda)]
    model.reset_state(3)
    samples = model.generate(30, first, greedy=True)
    assert samples.device.type == "cuda" and samples.shape == (3, 30)
    _assert_bitwise(samples.cpu(), _greedy_by_hand(model, 30, table, first).cpu(), "greedy classes on CUDA")
    # The CPU model generates the same classes.
    cpu_model = _classes_wavenet()
    cpu_model.reset_state(3)
    _assert_bitwise(cpu_model.generate(30, first.cpu(), greedy=True), samples.cpu(), "CUDA vs CPU")


@pytest.mark.cuda
def test_wavenet_cuda_state_follows_the_model_to_the_gpu(cuda):
    model = _classes_wavenet()
    x = _one_hot_inputs(4, 2, 36, seed=3)
    with torch.no_grad():
        full = model(x)
    model.reset_state(2)
    first = model.step(x[:, :, :20])
    model.to(cuda)
    rest = model.step(x[:, :, 20:].to(cuda))
    assert model.state.buffers.device.type == "cuda"
    _assert_bitwise(first, full[:, :, :20], "CPU steps")
    torch.testing.assert_close(rest.cpu(), full[:, :, 20:], rtol=1e-10, atol=1e-10 * full.abs().max().item())


# ------------------------------------------- interrupts and weight changes --


def test_wavenet_ctrl_c_inside_the_op_leaves_a_state_that_continues_exactly():
    """SIGINT lands while the C++ op runs (where nearly all the time goes) and is raised as
    it returns: the op has already advanced the rings, the position and the next input
    together, so greedy generation continues as if uninterrupted."""
    import os
    import signal
    import threading

    model = _classes_wavenet(seed=3)
    model.reset_state(2)
    head = model.generate(4, greedy=True)
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        model.generate(2_000_000, greedy=True)  # seconds of work: the signal lands inside
        pytest.fail("the interrupt did not arrive")
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
    t = model.state.t
    assert t > 4 and (t - 4) % wavenet_module._GENERATE_CHUNK == 0, t  # whole chunks only
    rest = model.generate(30, greedy=True)
    model.reset_state(2)
    reference = model.generate(t + 30, greedy=True)
    assert torch.equal(head, reference[:, :4]) and torch.equal(rest, reference[:, t:])


def test_wavenet_packed_weights_follow_a_weight_norm_original():
    model = _small_wavenet(2, (1, 2, 4))
    conv = model.blocks[1].conv
    torch.nn.utils.parametrizations.weight_norm(conv)
    x = seeded_randn((2, 2, 12))
    model.reset_state(2)
    model.step(x[:, :, 0])  # packs the weights
    with torch.no_grad():
        conv.parametrizations.weight.original1.mul_(1.5)  # the direction, a leaf parameter
    # Back to t = 0 without reset_state (which would drop the packed weights anyway).
    model.state.buffers.zero_()
    model.state.t = 0
    steps = model.step(x)
    with torch.no_grad():
        expected = model(x)
    _assert_bitwise(steps, expected, "after the weight_norm update")


def test_wavenet_model_to_with_swapped_parameters_after_steps():
    model = _small_wavenet(2, (1, 2)).float()
    model.reset_state(1)
    model.step(torch.zeros(1, 2))
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.double()  # the packed weights no longer hold the parameters (no "use_count" error)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    assert model.step(torch.zeros(1, 2, dtype=torch.float64)).dtype == torch.float64


def test_wavenet_bf16_weights_state_follows_a_cast_to_float64():
    model = _small_wavenet(2, (1, 2)).float()
    model.reset_state(1, weights_dtype=torch.bfloat16)
    model.step(torch.zeros(1, 2))
    model.double()
    out = model.step(torch.zeros(1, 2, dtype=torch.float64))  # bfloat16 weights serve float32 only
    assert out.dtype == torch.float64 and model.state.weights_dtype is None


def test_wavenet_pack_fake_kernel_takes_weights_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    model = _small_wavenet(2, (1, 2)).float()
    args = [a.detach() if isinstance(a, torch.Tensor) else [t.detach() for t in a] for a in model._pack_arguments()[:-1]]
    mode = FakeTensorMode(shape_env=ShapeEnv())  # the packed size is data-dependent
    fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else [mode.from_tensor(t) for t in a] for a in args]
    with mode:
        packed, plan = torch.ops.atrous.wavenet_pack(*fake, [b.dilation for b in model.blocks], torch.bfloat16)
    assert packed.dtype == torch.float32 and plan.dtype == torch.int64
