"""The instance-assembling ops: atrous::instance_assemble (InstanceFCN) and
atrous::fcis_assemble (FCIS), with their backward ops.

References are plain torch in float64, written independently of the kernels:
  * instance assembling: pad + F.unfold (every window of every map, k*k times
    the memory the op needs) and a pick of each offset's cell map, plus a
    literal loop over equation (1) on a tiny case;
  * FCIS assembling: F.grid_sample (bilinear, zeros padding,
    align_corners=False) of every map at the RoI's sample points, then a pick
    of each output pixel's cell map; its autograd gives the reference gradient.
The C++ kernels are poisoned with NaN first (conftest), so an element a
kernel forgets to write fails the comparison.
"""
import itertools
import re

import pytest
import torch
import torch.nn.functional as F

import atrous_cuda
from atrous_cuda import _C, fcis_assemble, instance_assemble

instance_op = torch.ops.atrous.instance_assemble.default
instance_backward_op = torch.ops.atrous.instance_assemble_backward.default
fcis_op = torch.ops.atrous.fcis_assemble.default
fcis_backward_op = torch.ops.atrous.fcis_assemble_backward.default


# ------------------------------------------------------------- references --


def cells(k, m):
    """cell(u) = floor(u*k/m) for u in [0, m)."""
    return torch.arange(m) * k // m


def ref_instance_assemble(scores, k, m, stride=(1, 1), centers=None):
    s = scores.double()
    n, _, h, w = s.shape
    before, after = m // 2, m - 1 - m // 2  # offsets u - m//2 span [-m//2, m-1-m//2]
    patches = F.unfold(F.pad(s, (before, after, before, after)), m, stride=stride)
    gh, gw = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
    patches = patches.view(n, k * k, m, m, gh, gw)
    c = cells(k, m)
    u = torch.arange(m)
    picked = patches[:, c[:, None] * k + c[None, :], u[:, None], u[None, :]]  # (N, m, m, Hc, Wc)
    out = picked.permute(0, 3, 4, 1, 2)
    if centers is not None:
        out = out[centers[:, 0], centers[:, 1], centers[:, 2]]
    return out


def ref_fcis_assemble(maps, rois, k, size, scale):
    maps, rois = maps.double(), rois.double()
    _, channels, h, w = maps.shape
    classes = channels // (2 * k * k)
    c = cells(k, size)
    p = torch.arange(size, dtype=torch.float64)
    idx = torch.arange(size)
    inside, outside = [], []
    for roi in rois:
        n = int(roi[0])
        x1, y1, x2, y2 = (roi[1:] * scale).unbind()
        ys = y1 + (p + 0.5) * (y2 - y1) / size - 0.5
        xs = x1 + (p + 0.5) * (x2 - x1) / size - 0.5
        # grid_sample, align_corners=False: pixel x sits at normalized (2x + 1)/W - 1.
        gy, gx = torch.meshgrid((2 * ys + 1) / h - 1, (2 * xs + 1) / w - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        sampled = F.grid_sample(maps[n:n + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled[0].view(classes, 2, k, k, size, size)
        picked = sampled[:, :, c[:, None], c[None, :], idx[:, None], idx[None, :]]  # (C+1, 2, P, P)
        outside.append(picked[:, 0])
        inside.append(picked[:, 1])
    empty = maps.new_zeros((0, classes, size, size))
    return (torch.stack(inside) if inside else empty), (torch.stack(outside) if outside else empty)


def random_rois(gen, count, batch, height, width, scale):
    """Boxes in image coordinates, some reaching past the map's border."""
    img_h, img_w = height / scale, width / scale
    x = torch.rand(count, 2, generator=gen, dtype=torch.float64) * img_w * 1.3 - 0.15 * img_w
    y = torch.rand(count, 2, generator=gen, dtype=torch.float64) * img_h * 1.3 - 0.15 * img_h
    b = torch.randint(0, batch, (count,), generator=gen).double()
    return torch.stack([b, x.min(1).values, y.min(1).values, x.max(1).values, y.max(1).values], dim=1)


def scores(shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# --------------------------------------------------------------- index math --


def test_cells_partition_the_window():
    """cell_span(i) is exactly {u : floor(u*k/m) == i}, non-empty for m >= k."""
    for k, m in itertools.product(range(1, 8), range(1, 30)):
        if m < k:
            continue
        for i in range(k):
            begin, end = _C.assemble_cell_span(i, k, m)
            assert list(range(begin, end)) == [u for u in range(m) if u * k // m == i], (k, m, i)
            assert end - begin >= m // k
        assert [_C.assemble_cell_of(u, k, m) for u in range(m)] == cells(k, m).tolist()


def test_window_reading_inverts_source_pixel():
    for m, stride, size in itertools.product((1, 2, 5, 6), (1, 2, 3), (1, 4, 7)):
        grid = _C.assemble_window_grid_size(size, stride)
        assert grid == -(-size // stride)
        for h, u in itertools.product(range(size), range(m)):
            expected = [g for g in range(grid) if _C.assemble_source_pixel(g * stride, u, m) == h]
            got = _C.assemble_window_reading(h, u, m, stride, grid)
            assert ([got] if got >= 0 else []) == expected, (m, stride, size, h, u)


def test_fcis_channel_order_is_class_then_inside_outside_then_cell():
    k = 3
    order = [(cls, t, i, j) for cls in range(4) for t in range(2) for i in range(k) for j in range(k)]
    assert [_C.fcis_channel(*key, k) for key in order] == list(range(len(order)))


def test_fcis_sample_positions_are_pixel_centres():
    """Output pixel p of P samples the centre of bin p: lo*s + (p + 1/2)*(hi - lo)*s/P - 1/2."""
    assert _C.fcis_roi_sample(0.0, 8.0, 1.0, 0, 4) == 0.5   # bin [0, 2): centre 1, minus the half pixel
    assert _C.fcis_roi_sample(4.0, 12.0, 0.5, 3, 4) == 2.0 + 3.5 * 1.0 - 0.5
    assert _C.fcis_axis_sample(2.25, 5) == (2, 0.25)
    assert _C.fcis_axis_sample(-0.5, 5) == (-1, 0.5)       # half of pixel 0, half of the zero padding
    assert _C.fcis_axis_sample(-7.0, 5)[0] <= -2           # touches nothing
    assert _C.fcis_axis_sample(float("nan"), 5)[0] <= -2   # nor does a NaN box
    assert _C.fcis_axis_sample(1e30, 5)[0] >= 5


def test_fcis_touched_pixels_cover_every_sample_of_the_cell():
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        lo, hi = (torch.rand(2, generator=gen, dtype=torch.float64) * 30 - 5).tolist()
        size, out_size, k = 9, 7, 3
        for i in range(k):
            begin, end = _C.assemble_cell_span(i, k, out_size)
            t0, t1 = _C.fcis_touched_pixels(lo, hi, 0.5, begin, end, out_size, size)
            for p in range(begin, end):
                low, _ = _C.fcis_axis_sample(_C.fcis_roi_sample(lo, hi, 0.5, p, out_size), size)
                assert t0 <= low and low + 1 < t1


# ------------------------------------------------------ instance assembling --


def test_instance_assemble_follows_the_definition_literally():
    """out[n, y, x, u, v] = S[n, floor(u*k/m)*k + floor(v*k/m), y + u - m//2, x + v - m//2], 0 outside."""
    k, m = 2, 5
    s = scores((2, k * k, 4, 6))
    out = instance_assemble(s, k, m)
    assert out.shape == (2, 4, 6, m, m)
    for n, y, x, u, v in itertools.product(range(2), range(4), range(6), range(m), range(m)):
        sy, sx = y + u - m // 2, x + v - m // 2
        inside = 0 <= sy < 4 and 0 <= sx < 6
        expected = s[n, (u * k // m) * k + v * k // m, sy, sx] if inside else 0.0
        assert out[n, y, x, u, v] == expected


# (N, H, W, k, m, stride): odd and even windows, m not a multiple of k,
# strides that do and do not divide the image, windows larger than the image.
INSTANCE_CASES = {
    "instancefcn_k5_m21": (1, 23, 19, 5, 21, (1, 1)),
    "even_window": (2, 9, 10, 2, 6, (1, 1)),
    "m_equals_k": (2, 7, 5, 3, 3, (1, 1)),
    "k1": (1, 6, 7, 1, 4, (1, 1)),
    "stride2": (2, 11, 12, 3, 7, (2, 2)),
    "stride_3x2_uneven": (1, 10, 9, 2, 5, (3, 2)),
    "window_larger_than_image": (1, 3, 4, 3, 11, (1, 1)),
}


@pytest.mark.parametrize("name", INSTANCE_CASES)
def test_instance_assemble_matches_unfold_reference(name):
    n, h, w, k, m, stride = INSTANCE_CASES[name]
    s = scores((n, k * k, h, w))
    out = instance_assemble(s, k, m, window_stride=stride)
    ref = ref_instance_assemble(s, k, m, stride)
    assert out.shape == ref.shape and out.is_contiguous()
    assert torch.equal(out, ref)  # a copy: exact
    grad = torch.randn(out.shape, dtype=torch.float64)
    s.requires_grad_(True)
    (ours,) = torch.autograd.grad(instance_assemble(s, k, m, window_stride=stride), s, grad)
    (theirs,) = torch.autograd.grad(ref_instance_assemble(s, k, m, stride), s, grad)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)


def test_selected_centres_equal_the_dense_windows_they_name():
    k, m, stride = 3, 7, (2, 3)
    s = scores((3, k * k, 10, 11))
    dense = instance_assemble(s, k, m, window_stride=stride)
    gen = torch.Generator().manual_seed(1)
    centers = torch.stack([torch.randint(0, size, (40,), generator=gen) for size in dense.shape[:3]], dim=1)
    centers[5] = centers[17]  # a repeated window
    out = instance_assemble(s, k, m, window_stride=stride, centers=centers)
    assert out.shape == (40, m, m)
    assert torch.equal(out, dense[centers[:, 0], centers[:, 1], centers[:, 2]])
    # The gradient sums over every selected window, repeats included.
    grad = torch.randn(out.shape, dtype=torch.float64)
    s.requires_grad_(True)
    (ours,) = torch.autograd.grad(instance_assemble(s, k, m, window_stride=stride, centers=centers), s, grad)
    (theirs,) = torch.autograd.grad(ref_instance_assemble(s, k, m, stride, centers), s, grad)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)


def test_centres_of_any_integer_dtype_are_accepted():
    s = scores((1, 4, 5, 5))
    c64 = torch.tensor([[0, 1, 2], [0, 4, 0]])
    expected = instance_assemble(s, 2, 4, centers=c64)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(instance_assemble(s, 2, 4, centers=c64.to(dtype)), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["float32", "float64", "float16", "bfloat16"])
def test_instance_assemble_dtypes(dtype):
    """The forward copies, so it is exact in every dtype. The backward sums at
    most T = ceil(m/k)^2 terms in the accumulation type (unit roundoff u_acc:
    2^-53 for float64, 2^-24 otherwise) and rounds once to the dtype (unit
    roundoff u), so against the float64 sum of the same values
    |err| <= T * u_acc * sum|terms| + u * |result| (the standard bound of recursive summation)."""
    k, m = 3, 8
    s = scores((2, k * k, 9, 7), dtype)
    out = instance_assemble(s, k, m)
    assert out.dtype == dtype
    assert torch.equal(out.double(), ref_instance_assemble(s, k, m))
    gy = scores(out.shape, dtype, seed=1)
    grad = instance_backward_op(gy, 2, 9, 7, k, m, [1, 1], None)
    assert grad.dtype == dtype
    ref = instance_backward_op(gy.double(), 2, 9, 7, k, m, [1, 1], None)
    abs_sum = instance_backward_op(gy.double().abs(), 2, 9, 7, k, m, [1, 1], None)
    terms = (-(-m // k)) ** 2  # ceil(m/k) squared
    u_acc = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    u = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    assert ((grad.double() - ref).abs() <= terms * u_acc * abs_sum + u * ref.abs()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["float32", "float64", "float16", "bfloat16"])
def test_instance_assemble_selected_windows_dtypes(dtype):
    s = scores((2, 4, 6, 5), dtype)
    centers = torch.tensor([[1, 5, 4], [0, 0, 0], [1, 2, 3]])
    assert torch.equal(instance_assemble(s, 2, 4, centers=centers).double(), ref_instance_assemble(s, 2, 4, centers=centers))


def test_instance_assemble_reads_any_memory_format():
    k, m = 2, 5
    base = scores((2, k * k, 8, 9))
    ref = ref_instance_assemble(base, k, m)
    channels_last = base.contiguous(memory_format=torch.channels_last)
    transposed = base.transpose(2, 3).contiguous().transpose(2, 3)
    strided = scores((2, k * k, 16, 9))[:, :, ::2]
    strided.copy_(base)
    for view in (channels_last, transposed, strided):
        assert not view.is_contiguous()
        out = instance_assemble(view, k, m)
        assert out.is_contiguous() and torch.equal(out, ref)
    grad = torch.randn(ref.shape, dtype=torch.float64)
    assert torch.equal(instance_backward_op(grad.transpose(1, 2).contiguous().transpose(1, 2), 2, 8, 9, k, m,
                                            [1, 1], None),
                       instance_backward_op(grad, 2, 8, 9, k, m, [1, 1], None))


def test_instance_assemble_empty_inputs():
    k, m = 2, 3
    assert instance_assemble(scores((0, 4, 5, 5)), k, m).shape == (0, 5, 5, m, m)
    assert instance_assemble(scores((2, 4, 0, 5)), k, m).shape == (2, 0, 5, m, m)
    s = scores((2, 4, 5, 5)).requires_grad_(True)
    out = instance_assemble(s, k, m, centers=torch.zeros(0, 3, dtype=torch.int64))
    assert out.shape == (0, m, m)
    (grad,) = torch.autograd.grad(out.sum(), s)
    assert torch.equal(grad, torch.zeros_like(s))


def test_instance_assemble_gradcheck():
    s = scores((2, 4, 5, 6)).requires_grad_(True)
    torch.autograd.gradcheck(lambda x: instance_assemble(x, 2, 3, window_stride=(2, 1)), (s,))
    centers = torch.tensor([[1, 2, 3], [0, 0, 5], [1, 2, 3], [0, 4, 0]])
    torch.autograd.gradcheck(lambda x: instance_assemble(x, 2, 5, centers=centers), (s,))
    torch.autograd.gradgradcheck(lambda x: instance_assemble(x, 2, 3, window_stride=(2, 1)), (s,))


def test_instance_assemble_opcheck():
    s = scores((2, 4, 5, 6)).requires_grad_(True)
    torch.library.opcheck(instance_op, (s, 2, 3, [2, 1], None))
    torch.library.opcheck(instance_op, (s, 2, 5, [1, 1], torch.tensor([[1, 2, 3], [0, 0, 5], [1, 2, 3]])))
    gy = torch.randn(2, 3, 6, 3, 3, dtype=torch.float64)
    torch.library.opcheck(instance_backward_op, (gy, 2, 5, 6, 2, 3, [2, 1], None))


def test_instance_assemble_compiles_without_graph_breaks():
    k, m = 2, 5
    s = scores((1, 4, 6, 7))
    compiled = torch.compile(lambda x: instance_assemble(x, k, m, window_stride=2) * 2, fullgraph=True, backend="eager")
    assert torch.equal(compiled(s), instance_assemble(s, k, m, window_stride=2) * 2)
    torch._dynamo.reset()  # drop the compiled frame: it slows every later eager call of the op


def test_instance_assemble_is_deterministic_across_runs_and_thread_counts():
    k, m = 5, 21
    s = scores((2, k * k, 24, 20), torch.float32)
    centers = torch.randint(0, 20, (300, 3), generator=torch.Generator().manual_seed(0)) % torch.tensor([2, 24, 20])
    gy = scores((300, m, m), torch.float32, seed=2)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (saved, 1, saved):
            torch.set_num_threads(threads)
            results.append(instance_backward_op(gy, 2, 24, 20, k, m, [1, 1], centers))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_instance_assemble_output_is_m2_per_window_not_k2_m2():
    """The memory argument for a dedicated op: plain torch (unfold, then pick a
    map per offset) first materializes every map's window, k*k*m*m values per
    window; the op writes only the m*m it returns, and its backward allocates
    only the scores' gradient (N*k*k*H*W values)."""
    k, m, n, h, w = 5, 21, 1, 12, 10
    s = scores((n, k * k, h, w), torch.float32)
    out = instance_assemble(s, k, m)
    windows = n * h * w
    assert out.numel() == windows * m * m
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size()
    unfolded = F.unfold(F.pad(s, (m // 2,) * 4), m)
    assert unfolded.numel() == k * k * out.numel()  # what the plain-torch route materializes
    grad = instance_backward_op(torch.ones_like(out), n, h, w, k, m, [1, 1], None)
    assert grad.untyped_storage().nbytes() == s.numel() * s.element_size()


# (message regex, call) for every misuse
_S = scores((2, 4, 6, 6))
BAD_INSTANCE_CALLS = {
    "k_zero": (r"expected k \(cells per window side\) >= 1, got 0", lambda: instance_op(_S, 0, 3, [1, 1], None)),
    "m_smaller_than_k": (r"expected m \(window size\) >= k .* got m=1 and k=2", lambda: instance_op(_S, 2, 1, [1, 1], None)),
    "wrong_channels": (r"expected scores with k\*k = 9 channels .* got 4 channels", lambda: instance_op(_S, 3, 5, [1, 1], None)),
    "scores_3d": (r"expected scores of 4 dimensions \(N, k\*k, H, W\), got 3", lambda: instance_op(_S[0], 2, 3, [1, 1], None)),
    "integer_scores": (r"expected scores of dtype float32, float64, float16 or bfloat16, got Long",
                       lambda: instance_op(_S.long(), 2, 3, [1, 1], None)),
    "stride_zero": (r"expected every window_stride >= 1, got \[0, 1\]", lambda: instance_op(_S, 2, 3, [0, 1], None)),
    "centers_shape": (r"expected centers of shape \(P, 3\)", lambda: instance_op(_S, 2, 3, [1, 1], torch.zeros(4, 2, dtype=torch.long))),
    "centers_float": (r"expected centers of dtype int64, got Float", lambda: instance_op(_S, 2, 3, [1, 1], torch.zeros(4, 3))),
    "centers_batch_out_of_range": (r"expected every centers batch index \(column 0\) in \[0, 2\), got values from 0 to 2",
                                   lambda: instance_op(_S, 2, 3, [1, 1], torch.tensor([[0, 0, 0], [2, 0, 0]]))),
    "centers_row_past_strided_grid": (r"grid row \(column 1\) in \[0, 3\), got values from 3 to 3 .* grid of stride \(2, 2\)",
                                      lambda: instance_op(_S, 2, 3, [2, 2], torch.tensor([[0, 3, 0]]))),
    "centers_negative_column": (r"grid column \(column 2\) in \[0, 6\), got values from -1 to 0",
                                lambda: instance_op(_S, 2, 3, [1, 1], torch.tensor([[0, 0, -1], [1, 1, 0]]))),
    "python_stride_float": (r"expected window_stride to be an int or a tuple of 2 ints, got 1.5",
                            lambda: instance_assemble(_S, 2, 3, window_stride=1.5)),
    "python_centers_float": (r"expected centers of an integer dtype, got torch.float32",
                             lambda: instance_assemble(_S, 2, 3, centers=torch.zeros(1, 3))),
    "backward_wrong_grad_shape": (r"expected grad_output of size \[2, 6, 6, 3, 3\], got \[2, 6, 6, 3, 4\]",
                                  lambda: instance_backward_op(torch.zeros(2, 6, 6, 3, 4), 2, 6, 6, 2, 3, [1, 1], None)),
}


@pytest.mark.parametrize("name", BAD_INSTANCE_CALLS)
def test_instance_assemble_errors(name):
    pattern, call = BAD_INSTANCE_CALLS[name]
    with pytest.raises((RuntimeError, TypeError, ValueError), match=pattern):
        call()


# --------------------------------------------------------- FCIS assembling --


# (N, classes, H, W, k, P, R, scale)
FCIS_CASES = {
    "fcis_k7_p21": (2, 3, 12, 14, 7, 21, 6, 1 / 16),
    "p_not_multiple_of_k": (1, 2, 9, 8, 3, 8, 5, 0.5),
    "p_equals_k": (2, 1, 7, 9, 3, 3, 4, 1.0),
    "k1": (1, 2, 6, 5, 1, 4, 3, 0.25),
    "single_row_map": (1, 2, 1, 9, 2, 5, 3, 1.0),
}


def _fcis_inputs(name, dtype=torch.float64, seed=0):
    n, classes, h, w, k, size, r, scale = FCIS_CASES[name]
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 2 * k * k * classes, h, w, generator=gen, dtype=torch.float64).to(dtype)
    rois = random_rois(gen, r, n, h, w, scale)
    return maps, rois, k, size, scale


@pytest.mark.parametrize("name", FCIS_CASES)
def test_fcis_assemble_matches_grid_sample_reference(name):
    maps, rois, k, size, scale = _fcis_inputs(name)
    inside, outside = fcis_assemble(maps, rois, k, size, scale)
    ref_in, ref_out = ref_fcis_assemble(maps, rois, k, size, scale)
    assert inside.shape == ref_in.shape == (rois.shape[0], maps.shape[1] // (2 * k * k), size, size)
    torch.testing.assert_close(inside, ref_in, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outside, ref_out, rtol=1e-12, atol=1e-12)
    g_in, g_out = torch.randn(inside.shape, dtype=torch.float64), torch.randn(outside.shape, dtype=torch.float64)
    maps.requires_grad_(True)
    (ours,) = torch.autograd.grad(fcis_assemble(maps, rois, k, size, scale), maps, (g_in, g_out))
    (theirs,) = torch.autograd.grad(ref_fcis_assemble(maps, rois, k, size, scale), maps, (g_in, g_out))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_fcis_box_covering_the_map_reads_each_cell_of_the_grid():
    """A whole-map box with P = k*H reads, in output pixel (py, px), map cell
    (py*k//P, px*k//P) at row (py + 1/2)/k - 1/2: with constant maps the
    output is the cell's constant wherever the sample lies inside the map."""
    k, h, size = 2, 4, 8
    maps = torch.zeros(1, 2 * k * k, h, h, dtype=torch.float64)
    for ch in range(2 * k * k):
        maps[0, ch] = ch
    rois = torch.tensor([[0.0, 0.0, 0.0, h, h]])
    inside, outside = fcis_assemble(maps, rois, k, size, 1.0)
    c = cells(k, size)
    for py, px in itertools.product(range(1, size - 1), range(1, size - 1)):
        assert inside[0, 0, py, px] == _C.fcis_channel(0, 1, c[py], c[px], k)
        assert outside[0, 0, py, px] == _C.fcis_channel(0, 0, c[py], c[px], k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
def test_fcis_assemble_low_precision(dtype):
    """Sampling runs in float from the dtype's values and rounds the result once:
    within 2 units of roundoff of the float64 result on the same rounded inputs
    (unit roundoff 2^-24, 2^-11, 2^-8), relative to the largest value, plus
    float's own error (~1e-6) in the sample positions and weights."""
    maps, rois, k, size, scale = _fcis_inputs("fcis_k7_p21", dtype)
    ref_in, ref_out = ref_fcis_assemble(maps, rois, k, size, scale)
    inside, outside = fcis_assemble(maps, rois.to(torch.float32), k, size, scale)
    assert inside.dtype == outside.dtype == dtype
    u = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    for ours, ref in ((inside, ref_in), (outside, ref_out)):
        err = (ours.double() - ref).abs().max().item() / ref.abs().max().item()
        assert err <= 2 * u + 1e-5, err
    g = torch.randn(inside.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grad = fcis_backward_op(g.to(dtype), g.flip(0).to(dtype), rois, k, size, scale, *maps.shape[:1], *maps.shape[2:])
    ref = fcis_backward_op(g.to(dtype).double(), g.flip(0).to(dtype).double(), rois, k, size, scale,
                           *maps.shape[:1], *maps.shape[2:])
    err = (grad.double() - ref).abs().max().item() / ref.abs().max().item()
    assert err <= 2 * u + 1e-5, err


def test_fcis_assemble_reads_any_memory_format():
    maps, rois, k, size, scale = _fcis_inputs("p_not_multiple_of_k")
    expected = fcis_assemble(maps, rois, k, size, scale)
    for view in (maps.contiguous(memory_format=torch.channels_last), maps.transpose(2, 3).contiguous().transpose(2, 3)):
        assert not view.is_contiguous()
        for a, b in zip(fcis_assemble(view, rois, k, size, scale), expected):
            assert torch.equal(a, b)
    rois_view = torch.cat([rois, rois], dim=1)[:, :5]  # a row stride of 10
    assert not rois_view.is_contiguous()
    for a, b in zip(fcis_assemble(maps, rois_view, k, size, scale), expected):
        assert torch.equal(a, b)


def test_fcis_assemble_zero_rois_and_empty_batch():
    maps, rois, k, size, scale = _fcis_inputs("p_equals_k")
    maps.requires_grad_(True)
    inside, outside = fcis_assemble(maps, rois[:0], k, size, scale)
    assert inside.shape == outside.shape == (0, 1, size, size)
    (grad,) = torch.autograd.grad(inside.sum() + outside.sum(), maps)
    assert torch.equal(grad, torch.zeros_like(maps))
    empty = torch.zeros(0, 18, 5, 5, dtype=torch.float64)
    assert fcis_assemble(empty, rois[:0], k, size, scale)[0].shape == (0, 1, size, size)


def test_fcis_assemble_gradient_of_one_output_only():
    maps, rois, k, size, scale = _fcis_inputs("p_not_multiple_of_k")
    maps.requires_grad_(True)
    (ours,) = torch.autograd.grad(fcis_assemble(maps, rois, k, size, scale)[1].pow(2).sum(), maps)
    (theirs,) = torch.autograd.grad(ref_fcis_assemble(maps, rois, k, size, scale)[1].pow(2).sum(), maps)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_fcis_assemble_gradcheck():
    maps, rois, k, size, scale = _fcis_inputs("p_not_multiple_of_k")
    maps = maps[:, :, :5, :6].contiguous().requires_grad_(True)  # the check is per element: keep it small
    torch.autograd.gradcheck(lambda x: fcis_assemble(x, rois, k, size, scale), (maps,))
    torch.autograd.gradgradcheck(lambda x: fcis_assemble(x, rois, k, size, scale), (maps,))


def test_fcis_assemble_opcheck():
    maps, rois, k, size, scale = _fcis_inputs("p_equals_k")
    torch.library.opcheck(fcis_op, (maps.requires_grad_(True), rois, k, size, scale))
    g = torch.randn(rois.shape[0], 1, size, size, dtype=torch.float64)
    torch.library.opcheck(fcis_backward_op, (g, g * 2, rois, k, size, scale, maps.shape[0], *maps.shape[2:]))


def test_fcis_assemble_compiles_without_graph_breaks():
    maps, rois, k, size, scale = _fcis_inputs("p_equals_k")
    compiled = torch.compile(lambda x, b: fcis_assemble(x, b, k, size, scale)[1] + 1, fullgraph=True, backend="eager")
    assert torch.equal(compiled(maps, rois), fcis_assemble(maps, rois, k, size, scale)[1] + 1)
    torch._dynamo.reset()


def test_fcis_assemble_is_deterministic_across_runs_and_thread_counts():
    maps, rois, k, size, scale = _fcis_inputs("fcis_k7_p21", torch.float32)
    rois = torch.cat([rois] * 20)  # overlapping boxes: many terms per pixel
    g = torch.randn(rois.shape[0], 3, size, size)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (saved, 1, saved):
            torch.set_num_threads(threads)
            results.append(fcis_backward_op(g, -g, rois, k, size, scale, 2, 12, 14))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(results[0], r) for r in results[1:])


_M = torch.randn(2, 18, 5, 5)
_R = torch.tensor([[0.0, 0, 0, 4, 4], [1, 1, 1, 3, 3]])
BAD_FCIS_CALLS = {
    "group_size_zero": (r"expected group_size >= 1, got 0", lambda: fcis_op(_M, _R, 0, 3, 1.0)),
    "output_smaller_than_group": (r"expected output_size >= group_size .* got output_size=2 and group_size=3",
                                  lambda: fcis_op(_M, _R, 3, 2, 1.0)),
    "channels_not_multiple": (r"expected score_maps with a positive multiple of 2\*k\*k = 8 channels .* got 18",
                              lambda: fcis_op(_M, _R, 2, 3, 1.0)),
    "scale_zero": (r"expected a finite spatial_scale > 0, got 0", lambda: fcis_op(_M, _R, 3, 3, 0.0)),
    "scale_nan": (r"expected a finite spatial_scale > 0, got nan", lambda: fcis_op(_M, _R, 3, 3, float("nan"))),
    "rois_shape": (r"expected rois of shape \(R, 5\) holding \(batch index, x1, y1, x2, y2\) rows, got shape \[2, 4\]",
                   lambda: fcis_op(_M, _R[:, 1:], 3, 3, 1.0)),
    "rois_batch_out_of_range": (r"batch index \(column 0\) to be an integer in \[0, 2\), got values from 0 to 2",
                                lambda: fcis_op(_M, _R + torch.tensor([1.0, 0, 0, 0, 0]) * torch.tensor([[0.0], [1]]), 3, 3, 1.0)),
    "rois_batch_fractional": (r"integer in \[0, 2\), got values from 0 to 0.5 including non-integers",
                              lambda: fcis_op(_M, torch.tensor([[0.5, 0, 0, 1, 1], [0, 0, 0, 1, 1]]), 3, 3, 1.0)),
    "rois_integer": (r"expected rois of dtype float32, float64, float16 or bfloat16, got Long",
                     lambda: fcis_op(_M, _R.long(), 3, 3, 1.0)),
    "maps_3d": (r"expected score_maps of 4 dimensions", lambda: fcis_op(_M[0], _R, 3, 3, 1.0)),
    "python_scale_string": (r"expected spatial_scale to be a float, got '1'", lambda: fcis_assemble(_M, _R, 3, 3, "1")),
    "backward_mismatched_grads": (r"expected grad_outside of grad_inside's size",
                                  lambda: fcis_backward_op(torch.zeros(2, 1, 3, 3), torch.zeros(2, 2, 3, 3), _R, 3, 3, 1.0, 2, 5, 5)),
}


@pytest.mark.parametrize("name", BAD_FCIS_CALLS)
def test_fcis_assemble_errors(name):
    pattern, call = BAD_FCIS_CALLS[name]
    with pytest.raises((RuntimeError, TypeError), match=pattern):
        call()


# ------------------------------------------------------------------- CUDA --


@pytest.mark.cuda
def test_cuda_matches_cpu(cuda):
    k, m = 5, 21
    s = scores((2, k * k, 30, 27), torch.float32)
    centers = torch.tensor([[0, 3, 4], [1, 29, 26], [0, 3, 4]])
    for stride, c in (((1, 1), None), ((2, 3), None), ((1, 1), centers)):
        out = instance_assemble(s.to(cuda), k, m, window_stride=stride, centers=None if c is None else c.to(cuda))
        assert torch.equal(out.cpu(), instance_assemble(s, k, m, window_stride=stride, centers=c))
        gy = torch.randn(out.shape)
        g_cuda = instance_backward_op(gy.to(cuda), 2, 30, 27, k, m, list(stride), None if c is None else c.to(cuda))
        g_cpu = instance_backward_op(gy, 2, 30, 27, k, m, list(stride), c)
        torch.testing.assert_close(g_cuda.cpu(), g_cpu, rtol=1e-6, atol=1e-6)
    maps, rois, k, size, scale = _fcis_inputs("fcis_k7_p21", torch.float32)
    ours = fcis_assemble(maps.to(cuda), rois.to(cuda), k, size, scale)
    for a, b in zip(ours, fcis_assemble(maps, rois, k, size, scale)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)
    g = torch.randn(ours[0].shape)
    grad_cuda = fcis_backward_op(g.to(cuda), -g.to(cuda), rois.to(cuda), k, size, scale, 2, 12, 14)
    first = grad_cuda.clone()
    grad_cuda = fcis_backward_op(g.to(cuda), -g.to(cuda), rois.to(cuda), k, size, scale, 2, 12, 14)
    assert torch.equal(first, grad_cuda)  # a gather: bitwise reproducible
    torch.testing.assert_close(grad_cuda.cpu(), fcis_backward_op(g, -g, rois, k, size, scale, 2, 12, 14),
                               rtol=1e-5, atol=1e-5)
