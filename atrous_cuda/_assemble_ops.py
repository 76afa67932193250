"""Fake kernels, autograd and the Python API of the instance-assembling ops.

The ops are defined in csrc/schema.cpp; their index math is derived in
csrc/assemble_index.h. As for the convolution (see _ops.py), autograd goes
through registered ops only, so torch.compile traces them and
torch.library.opcheck passes. Both backward ops are linear maps whose adjoint
is the forward op, which gives double backward for free.
"""
import torch

from ._extension import load_extension

load_extension()  # the op registrations; a load failure is explained

__all__ = ["instance_assemble", "fcis_assemble"]

_instance_assemble = torch.ops.atrous.instance_assemble.default
_instance_assemble_backward = torch.ops.atrous.instance_assemble_backward.default
_fcis_assemble = torch.ops.atrous.fcis_assemble.default
_fcis_assemble_backward = torch.ops.atrous.fcis_assemble_backward.default


def _grid_size(size, stride):
    # window_grid_size in csrc/assemble_index.h: centres 0, s, 2s, ... < size.
    return (size + stride - 1) // stride


# ------------------------------------------------------- instance assembling --


@torch.library.register_fake("atrous::instance_assemble")
def _instance_assemble_fake(scores, k, m, window_stride, centers):
    torch._check(k >= 1, lambda: f"instance_assemble: expected k >= 1, got {k}")
    torch._check(m >= k, lambda: f"instance_assemble: expected m >= k, got m={m} and k={k}")
    torch._check(scores.dim() == 4, lambda: f"instance_assemble: expected 4-D scores, got {scores.dim()}-D")
    torch._check(scores.shape[1] == k * k,
                 lambda: f"instance_assemble: expected scores with k*k = {k * k} channels, got {scores.shape[1]}")
    if centers is not None:
        torch._check(centers.dim() == 2 and centers.shape[1] == 3,
                     lambda: f"instance_assemble: expected centers of shape (P, 3), got {tuple(centers.shape)}")
        return scores.new_empty((centers.shape[0], m, m))
    n, _, h, w = scores.shape
    return scores.new_empty((n, _grid_size(h, window_stride[0]), _grid_size(w, window_stride[1]), m, m))


@torch.library.register_fake("atrous::instance_assemble_backward")
def _instance_assemble_backward_fake(grad_output, batch, height, width, k, m, window_stride, centers):
    return grad_output.new_empty((batch, k * k, height, width))


def _instance_setup_context(ctx, inputs, output):
    scores, k, m, window_stride, centers = inputs
    ctx.sizes = (scores.shape[0], scores.shape[2], scores.shape[3])
    ctx.args = (k, m, window_stride)
    ctx.save_for_backward(centers)


def _instance_backward(ctx, grad_output):
    (centers,) = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = _instance_assemble_backward(grad_output, *ctx.sizes, *ctx.args, centers)
    return grad, None, None, None, None


torch.library.register_autograd(
    "atrous::instance_assemble", _instance_backward, setup_context=_instance_setup_context
)


def _instance_backward_setup_context(ctx, inputs, output):
    grad_output, batch, height, width, k, m, window_stride, centers = inputs
    ctx.args = (k, m, window_stride)
    ctx.save_for_backward(centers)


def _instance_backward_backward(ctx, gg_scores):
    # The backward is the adjoint of the (linear) forward, so its own adjoint
    # is the forward applied to the incoming gradient.
    (centers,) = ctx.saved_tensors
    grad = _instance_assemble(gg_scores, *ctx.args, centers) if ctx.needs_input_grad[0] else None
    return grad, None, None, None, None, None, None, None


torch.library.register_autograd(
    "atrous::instance_assemble_backward", _instance_backward_backward,
    setup_context=_instance_backward_setup_context,
)


def _pair(name, value):
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, (tuple, list)) and len(value) == 2
                                   and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    ):
        raise TypeError(f"instance_assemble: expected {name} to be an int or a tuple of 2 ints, got {value!r}")
    return [value, value] if isinstance(value, int) else list(value)


def instance_assemble(scores, k, m, window_stride=1, centers=None):
    """InstanceFCN's instance assembling: m x m candidate masks from k*k score maps.

    out[n, yc, xc, u, v] = scores[n, (u*k//m)*k + v*k//m, yc*sh + u - m//2, xc*sw + v - m//2],
    zero where the source pixel lies outside the image.

    Args:
        scores: (N, k*k, H, W) instance-sensitive score maps; map i*k + j is
            cell (i, j) (row i, column j) of the k x k grid.
        k: cells per window side.
        m: window size in pixels, m >= k (InstanceFCN: k=5, m=21).
        window_stride: int or (sh, sw): window centres at (yc*sh, xc*sw).
        centers: optional integer tensor (P, 3) of (n, yc, xc) window-grid
            points (grid units, not pixels unless the stride is 1); only those
            windows are assembled, in that order, repeats allowed.

    Returns:
        (N, Hc, Wc, m, m) with Hc = ceil(H / sh), Wc = ceil(W / sw): the mask
        of window (yc, xc) is out[n, yc, xc], a contiguous m x m block. With
        centers, (P, m, m) and out[p] == dense_out[n, yc, xc] of row p.
    """
    stride = _pair("window_stride", window_stride)
    if centers is not None:
        if not isinstance(centers, torch.Tensor):
            raise TypeError(f"instance_assemble: expected centers to be a tensor or None, got {type(centers).__name__}")
        if centers.is_floating_point() or centers.is_complex() or centers.dtype == torch.bool:
            raise TypeError(f"instance_assemble: expected centers of an integer dtype, got {centers.dtype}")
        centers = centers.to(torch.int64)
    return _instance_assemble(scores, k, m, stride, centers)


# ----------------------------------------------------------- FCIS assembling --


@torch.library.register_fake("atrous::fcis_assemble")
def _fcis_assemble_fake(score_maps, rois, group_size, output_size, spatial_scale):
    per_class = 2 * group_size * group_size
    torch._check(score_maps.dim() == 4, lambda: f"fcis_assemble: expected 4-D score_maps, got {score_maps.dim()}-D")
    torch._check(score_maps.shape[1] % per_class == 0,
                 lambda: f"fcis_assemble: expected a multiple of 2*k*k = {per_class} channels, got {score_maps.shape[1]}")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5,
                 lambda: f"fcis_assemble: expected rois of shape (R, 5), got {tuple(rois.shape)}")
    shape = (rois.shape[0], score_maps.shape[1] // per_class, output_size, output_size)
    return score_maps.new_empty(shape), score_maps.new_empty(shape)


@torch.library.register_fake("atrous::fcis_assemble_backward")
def _fcis_assemble_backward_fake(grad_inside, grad_outside, rois, group_size, output_size, spatial_scale,
                                 batch, height, width):
    channels = 2 * group_size * group_size * grad_inside.shape[1]
    return grad_inside.new_empty((batch, channels, height, width))


def _fcis_setup_context(ctx, inputs, output):
    score_maps, rois, group_size, output_size, spatial_scale = inputs
    ctx.sizes = (score_maps.shape[0], score_maps.shape[2], score_maps.shape[3])
    ctx.args = (group_size, output_size, spatial_scale)
    ctx.save_for_backward(rois)


def _fcis_backward(ctx, grad_inside, grad_outside):
    (rois,) = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        # An output that took no part in the loss comes back as None.
        if grad_inside is None:
            grad_inside = torch.zeros_like(grad_outside)
        if grad_outside is None:
            grad_outside = torch.zeros_like(grad_inside)
        grad = _fcis_assemble_backward(grad_inside, grad_outside, rois, *ctx.args, *ctx.sizes)
    # The boxes get no gradient (as torchvision's roi_align).
    return grad, None, None, None, None


torch.library.register_autograd("atrous::fcis_assemble", _fcis_backward, setup_context=_fcis_setup_context)


def _fcis_backward_setup_context(ctx, inputs, output):
    grad_inside, grad_outside, rois, group_size, output_size, spatial_scale, batch, height, width = inputs
    ctx.args = (group_size, output_size, spatial_scale)
    ctx.save_for_backward(rois)


def _fcis_backward_backward(ctx, gg_maps):
    (rois,) = ctx.saved_tensors
    d_inside = d_outside = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        d_inside, d_outside = _fcis_assemble(gg_maps, rois, *ctx.args)
    return d_inside, d_outside, None, None, None, None, None, None, None


torch.library.register_autograd(
    "atrous::fcis_assemble_backward", _fcis_backward_backward, setup_context=_fcis_backward_setup_context
)


def fcis_assemble(score_maps, rois, group_size, output_size, spatial_scale=1.0):
    """FCIS's joint assembling of inside/outside score maps on given RoIs.

    Args:
        score_maps: (N, 2*k*k*(C+1), H, W); channel ((c*2 + t)*k + i)*k + j is
            class c, t = 0 outside / 1 inside, cell (i, j): FCIS's order
            (its position-sensitive pooling output reshaped to (C+1, 2)).
        rois: (R, 5) rows (batch index, x1, y1, x2, y2) in image coordinates.
        group_size: k, cells per RoI side.
        output_size: P >= k, the assembled grid is P x P.
        spatial_scale: image coordinates -> score-map pixels (1/16 for stride 16).

    Returns:
        (inside, outside), each (R, C+1, P, P). Output pixel (py, px) samples,
        bilinearly with zeros outside the map, the map of its cell
        (py*k//P, px*k//P) at y = y1*s + (py + 0.5)*(y2 - y1)*s/P - 0.5 (x
        likewise): roi_align's aligned=True positions, one sample per pixel.
    """
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)):
        raise TypeError(f"fcis_assemble: expected spatial_scale to be a float, got {spatial_scale!r}")
    return _fcis_assemble(score_maps, rois, group_size, output_size, float(spatial_scale))
