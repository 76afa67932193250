"""The CPU workspace pool (csrc/cpu/workspace.h): NHWC copies, packed weights
and partial sums of at least 1 MiB are kept between calls, within a limit, so
large workspaces stop paying fresh page faults on every call. And the
workspace target of the CPU kernels: a float forward or grad_input, NCHW or
channels_last, needs nothing beyond the packed weights (no copy of its input
operand, no im2col)."""
import os
import subprocess
import sys
import threading

import pytest
import torch
from conftest import (
    CPU_ISAS,
    assert_bitwise_equal,
    assert_matches,
    atrous_conv,
    conv_and_grads,
    random_conv_inputs,
    use_cpu_isa,
)

import atrous_cuda
from atrous_cuda import _C

MiB = 1 << 20
# Weights of 64 x 512 x 3 x 3: their packed panels (1.125 MiB) are pooled.
X_SHAPE, W_SHAPE = (2, 512, 10, 10), (64, 512, 3, 3)
PACKED_BYTES = 64 * 512 * 9 * 4
KWARGS = dict(padding=4, dilation=4)


@pytest.fixture
def pool_limit():
    """Restores the pool's limit after the test, and turns the packed-weight
    cache (tests/test_weight_cache.py) off during it: a packing then returns to
    the pool when its call ends, as one the cache does not keep does, and the
    pool's bytes below count only workspaces."""
    limit = _C.cpu_workspace_cache_limit()
    weight_cache_limit = atrous_cuda.cpu_weight_cache_info()["limit"]
    atrous_cuda.set_cpu_weight_cache_limit(0)
    _C.empty_cpu_workspace_cache()
    yield
    atrous_cuda.set_cpu_weight_cache_limit(weight_cache_limit)
    atrous_cuda.set_cpu_workspace_cache_limit(limit)
    _C.empty_cpu_workspace_cache()


def _forward_nchw(seed=0):
    x, w, b = random_conv_inputs(X_SHAPE, W_SHAPE, dtype=torch.float32, seed=seed)
    return atrous_conv(x, w, b, **KWARGS)


def test_default_limit_is_256_mib_unless_the_environment_says_otherwise():
    expected = int(os.environ.get("ATROUS_CPU_WORKSPACE_CACHE_MB", "256")) * MiB
    assert atrous_cuda.build_info()["cpu_workspace_cache_limit"] == expected


def test_packed_weights_are_kept_and_reused(pool_limit):
    _forward_nchw()
    held = _C.cpu_workspace_cache_bytes()
    assert held == PACKED_BYTES
    for _ in range(3):
        _forward_nchw()
    assert _C.cpu_workspace_cache_bytes() == held, "a second call allocated instead of reusing"
    atrous_cuda.empty_cpu_workspace_cache()
    assert _C.cpu_workspace_cache_bytes() == 0


def test_limit_zero_turns_the_pool_off(pool_limit):
    atrous_cuda.set_cpu_workspace_cache_limit(0)
    _forward_nchw()
    assert _C.cpu_workspace_cache_bytes() == 0


def test_pool_never_holds_more_than_its_limit(pool_limit):
    atrous_cuda.set_cpu_workspace_cache_limit(2 * MiB)
    # packed weights of 1.125, 1.25 and 1.41 MiB (columns padded to 16)
    for cout, cin in [(64, 512), (80, 448), (72, 512)]:
        x, w, b = random_conv_inputs((1, cin, 8, 8), (cout, cin, 3, 3), dtype=torch.float32)
        atrous_conv(x, w, b, padding=2, dilation=2)
        assert 0 < _C.cpu_workspace_cache_bytes() <= 2 * MiB
    atrous_cuda.set_cpu_workspace_cache_limit(MiB // 2)  # lowering the limit frees what is above it
    assert _C.cpu_workspace_cache_bytes() <= MiB // 2


def test_reused_workspaces_give_bitwise_the_same_results(pool_limit):
    """ATROUS_POISON=1 (conftest) fills every workspace with NaN bytes as it is
    handed out, fresh or reused, so an element a kernel reads before writing shows."""
    x, w, b = random_conv_inputs(X_SHAPE, W_SHAPE, dtype=torch.float32)
    first = conv_and_grads(atrous_conv, x, w, b, **KWARGS)
    assert _C.cpu_workspace_cache_bytes() > 0
    again = conv_and_grads(atrous_conv, x, w, b, **KWARGS)
    assert_bitwise_equal(first, again)


def test_concurrent_calls_share_the_pool_safely(pool_limit):
    expected = [_forward_nchw(seed) for seed in range(4)]
    results, errors = [None] * 4, []

    def run(i):
        try:
            for _ in range(5):
                results[i] = _forward_nchw(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for ours, ref in zip(results, expected):
        assert torch.equal(ours, ref)


def test_negative_limit_is_an_error():
    with pytest.raises(RuntimeError, match=r"expected bytes >= 0, got -1"):
        atrous_cuda.set_cpu_workspace_cache_limit(-1)


@pytest.mark.parametrize("value, expected", [("0", "off"), ("3", 3 * MiB), ("lots", "error")])
def test_limit_from_the_environment(value, expected):
    code = (
        "import torch, atrous_cuda\n"
        "from atrous_cuda import _C\n"
        "x = torch.randn(2, 512, 10, 10); w = torch.randn(64, 512, 3, 3)\n"
        "try:\n"
        "    atrous_cuda.atrous_conv2d(x, w, None, padding=4, dilation=4)\n"
        "except RuntimeError as e:\n"
        "    print('error:', e); raise SystemExit(0)\n"
        "print(_C.cpu_workspace_cache_limit(), _C.cpu_workspace_cache_bytes())\n"
    )
    env = dict(os.environ, ATROUS_CPU_WORKSPACE_CACHE_MB=value, ATROUS_CPU_WEIGHT_CACHE_MB="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    if expected == "error":
        assert "expected ATROUS_CPU_WORKSPACE_CACHE_MB to be a whole number of megabytes >= 0, got 'lots'" in out.stdout
    elif expected == "off":
        assert out.stdout.split() == ["0", "0"]
    else:
        limit, held = map(int, out.stdout.split())
        assert limit == expected and 0 < held <= expected


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("side", [47, 64], ids=["47x47", "64x64"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_forward_and_grad_input_need_only_the_packed_weights(pool_limit, restore_cpu_isa, isa, memory_format,
                                                             side, dtype):
    """Extra memory no larger than the output plus one packed copy of the
    weights: the input (forward) and grad_output (grad_input) are read where
    they lie, channels_last on every instruction set and NCHW planes on
    AVX-512 (cpu::gather_gemm_reads_planes; on AVX2 and the baseline an NHWC
    copy measured faster, and is made) unless the planes alias in the L1
    cache: a 64 x 64 plane is a multiple of 4 KiB, so 64 channels' lines would
    share one set, and is copied too. The packed weights here (256 x 16 x 9
    values) are below the pool's 1 MiB floor, so the pool holds nothing but
    such a copy."""
    use_cpu_isa(isa)
    atrous_cuda.set_cpu_workspace_cache_limit(256 * MiB)
    reads_planes = memory_format == torch.channels_last or (isa.startswith("avx512") and side == 47)
    x, w, _ = random_conv_inputs((1, 256, side, side), (16, 256, 3, 3), dtype=dtype, seed=1)
    copy_bytes = 0 if reads_planes else x.numel() * x.element_size()
    y = atrous_conv(x.contiguous(memory_format=memory_format), w, None, padding=6, dilation=6)
    assert _C.cpu_workspace_cache_bytes() == copy_bytes, "forward"
    assert_matches(y, torch.nn.functional.conv2d(x.double(), w.double(), padding=6, dilation=6), dtype, "output")
    check_grad_input_workspace(side, 16, memory_format, dtype, copy_bytes)


def check_grad_input_workspace(side, in_channels, memory_format, dtype, copy_bytes, out_channels=256):
    """A grad_input from out_channels to in_channels on side x side maps
    leaves exactly copy_bytes in the emptied pool, and matches float64 torch."""
    _C.empty_cpu_workspace_cache()
    gy = torch.randn(1, out_channels, side, side, dtype=dtype).contiguous(memory_format=memory_format)
    x_small = torch.randn(1, in_channels, side, side, dtype=dtype)
    w_wide = torch.randn(out_channels, in_channels, 3, 3, dtype=dtype)
    (grad_input, _, _) = torch.ops.atrous.conv_backward(gy, x_small, w_wide, [1, 1], [6, 6, 6, 6], [6, 6],
                                                        1, [True, False, False])
    assert _C.cpu_workspace_cache_bytes() == copy_bytes, "grad_input"
    f64 = torch.float64
    ref = torch.nn.grad.conv2d_input(x_small.shape, w_wide.to(f64), gy.to(f64), padding=6, dilation=6)
    assert_matches(grad_input, ref, dtype, "grad_input")


SIXTEEN_BIT_PATHS = {  # id: (isa, dtype, the narrow forward's copy: bytes per element, layouts copied)
    # the dot products' pair rows, from NCHW planes only
    "bfloat16_pairs": ("avx512_bf16", torch.bfloat16, 2, [torch.contiguous_format]),
    # float NHWC rows, from either layout
    "bfloat16_widened": ("avx512", torch.bfloat16, 4, [torch.contiguous_format, torch.channels_last]),
    "float16_widened": ("avx512_bf16", torch.float16, 4, [torch.contiguous_format, torch.channels_last]),
}


@pytest.mark.parametrize("path", SIXTEEN_BIT_PATHS.values(), ids=SIXTEEN_BIT_PATHS.keys())
@pytest.mark.parametrize("side", [64, 65], ids=["64x64", "65x65"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_16bit_operands_need_only_the_packed_weights(pool_limit, restore_cpu_isa, memory_format, side, path):
    """The same for 16-bit operands on AVX-512: channels_last rows (with an
    even channel count for the bfloat16 pairs) are read as they are, and NCHW
    planes larger than the output (192 channels into 128 here, both ways) are
    packed into pairs (AVX512_BF16) or widened a cache block at a time inside
    the GEMM where a unit spans at least 8 column panels, so the pool stays
    empty. Narrower units (32 columns: 2 panels) copy NCHW planes into pair
    rows, or either layout into float rows, which the pool then holds (all
    above its 1 MiB floor, while the packed weights, at most 192 x 128 x 9
    float values, stay below it)."""
    isa, dtype, narrow_copy_element_size, narrow_copy_layouts = path
    use_cpu_isa(isa)
    atrous_cuda.set_cpu_workspace_cache_limit(256 * MiB)
    for out_channels in (128, 32):
        x, w, _ = random_conv_inputs((1, 192, side, side), (out_channels, 192, 3, 3), dtype=dtype, seed=1)
        copied = out_channels == 32 and memory_format in narrow_copy_layouts
        copy_bytes = x.numel() * narrow_copy_element_size if copied else 0
        _C.empty_cpu_workspace_cache()
        y = atrous_conv(x.contiguous(memory_format=memory_format), w, None, padding=6, dilation=6)
        assert _C.cpu_workspace_cache_bytes() == copy_bytes, f"forward to {out_channels} channels"
        assert_matches(y, torch.nn.functional.conv2d(x.double(), w.double(), padding=6, dilation=6), dtype,
                       f"output, {out_channels} channels")
    check_grad_input_workspace(side, 128, memory_format, dtype, copy_bytes=0, out_channels=192)
