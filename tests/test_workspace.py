"""The CPU workspace pool (csrc/cpu/workspace.h): NHWC copies, packed weights
and partial sums of at least 1 MiB are kept between calls, within a limit, so
large workspaces stop paying fresh page faults on every call."""
import os
import subprocess
import sys
import threading

import pytest
import torch
from conftest import assert_bitwise_equal, atrous_conv, conv_and_grads, random_conv_inputs

import atrous_cuda
from atrous_cuda import _C

MiB = 1 << 20
# A float32 NCHW input of 2 x 96 x 40 x 40 (1.2 MiB): its NHWC copy is pooled.
X_SHAPE, W_SHAPE = (2, 96, 40, 40), (32, 96, 3, 3)
KWARGS = dict(padding=4, dilation=4)


@pytest.fixture
def pool_limit():
    limit = _C.cpu_workspace_cache_limit()
    _C.empty_cpu_workspace_cache()
    yield
    atrous_cuda.set_cpu_workspace_cache_limit(limit)
    _C.empty_cpu_workspace_cache()


def _forward_nchw(seed=0):
    x, w, b = random_conv_inputs(X_SHAPE, W_SHAPE, dtype=torch.float32, seed=seed)
    return atrous_conv(x, w, b, **KWARGS)


def test_default_limit_is_256_mib_unless_the_environment_says_otherwise():
    expected = int(os.environ.get("ATROUS_CPU_WORKSPACE_CACHE_MB", "256")) * MiB
    assert atrous_cuda.build_info()["cpu_workspace_cache_limit"] == expected


def test_nchw_input_copy_is_kept_and_reused(pool_limit):
    _forward_nchw()
    held = _C.cpu_workspace_cache_bytes()
    assert held >= X_SHAPE[0] * X_SHAPE[1] * X_SHAPE[2] * X_SHAPE[3] * 4
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
    for shape in [(1, 64, 64, 64), (1, 96, 48, 48), (2, 80, 40, 40)]:  # 1-1.2 MiB inputs, different sizes
        x, w, b = random_conv_inputs(shape, (16, shape[1], 3, 3), dtype=torch.float32)
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
        "x = torch.randn(2, 96, 40, 40); w = torch.randn(32, 96, 3, 3)\n"
        "try:\n"
        "    atrous_cuda.atrous_conv2d(x, w, None, padding=4, dilation=4)\n"
        "except RuntimeError as e:\n"
        "    print('error:', e); raise SystemExit(0)\n"
        "print(_C.cpu_workspace_cache_limit(), _C.cpu_workspace_cache_bytes())\n"
    )
    env = dict(os.environ, ATROUS_CPU_WORKSPACE_CACHE_MB=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    if expected == "error":
        assert "expected ATROUS_CPU_WORKSPACE_CACHE_MB to be a whole number of megabytes >= 0, got 'lots'" in out.stdout
    elif expected == "off":
        assert out.stdout.split() == ["0", "0"]
    else:
        limit, held = map(int, out.stdout.split())
        assert limit == expected and 0 < held <= expected
