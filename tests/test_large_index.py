"""64-bit indexing: a conv whose input and output exceed 2^31 elements.

One image of 1 x 1 x 46341 x 46341 (2,147,488,281 elements > 2^31), a dilated
3x1 kernel (dilation 1000 along H) and a bias: the expected values at the far
end of the tensor are computed by hand from the inputs, so no second huge
tensor is needed. Each float32 copy is 8.6 GB, so the CPU run needs about
18 GB of free memory and is opt-in (ATROUS_BIG_TESTS=1, because CI machines
have 24 GB in all); the CUDA run needs a GPU with 20 GB free and runs whenever
one is present.

The bfloat16 CPU test below needs less (a 4.3 GB input, and the kernels'
4.3 GB bfloat16 NHWC copy of it on CPUs with AVX512_BF16, an 8.6 GB float32
copy elsewhere) and runs by default wherever 16 GB are free.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_matches

import atrous_cuda

SIDE = 46341  # SIDE**2 > 2**31
DILATION = 1000


def _big_case(device):
    x = torch.empty((1, 1, SIDE, SIDE), dtype=torch.float32, device=device)
    # x[i, j] = (i * SIDE + j) mod 1024: small, exactly representable values,
    # filled a band of rows at a time to keep the int64 temporaries small.
    cols = torch.arange(SIDE, device=device, dtype=torch.int64)
    for r0 in range(0, SIDE, 1024):
        rows = torch.arange(r0, min(SIDE, r0 + 1024), device=device, dtype=torch.int64)
        x[0, 0, r0:r0 + len(rows)] = ((rows[:, None] * SIDE + cols[None, :]) % 1024).float()
    w = torch.tensor([1.0, 2.0, 4.0], device=device).view(1, 1, 3, 1)
    b = torch.tensor([0.5], device=device)
    return x, w, b


def _expected(i, j):
    def at(r):
        return float(((r * SIDE + j) % 1024)) if 0 <= r < SIDE else 0.0

    return 0.5 + 1.0 * at(i - DILATION) + 2.0 * at(i) + 4.0 * at(i + DILATION)


def _check(device):
    x, w, b = _big_case(device)
    y = atrous_cuda.atrous_conv2d(x, w, b, padding=(DILATION, 0), dilation=(DILATION, 1))
    assert y.shape == x.shape and y.numel() > 2**31
    del x
    # Flat offsets past 2^31 start in the last row at column 41708. Check
    # outputs stored past 2^31, and outputs that read inputs past 2^31 through
    # the lower tap (row SIDE-1-DILATION reads row SIDE-1).
    for i, j in ((SIDE - 1, SIDE - 1), (SIDE - 1, 41708), (SIDE - 1 - DILATION, 45000), (SIDE - 1, 5)):
        assert y[0, 0, i, j].item() == _expected(i, j), (i, j)
    assert (SIDE - 1) * SIDE + 41708 >= 2**31 > (SIDE - 1) * SIDE + 41707


@pytest.mark.skipif(os.environ.get("ATROUS_BIG_TESTS") != "1",
                    reason="needs ~18 GB of free memory; opt in with ATROUS_BIG_TESTS=1")
def test_cpu_conv_beyond_2_pow_31_elements():
    _check("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
def test_cuda_conv_beyond_2_pow_31_elements():
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2**30:
        pytest.skip(f"needs 20 GB of free GPU memory, {free / 2**30:.1f} GB free")
    _check("cuda")


# --------------------------------------------- bfloat16, checked against torch --

# Input 1 x 2 x 32769 x 32768 bfloat16 = 2,147,549,184 elements > 2^31: the
# last 2 rows of channel 1 (and, in the kernels' float32 NHWC copy, the last 2
# rows of every channel) lie past flat offset 2^31. A (3, 1) kernel dilated
# by 100 along H, stride (4, 8) to keep the output (8193 x 4096) and the
# arithmetic small; torch checks bands of output rows on small slices.
BF16_SHAPE = (1, 2, 32769, 32768)
BF16_DILATION, BF16_STRIDE = 100, (4, 8)


def _available_memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def _torch_rows(x, w, b, first, last):
    """torch's output rows first..last-1 from the input rows they read, zero-filled
    outside the image (the conv's padding), in float32 from the bfloat16 values."""
    d, (sh, sw) = BF16_DILATION, BF16_STRIDE
    lo, hi = first * sh - d, (last - 1) * sh + d + 1  # input rows read, padding included
    piece = x[:, :, max(lo, 0):min(hi, x.shape[2])].float()
    piece = F.pad(piece, (0, 0, max(-lo, 0), max(hi - x.shape[2], 0)))
    return F.conv2d(piece, w.float(), b.float(), stride=(sh, sw), dilation=(d, 1))


@pytest.mark.skipif(_available_memory_bytes() < 16 * 2**30,
                    reason="needs 16 GB of available memory (4.3 GB input, up to 8.6 GB NHWC copy, 0.1 GB output)")
def test_cpu_bfloat16_conv_beyond_2_pow_31_elements():
    """On the 2-core build machine: 5-7 s and 9.1 GB peak RSS with AVX512_BF16
    (a bfloat16 NHWC copy), 6-15 s and 13.3 GB through the float32 copy."""
    x = torch.empty(BF16_SHAPE, dtype=torch.bfloat16)
    assert x.numel() > 2**31
    x.fill_(0.5)
    g = torch.Generator().manual_seed(0)
    band = 3 * BF16_DILATION  # random values wherever a checked output reads
    x[:, :, :band] = torch.randn((1, 2, band, BF16_SHAPE[3]), generator=g).bfloat16()
    x[:, :, -band:] = torch.randn((1, 2, band, BF16_SHAPE[3]), generator=g).bfloat16()
    w = torch.randn((2, 2, 3, 1), generator=g).bfloat16()
    b = torch.randn(2, generator=g).bfloat16()
    y = atrous_cuda.atrous_conv2d(x, w, b, stride=BF16_STRIDE, padding=(BF16_DILATION, 0), dilation=(BF16_DILATION, 1))
    assert y.shape == (1, 2, 8193, 4096)
    # The last output row reads input row 32768 (past offset 2^31) through its middle tap.
    assert (y.shape[2] - 1) * BF16_STRIDE[0] == BF16_SHAPE[2] - 1
    for first, last in ((0, 24), (y.shape[2] - 24, y.shape[2])):
        assert_matches(y[:, :, first:last], _torch_rows(x, w, b, first, last), torch.bfloat16, f"rows {first}:{last}")
