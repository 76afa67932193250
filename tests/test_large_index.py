"""64-bit indexing: a conv whose input and output exceed 2^31 elements.

One image of 1 x 1 x 46341 x 46341 (2,147,488,281 elements > 2^31), a dilated
3x1 kernel (dilation 1000 along H) and a bias: the expected values at the far
end of the tensor are computed by hand from the inputs, so no second huge
tensor is needed. Each float32 copy is 8.6 GB, so the CPU run needs about
18 GB of free memory and is opt-in (ATROUS_BIG_TESTS=1, because CI machines
have 24 GB in all); the CUDA run needs a GPU with 20 GB free and runs whenever
one is present.
"""
import os

import pytest
import torch

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
