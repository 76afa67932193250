"""The CUDA kernels' own code, run on the CPU.

tests/emulation/emulated_kernels.cpp compiles csrc/cuda/conv_kernels.cuh and
the host side of the CUDA ops (csrc/cuda/conv_host.h) as host C++ with
ATROUS_CUDA_EMULATION (csrc/cuda/emulation.h: one std::thread per CUDA
thread, std::barrier for __syncthreads, function statics for __shared__, and
cp.async copies that land only when the wait retiring their group runs, so a
pipeline that reads a stage too early reads stale data).
That runs every kernel: the float and double SIMT implicit GEMMs and the
half, bfloat16 and TF32 tensor-core ones (WMMA emulated functionally), all
with the tap-class pixel order, the split grad_weight and its ordered
reduction, the depthwise kernels and grad_bias, through the same launchers and
grid arithmetic the GPU uses, and compares them with the CPU kernels. Outputs
are poisoned with NaN first (conftest), so an element no CUDA thread writes
fails the comparison.

Not covered here: the hardware's own WMMA fragment layout and summation order,
real concurrency between blocks, and everything only a GPU shows (timing,
occupancy, memory errors: see bench/gpu_check.sh).
"""
import pathlib

import pytest
import torch

from atrous_cuda import _ops

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emulated():
    from torch.utils.cpp_extension import load

    build_dir = ROOT / "build" / "cuda-emulation"
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name="atrous_cuda_emulated",
        sources=[str(ROOT / "tests" / "emulation" / "emulated_kernels.cpp"), str(ROOT / "csrc" / "atrous_conv.cpp"),
                 str(ROOT / "csrc" / "assemble.cpp")],
        extra_include_paths=[str(ROOT / "csrc")],
        extra_cflags=["-O2", "-std=c++20", "-fno-strict-aliasing", "-DATROUS_CUDA_EMULATION"],
        build_directory=str(build_dir),
        verbose=False,
    )


# name -> (input shape, weight shape, stride, padding (top, bottom, left, right), dilation, groups)
CASES = {
    # ASPP-like: the tap-class order cuts each axis into 3 bands
    "aspp_rate4": ((2, 12, 13, 14), (20, 12, 3, 3), (1, 1), (4, 4, 4, 4), (4, 4), 1),
    # more than one 128-row tile, partial N tile (130 output channels > 128)
    "partial_tiles": ((1, 9, 12, 13), (130, 9, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "stride_asymmetric": ((2, 8, 11, 10), (6, 8, 3, 2), (2, 3), (3, 1, 0, 4), (2, 3), 1),
    "groups3": ((1, 9, 9, 9), (12, 3, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 3),
    "depthwise": ((2, 8, 9, 10), (8, 1, 3, 3), (1, 1), (3, 3, 3, 3), (3, 3), 8),
    "depthwise_multiplier2_strided": ((1, 4, 11, 9), (8, 1, 3, 3), (2, 2), (2, 1, 1, 2), (2, 1), 4),
    "kernel_wider_than_bands": ((1, 4, 3, 40), (5, 4, 1, 17), (1, 1), (0, 0, 8, 8), (1, 1), 1),
    "dilation_beyond_input": ((1, 6, 5, 5), (7, 6, 3, 3), (1, 1), (12, 12, 12, 12), (12, 12), 1),
    "causal_1d": ((2, 8, 1, 50), (8, 8, 1, 2), (1, 1), (0, 0, 16, 0), (1, 16), 1),
    # > 2048 output pixels: grad_weight runs with 3 splits, grad_bias with 2
    "split_reductions": ((2, 3, 33, 33), (5, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "split_reductions_depthwise": ((1, 4, 48, 48), (4, 1, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 4),
    "empty_batch": ((0, 8, 7, 7), (8, 8, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # channels a multiple of 8 (16-byte rows: the tensor-core kernels' cp.async path), 40 in and 24
    # out: the forward takes 2 (16-bit) or 3 (TF32) K steps per tap, the last one partly past the
    # depth; grad_weight 3 or 6 pixel steps
    "aligned_channel_blocks": ((1, 40, 10, 9), (24, 40, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),
}

# Relative to the largest reference magnitude. Both sides accumulate in the
# same precision from the same inputs and differ only in summation order, so
# float64/float32 agree to a few units of their roundoff times the number of
# terms; half and bfloat16 results are rounded once at the end, so they may
# differ by one unit in the last place of the 16-bit output (2^-11, 2^-8),
# doubled for the summation-order difference before that rounding.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _inputs(name, dtype, channels_last=False):  # values drawn in float64, then rounded
    x_shape, w_shape, stride, padding, dilation, groups = CASES[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(w_shape, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(w_shape[0], generator=gen, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b, (list(stride), list(padding), list(dilation), groups)


def _assert_close(ours, ref, dtype, what):
    assert ours.shape == ref.shape, what
    assert ours.stride() == ref.stride() or ours.numel() == 0, f"{what}: strides {ours.stride()} vs {ref.stride()}"
    if ref.numel() == 0:
        return
    assert not torch.isnan(ours).any(), f"{what}: unwritten (NaN-poisoned) elements"
    scale = max(ref.double().abs().max().item(), 1e-30)
    err = (ours.double() - ref.double()).abs().max().item() / scale
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", CASES)
def test_emulated_cuda_kernels_match_the_cpu_kernels(emulated, name, dtype):
    x, w, b, args = _inputs(name, dtype)
    y = emulated.conv_forward(x, w, b, *args)
    _assert_close(y, _ops.conv_forward(x, w, b, *args), dtype, "forward")
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    ours = emulated.conv_backward(gy, x, w, *args, [True, True, True])
    ref = _ops.conv_backward(gy, x, w, *args, [True, True, True])
    for what, a, r in zip(("grad_input", "grad_weight", "grad_bias"), ours, ref):
        _assert_close(a, r, dtype, what)


@pytest.mark.parametrize("name", ["aspp_rate4", "depthwise", "stride_asymmetric"])
def test_emulated_cuda_kernels_write_channels_last_outputs(emulated, name):
    x, w, b, args = _inputs(name, torch.float64, channels_last=True)
    y = emulated.conv_forward(x, w, b, *args)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _assert_close(y, _ops.conv_forward(x, w, b, *args), torch.float64, "forward")
    gy = torch.randn(y.shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for what, a, r in zip(("grad_input", "grad_weight", "grad_bias"),
                          emulated.conv_backward(gy, x, w, *args, [True, True, True]),
                          _ops.conv_backward(gy, x, w, *args, [True, True, True])):
        _assert_close(a, r, torch.float64, what)


def test_emulated_cuda_backward_computes_only_the_masked_gradients(emulated):
    x, w, b, args = _inputs("aspp_rate4", torch.float32)
    gy = torch.randn(emulated.conv_forward(x, w, b, *args).shape)
    gi, gw, gb = emulated.conv_backward(gy, x, w, *args, [False, True, False])
    assert gi.numel() == 0 and gb.numel() == 0
    _assert_close(gw, _ops.conv_backward(gy, x, w, *args, [False, True, False])[1], torch.float32, "grad_weight")


def test_emulated_cuda_kernels_are_deterministic(emulated):
    x, w, b, args = _inputs("split_reductions", torch.float32)
    gy = torch.randn(emulated.conv_forward(x, w, b, *args).shape)
    first = emulated.conv_backward(gy, x, w, *args, [True, True, True])
    second = emulated.conv_backward(gy, x, w, *args, [True, True, True])
    for a, c in zip(first, second):
        assert torch.equal(a, c)



@pytest.mark.parametrize("name", ["aspp_rate4", "partial_tiles", "groups3", "split_reductions",
                                  "aligned_channel_blocks"])
def test_emulated_tf32_kernels_match_the_cpu_kernels_to_tf32_precision(emulated, name, tf32_matmul):
    """With allow_tf32, float32 runs the TF32 tensor-core kernels: inputs keep
    10 mantissa bits (unit roundoff 2^-11), so against the exact CPU result the
    error is a few 2^-11 times sqrt(K) relative to the largest value; we allow
    2^-11 * sqrt(K) * 4. The result must also differ from the exact path."""
    x, w, b, args = _inputs(name, torch.float32)
    y = emulated.conv_forward(x, w, b, *args)
    ref = _ops.conv_forward(x, w, b, *args)
    k = w.shape[1] * w.shape[2] * w.shape[3]
    err = (y - ref).abs().max().item() / ref.abs().max().item()
    assert 0 < err <= 4 * 2.0**-11 * k**0.5, err
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    ours = emulated.conv_backward(gy, x, w, *args, [True, True, False])
    exact = _ops.conv_backward(gy, x, w, *args, [True, True, False])
    depth = {"grad_input": w.shape[0] // args[3] * w.shape[2] * w.shape[3], "grad_weight": y[:, 0].numel()}
    for what, a, r in zip(("grad_input", "grad_weight"), ours, exact):
        err = (a - r).abs().max().item() / r.abs().max().item()
        assert err <= 4 * 2.0**-11 * depth[what] ** 0.5, (what, err)


# ------------------------------------------------------ instance assembling --
#
# The assembling kernels' per-element math is csrc/assemble_index.h, which the
# CPU kernels share; what runs here is the CUDA side proper: the thread ->
# element decomposition of every kernel, the grid-stride loops, the 32- and
# 64-bit index variants, the selected-window index and the host checks.


@pytest.fixture(params=[False, True], ids=["int32_index", "int64_index"])
def assemble_emulated(emulated, request):
    emulated.set_assemble_force_int64_indexing(request.param)
    yield emulated
    emulated.set_assemble_force_int64_indexing(False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["float64", "float32", "bfloat16"])
def test_emulated_instance_assemble_kernels_match_the_cpu_kernels(assemble_emulated, dtype):
    gen = torch.Generator().manual_seed(0)
    k, m = 3, 7
    scores = torch.randn(2, k * k, 9, 8, generator=gen, dtype=torch.float64).to(dtype)
    centers = torch.tensor([[1, 4, 2], [0, 0, 0], [1, 4, 2], [0, 3, 1]])  # grid 5 x 3 at stride (2, 3)
    for stride, c in (([1, 1], None), ([2, 3], None), ([2, 3], centers)):
        out = assemble_emulated.instance_assemble(scores, k, m, stride, c)
        assert torch.equal(out, torch.ops.atrous.instance_assemble(scores, k, m, stride, c))
        gy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
        ours = assemble_emulated.instance_assemble_backward(gy, 2, 9, 8, k, m, stride, c)
        # Same terms summed in the same order (assemble_index.h): bitwise equal.
        assert torch.equal(ours, torch.ops.atrous.instance_assemble_backward(gy, 2, 9, 8, k, m, stride, c))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["float64", "float32", "bfloat16"])
def test_emulated_fcis_assemble_kernels_match_the_cpu_kernels(assemble_emulated, dtype):
    gen = torch.Generator().manual_seed(0)
    k, size, classes, h, w = 3, 7, 2, 6, 7
    maps = torch.randn(2, 2 * k * k * classes, h, w, generator=gen, dtype=torch.float64).to(dtype)
    rois = torch.tensor([[0.0, -3, 1, 20, 15], [1, 2, 2, 9, 30], [1, 0, 0, 27, 23], [0, 5, 5, 5.5, 6]])
    inside, outside = assemble_emulated.fcis_assemble(maps, rois, k, size, 0.25)
    ref_in, ref_out = torch.ops.atrous.fcis_assemble(maps, rois, k, size, 0.25)
    assert torch.equal(inside, ref_in) and torch.equal(outside, ref_out)  # the same per-element code
    g_in = torch.randn(inside.shape, generator=gen, dtype=torch.float64).to(dtype)
    g_out = torch.randn(inside.shape, generator=gen, dtype=torch.float64).to(dtype)
    ours = assemble_emulated.fcis_assemble_backward(g_in, g_out, rois, k, size, 0.25, 2, h, w)
    ref = torch.ops.atrous.fcis_assemble_backward(g_in, g_out, rois, k, size, 0.25, 2, h, w)
    # The CUDA gather and the CPU plane scatter add the same terms in different
    # orders: a few roundings of the accumulation type apart (relative to the
    # largest gradient), then one rounding to the dtype.
    tol = {torch.float64: 1e-13, torch.float32: 1e-5, torch.bfloat16: 2.0**-7}[dtype]
    assert (ours.double() - ref.double()).abs().max() <= tol * ref.double().abs().max()


def test_emulated_assemble_kernels_handle_empty_inputs(emulated):
    scores = torch.randn(2, 4, 5, 5)
    assert emulated.instance_assemble(scores, 2, 3, [1, 1], torch.zeros(0, 3, dtype=torch.int64)).shape == (0, 3, 3)
    grad = emulated.instance_assemble_backward(torch.zeros(0, 3, 3), 2, 5, 5, 2, 3, [1, 1],
                                               torch.zeros(0, 3, dtype=torch.int64))
    assert torch.equal(grad, torch.zeros(2, 4, 5, 5))
    inside, _ = emulated.fcis_assemble(torch.randn(1, 8, 4, 4), torch.zeros(0, 5), 2, 3, 1.0)
    assert inside.shape == (0, 1, 3, 3)
