"""The packed-weight cache (csrc/cpu/weight_cache.h, issue 14 §2): a CPU conv
keeps its weight's GEMM packing between calls and serves it again only while
the weight is unchanged: the same tensor and storage, the same version
counter and the same bytes. Every way a user changes a weight is covered
here, each against a reference computed with the cache turned off, so a stale
packing fails the test; so are the bound, clearing (with RSS) and misuse."""
import copy
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CPU_ISAS, seeded_randn, use_cpu_isa

import atrous_cuda
from atrous_cuda import AtrousConv2d, atrous_conv2d

MiB = 1 << 20
KWARGS = dict(padding=2, dilation=2)


def info():
    return atrous_cuda.cpu_weight_cache_info()


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts from an empty cache at the default limit, and leaves it so."""
    limit = info()["limit"]
    atrous_cuda.clear_cpu_weight_cache()
    yield
    atrous_cuda.set_cpu_weight_cache_limit(limit)
    atrous_cuda.clear_cpu_weight_cache()


def uncached(fn):
    """fn() with the cache off (every call packs afresh). Turning it off empties
    it, so tests of invalidation use fresh_packing instead."""
    limit = info()["limit"]
    atrous_cuda.set_cpu_weight_cache_limit(0)
    try:
        return fn()
    finally:
        atrous_cuda.set_cpu_weight_cache_limit(limit)


def fresh_packing(x, w, **kwargs):
    """The conv with a copy of w as it is now: a tensor the cache has never seen,
    so it is packed afresh, without disturbing what the cache holds for w."""
    return atrous_conv2d(x, w.detach().clone(), **{**KWARGS, **kwargs})


def fresh_module(conv):
    return copy.deepcopy(conv)


def conv_inputs(cin=16, cout=24, size=12, dtype=torch.float32, seed=0):
    return seeded_randn((2, cin, size, size), dtype, seed), seeded_randn((cout, cin, 3, 3), dtype, seed + 1)


def assert_fresh(x, w, **kwargs):
    """Our conv with w as it is now equals the same conv packed afresh, bitwise."""
    got = atrous_conv2d(x, w, **{**KWARGS, **kwargs})
    assert torch.equal(got, fresh_packing(x, w, **kwargs)), "served a packing of the weight as it was before"
    return got


def assert_changed_and_fresh(x, w, **kwargs):
    """After a change to w: the next call repacks (a miss) and equals a fresh packing."""
    misses = info()["misses"]
    got = atrous_conv2d(x, w, **{**KWARGS, **kwargs})
    assert info()["misses"] > misses, "the change was not seen: the old packing was served"
    assert torch.equal(got, fresh_packing(x, w, **kwargs))


# ------------------------------------------------------------------ hits --


def test_second_call_is_served_from_the_cache_and_equals_a_fresh_packing():
    x, w = conv_inputs()
    first = atrous_conv2d(x, w, **KWARGS)
    before = info()
    second = atrous_conv2d(x, w, **KWARGS)
    after = info()
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    assert after["entries"] == 1 and after["bytes"] > 0
    assert torch.equal(first, second)
    assert torch.equal(second, uncached(lambda: atrous_conv2d(x, w, **KWARGS)))


def test_forward_and_grad_input_keep_packings_of_their_own():
    x, w = conv_inputs()
    x.requires_grad_()
    w.requires_grad_()
    for _ in range(2):
        x.grad = w.grad = None
        atrous_conv2d(x, w, **KWARGS).sum().backward()
    assert info()["entries"] == 2  # the forward panels and grad_input's transposed panels
    grads = (x.grad.clone(), w.grad.clone())
    x.grad = w.grad = None
    uncached(lambda: atrous_conv2d(x, w, **KWARGS).sum().backward())
    assert torch.equal(grads[0], x.grad) and torch.equal(grads[1], w.grad)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_isa_and_dtype_sees_an_in_place_update(isa, dtype, restore_cpu_isa):
    use_cpu_isa(isa)
    x, w = conv_inputs(dtype=dtype)
    assert_fresh(x, w)
    with torch.no_grad():
        w.mul_(-0.5)
    assert_changed_and_fresh(x, w)


def test_depthwise_packing_is_cached_and_invalidated():
    x, _ = conv_inputs(cin=8)
    x = x.contiguous(memory_format=torch.channels_last)  # the depthwise path with a packed [tap][channel] weight
    w = seeded_randn((8, 1, 3, 3), torch.float32, 3)
    assert_fresh(x, w, groups=8)
    w[0, 0, 1, 1] = 7.0
    assert_changed_and_fresh(x, w, groups=8)


def test_the_same_weight_at_two_group_counts_keeps_two_packings():
    w = seeded_randn((8, 4, 3, 3), torch.float32, 1)
    x1 = seeded_randn((1, 4, 10, 10), torch.float32, 2)
    x2 = seeded_randn((1, 8, 10, 10), torch.float32, 3)
    for _ in range(2):
        assert_fresh(x1, w, groups=1)
        assert_fresh(x2, w, groups=2)


# --------------------------------------------------------- invalidation --


def test_optimizer_step_is_seen():
    torch.manual_seed(0)
    conv = AtrousConv2d(16, 16, 3, padding=2, dilation=2)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    x = seeded_randn((2, 16, 12, 12), torch.float32)
    for _ in range(3):
        opt.zero_grad()
        misses = info()["misses"]
        out = conv(x)
        assert info()["misses"] > misses  # each step changed the weight
        assert torch.equal(out, fresh_module(conv)(x))
        out.square().mean().backward()
        opt.step()
    assert torch.equal(conv(x), fresh_module(conv)(x))


def test_load_state_dict_is_seen():
    torch.manual_seed(0)
    a, b = AtrousConv2d(16, 16, 3, padding=2, dilation=2), AtrousConv2d(16, 16, 3, padding=2, dilation=2)
    x = seeded_randn((1, 16, 12, 12), torch.float32)
    with torch.no_grad():
        before = a(x)
        a.load_state_dict(b.state_dict())
        after = a(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, b(x))


def test_writes_through_data_which_bypass_the_version_counter_are_seen():
    """p.data has a version counter of its own: only the bytes tell."""
    x, w = conv_inputs()
    w.requires_grad_()
    version = w._version
    assert_fresh(x, w)
    w.data.mul_(2.0)
    assert w._version == version  # torch did not count it
    assert_changed_and_fresh(x, w)


def test_writes_through_a_numpy_view_are_seen():
    x, w = conv_inputs()
    assert_fresh(x, w)
    np.asarray(w.numpy())[3, 5, 1, 2] += 1.0  # one element, no torch op at all
    assert_changed_and_fresh(x, w)


def test_assigning_new_data_is_seen():
    torch.manual_seed(0)
    conv = AtrousConv2d(16, 16, 3, padding=2, dilation=2)
    x = seeded_randn((1, 16, 12, 12), torch.float32)
    with torch.no_grad():
        conv(x)
        conv.weight.data = torch.randn_like(conv.weight)
        assert torch.equal(conv(x), fresh_module(conv)(x))


def test_a_new_weight_in_a_freed_weights_memory_is_not_served_the_old_packing():
    x, w = conv_inputs()
    assert_fresh(x, w)
    address = w.data_ptr()
    del w
    for seed in range(20):  # the allocator hands the same block back, usually at once
        w = seeded_randn((24, 16, 3, 3), torch.float32, 100 + seed)
        if w.data_ptr() == address:
            break
    assert_fresh(x, w)


def test_a_weight_that_died_leaves_the_cache_at_the_next_packing():
    x, w = conv_inputs()
    atrous_conv2d(x, w, **KWARGS)
    assert info()["entries"] == 1
    del w
    other = seeded_randn((24, 16, 3, 3), torch.float32, 9).clone()
    atrous_conv2d(x, other, **KWARGS)
    assert info()["entries"] == 1


def test_inference_tensors_are_packed_afresh_every_call():
    """They have no version counter, so nothing could tell an update."""
    with torch.inference_mode():
        x, w = conv_inputs()
        misses = info()["misses"]
        atrous_conv2d(x, w, **KWARGS)
        w.add_(1.0)
        got = atrous_conv2d(x, w, **KWARGS)
        assert info()["entries"] == 0 and info()["misses"] == misses
        assert torch.equal(got, uncached(lambda: atrous_conv2d(x, w, **KWARGS)))


def test_a_non_dense_weight_view_is_packed_afresh():
    x, _ = conv_inputs()
    base = seeded_randn((24, 32, 3, 3), torch.float32, 5)
    w = base[:, ::2]  # not dense in memory
    got = atrous_conv2d(x, w, **KWARGS)
    assert info()["entries"] == 0
    assert torch.equal(got, fresh_packing(x, w))


def test_concurrent_calls_from_threads_get_their_own_weights():
    xs = [conv_inputs(seed=10 * i)[0] for i in range(4)]
    ws = [conv_inputs(seed=10 * i)[1] for i in range(4)]
    want = [uncached(lambda i=i: atrous_conv2d(xs[i], ws[i], **KWARGS)) for i in range(4)]
    errors = []

    def work(i):
        for _ in range(10):
            if not torch.equal(atrous_conv2d(xs[i], ws[i], **KWARGS), want[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------- bound and memory --


def test_the_cache_never_holds_more_than_its_limit():
    x = seeded_randn((1, 256, 6, 6), torch.float32)
    weights = [seeded_randn((128, 256, 3, 3), torch.float32, s) for s in range(5)]  # 1.125 MiB packed each
    want = [uncached(lambda w=w: atrous_conv2d(x, w, **KWARGS)) for w in weights]
    atrous_cuda.set_cpu_weight_cache_limit(2 * MiB)
    for _ in range(2):
        for w, expected in zip(weights, want):
            assert torch.equal(atrous_conv2d(x, w, **KWARGS), expected)
            assert 0 < info()["bytes"] <= 2 * MiB
    assert info()["entries"] == 1
    atrous_cuda.set_cpu_weight_cache_limit(MiB)  # a packing larger than the limit is not kept
    assert info()["bytes"] == 0
    assert torch.equal(atrous_conv2d(x, weights[0], **KWARGS), want[0])
    assert info()["entries"] == 0


def test_limit_zero_turns_the_cache_off():
    atrous_cuda.set_cpu_weight_cache_limit(0)
    x, w = conv_inputs()
    atrous_conv2d(x, w, **KWARGS)
    assert info()["entries"] == 0 and info()["bytes"] == 0


CLEAR_CHECK = """
import os, torch, atrous_cuda
from atrous_cuda import atrous_conv2d

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

x, w = torch.randn(1, 1024, 4, 4), torch.randn(1024, 1024, 3, 3)
atrous_conv2d(x, w, padding=2, dilation=2)
held = atrous_cuda.cpu_weight_cache_info()["bytes"]
before = rss()
atrous_cuda.clear_cpu_weight_cache()
print(held, before - rss(), atrous_cuda.cpu_weight_cache_info()["bytes"])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_clearing_frees_the_memory():
    """A 1024 -> 1024 3x3 weight packs into 36 MiB (above glibc's largest mmap
    threshold, so freeing it unmaps the pages at once): clearing drops RSS by
    about that much. In a process of its own, so that what earlier tests left
    in the allocator cannot blur the figure."""
    out = subprocess.run([sys.executable, "-c", CLEAR_CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    held, freed, left = map(int, out.stdout.split())
    assert held >= 36 * MiB and left == 0
    assert freed >= 0.9 * held, f"clearing freed {freed / MiB:.1f} MiB of RSS, the cache held {held / MiB:.1f}"


# ------------------------------------------------------------- misuse --


def test_a_negative_limit_is_refused():
    with pytest.raises(RuntimeError, match=r"set_cpu_weight_cache_limit: expected bytes >= 0, got -1"):
        atrous_cuda.set_cpu_weight_cache_limit(-1)


def test_the_environment_variable_sets_the_limit_and_a_bad_value_is_named():
    code = "import atrous_cuda; print(atrous_cuda.cpu_weight_cache_info()['limit'])"
    env = dict(os.environ, ATROUS_CPU_WEIGHT_CACHE_MB="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(3 * MiB)
    env["ATROUS_CPU_WEIGHT_CACHE_MB"] = "lots"
    bad = subprocess.run([sys.executable, "-c", code + "; import torch; from atrous_cuda import atrous_conv2d; "
                          "atrous_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3))"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode != 0
    assert "ATROUS_CPU_WEIGHT_CACHE_MB to be a whole number of megabytes >= 0, got 'lots'" in bad.stderr


def test_build_info_reports_the_limit():
    assert atrous_cuda.build_info()["cpu_weight_cache_limit"] == info()["limit"]


def test_torch_reference_agrees():
    """The cached path is still the conv: against torch in float64."""
    x, w = conv_inputs(dtype=torch.float64)
    for _ in range(2):
        got = atrous_conv2d(x, w, **KWARGS)
        torch.testing.assert_close(got, F.conv2d(x, w, **KWARGS))
