"""Receptive-field tools: per-layer receptive fields of a model, exact gridding
(hole) detection for stacks of dilated convs, and a picture of both.

Receptive field per spatial axis, in input pixels (Araujo et al., Distill 2019):
  size   how many input pixels one output pixel depends on (the hull);
  jump   the distance in input pixels between two adjacent output pixels;
  start  the input coordinate of the centre of output pixel 0's field (pixel i
         of the input is at coordinate i; negative means it reaches into padding).
A conv or pool with kernel k, stride s, dilation d and padding p before the
first pixel (k_eff = d*(k-1) + 1):
  jump'  = jump * s
  size'  = size + (k_eff - 1) * jump
  start' = start + ((k_eff - 1)/2 - p) * jump
"""
import math
import numbers
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .functional import same_padding

__all__ = ["GriddingReport", "gridding_report", "plot_receptive_field", "receptive_field"]


# ------------------------------------------------------- receptive_field --

# A field is a tuple with one (size, jump, start) per spatial axis.


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _pad_before(module, ndim, spatial):
    """Padding before the first pixel per axis, for every padding form."""
    k, s, d = _tuple(module.kernel_size, ndim), _tuple(module.stride, ndim), _tuple(module.dilation, ndim)
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * ndim
        if padding == "causal":
            return tuple(d[i] * (k[i] - 1) for i in range(ndim))
        return tuple(same_padding(spatial[i], k[i], s[i], d[i])[0] for i in range(ndim))
    padding = _tuple(padding, ndim)
    if len(padding) == 2 * ndim:  # F.pad order: last axis first, (before, after) pairs
        return tuple(padding[2 * (ndim - 1 - i)] for i in range(ndim))
    return padding


def _windowed(field, k, s, d, p):
    return tuple(
        (size + (d[i] * (k[i] - 1)) * jump, jump * s[i], start + ((d[i] * (k[i] - 1)) / 2 - p[i]) * jump)
        for i, (size, jump, start) in enumerate(field)
    )


def _transposed_spread(kernel, stride, dilation):
    """Largest distance, in input pixels, between two inputs that one output
    of a transposed conv reads (taps grouped by m*d mod s)."""
    groups = {}
    for m in range(kernel):
        groups.setdefault(m * dilation % stride, []).append(m)
    return max((max(g) - min(g)) * dilation // stride for g in groups.values())


def _layer_field(module, field, spatial):
    """The output field of a conv/pool/transposed-conv layer, or None for other modules."""
    ndim = len(field)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # Output o reads input i where i*s - p + m*d = o: for o = 0 the taps' hull is
        # centred on input (p - d(k-1)/2) / s. Two taps m1, m2 meet at one output only
        # when (m1 - m2)*d is a multiple of s, and then read inputs (m1 - m2)*d/s apart,
        # so the widest spread of one output is the largest such gap.
        k, s, d = _tuple(module.kernel_size, ndim), _tuple(module.stride, ndim), _tuple(module.dilation, ndim)
        p = _tuple(module.padding, ndim)
        return tuple(
            (size + _transposed_spread(k[i], s[i], d[i]) * jump, jump / s[i],
             start + (p[i] - d[i] * (k[i] - 1) / 2) / s[i] * jump)
            for i, (size, jump, start) in enumerate(field)
        )
    if isinstance(module, nn.modules.conv._ConvNd):
        k, s, d = _tuple(module.kernel_size, ndim), _tuple(module.stride, ndim), _tuple(module.dilation, ndim)
        return _windowed(field, k, s, d, _pad_before(module, ndim, spatial))
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        k = _tuple(module.kernel_size, ndim)
        s = _tuple(module.stride if module.stride is not None else module.kernel_size, ndim)
        d = _tuple(getattr(module, "dilation", 1), ndim)
        return _windowed(field, k, s, d, _tuple(module.padding, ndim))
    if isinstance(module, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        # Bin i covers [floor(i*H/out), ceil((i+1)*H/out)): with out == 1 the whole input.
        out = _tuple(module.output_size, ndim)
        result = []
        for i, (size, jump, start) in enumerate(field):
            o = spatial[i] if out[i] is None else out[i]
            k = math.ceil(spatial[i] / o)
            stride = spatial[i] / o
            result.append((size + (k - 1) * jump, jump * stride, start + (k - 1) / 2 * jump))
        return tuple(result)
    return None


def _union(fields):
    """The hull of several fields of the same pixel grid (a merge: add, cat, ...)."""
    fields = list(dict.fromkeys(fields))
    if len(fields) == 1:
        return fields[0]
    result = []
    for axis in zip(*fields):
        lo = min(start - (size - 1) / 2 for size, _, start in axis)
        hi = max(start + (size - 1) / 2 for size, _, start in axis)
        result.append((hi - lo + 1, max(jump for _, jump, _ in axis), (lo + hi) / 2))
    return tuple(result)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _FieldTracker(TorchFunctionMode):
    """Carries each tensor's field through the ops between layers: a resize
    changes jump and start, any other op merges its inputs' fields."""

    def __init__(self, ndim):
        super().__init__()
        self.ndim = ndim
        self.fields = {}  # id(tensor) -> (tensor, field); the tensor is kept so its id stays unique
        self.layer_depth = 0

    def field_of(self, t):
        entry = self.fields.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def set_field(self, t, field):
        self.fields[id(t)] = (t, field)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.layer_depth > 0:
            return out
        inputs = [t for t in _tensors((args, kwargs)) if self.field_of(t) is not None]
        if not inputs:
            return out
        if func is F.interpolate:
            field = self._resized(inputs[0], out, kwargs.get("mode", args[3] if len(args) > 3 else "nearest"),
                                  kwargs.get("align_corners", args[4] if len(args) > 4 else None))
        else:
            field = _union([self.field_of(t) for t in inputs])
        for t in _tensors(out):
            if self.field_of(t) is None:
                self.set_field(t, field)
        return out

    def _resized(self, x, out, mode, align_corners):
        """Output pixel o samples input coordinate src(o) = (o + 0.5) * in/out - 0.5
        (o * (in-1)/(out-1) with align_corners; floor(o * in/out) for 'nearest').
        Linear modes read the two pixels around src(o), so size grows by one input
        jump; start is src(0), a linear approximation of the pair's centre that
        is off by at most half a pixel of the resized grid."""
        field = []
        for i, (size, jump, start) in enumerate(self.field_of(x)):
            n_in, n_out = x.shape[2 + i], out.shape[2 + i]
            linear = mode != "nearest" and n_in > 1
            if align_corners:
                scale, first = ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0), 0.0
            else:
                scale = n_in / n_out
                first = 0.5 * scale - 0.5 if linear else 0.0
            field.append((size + (jump if linear else 0), jump * scale, start + first * jump))
        return tuple(field)


def receptive_field(model: nn.Module, input_shape: Sequence[int]) -> List[Dict]:
    """One row per conv/pool layer, in execution order, then one for the whole model.

    Each row is {"name", "size", "jump", "start"}, the last three lists with one
    entry per spatial axis (see the module docstring). Stride, padding and
    dilation are read from the modules (torch's ConvNd, ConvTransposeNd,
    MaxPool/AvgPool/adaptive pools, and atrous_cuda's convs, every padding
    form). Between layers, element-wise ops and concatenations merge fields
    (their hull), and F.interpolate rescales them. The model runs once on
    zeros of `input_shape` (N, C, *spatial). The last row is named "(model)"
    and describes the model's output (its "out" entry for a dict that has one,
    as torchvision's segmentation models and DilatedResNet return, otherwise
    its first tensor). After a resize (F.interpolate), `start` is a linear
    approximation, within half a pixel of the resized grid.

    Transposed convs give the largest field over output pixels (outputs of a
    stride-s transposed conv read different numbers of inputs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"receptive_field: expected an nn.Module, got {type(model).__name__}")
    shape = tuple(input_shape)
    if len(shape) < 3 or not all(isinstance(v, numbers.Integral) and v > 0 for v in shape):
        raise ValueError(f"receptive_field: expected input_shape (N, C, *spatial) of positive ints, got {input_shape!r}")
    ndim = len(shape) - 2
    param = next(iter(model.parameters()), None)
    x = torch.zeros(shape, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    tracker = _FieldTracker(ndim)
    tracker.set_field(x, tuple((1.0, 1.0, 0.0) for _ in range(ndim)))
    rows, handles = [], []
    names = {m: n for n, m in model.named_modules()}

    def pre_hook(module, inputs):
        tracker.layer_depth += 1

    def post_hook(module, inputs, output):
        tracker.layer_depth -= 1
        if tracker.layer_depth > 0:
            return
        known = [t for t in _tensors(inputs) if tracker.field_of(t) is not None]
        if not known:
            return
        field = _layer_field(module, tracker.field_of(known[0]), tuple(known[0].shape[2:]))
        for t in _tensors(output):
            tracker.set_field(t, field)
        rows.append(_row(names.get(module, type(module).__name__) or "(model)", field))

    for module in model.modules():
        if _layer_field(module, ((1.0, 1.0, 0.0),) * ndim, (1,) * ndim) is not None:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), tracker:
            out = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if isinstance(out, dict) and "out" in out:  # torchvision's convention for segmentation outputs
        out = out["out"]
    outputs = [t for t in _tensors(out) if tracker.field_of(t) is not None]
    if not outputs:
        raise ValueError("receptive_field: the model's output does not depend on its input through tracked ops")
    rows.append(_row("(model)", tracker.field_of(outputs[0])))
    return rows


def _clean(v):
    return int(v) if float(v).is_integer() else float(v)


def _row(name, field):
    return {"name": name, "size": [_clean(f[0]) for f in field], "jump": [_clean(f[1]) for f in field],
            "start": [_clean(f[2]) for f in field]}


# -------------------------------------------------------- gridding_report --


@dataclass(frozen=True)
class GriddingReport:
    """Result of gridding_report.

    offsets are counted from the first pixel of the stack's span (0 ..
    span - 1); a 2-D stack with the same rates on both axes reaches (a, b)
    exactly when it reaches a and b, so one axis decides.
    """

    rates: Tuple[int, ...]
    kernel_size: int
    span: int
    reachable: Tuple[int, ...]
    holes: Tuple[int, ...]
    hdc_m2: Optional[int]
    hdc_satisfied: Optional[bool]
    message: str

    @property
    def gridded(self) -> bool:
        return bool(self.holes)


def _hdc_m2(rates):
    """Wang et al. 2018 (HDC): M_n = r_n, M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i);
    M_i is the largest gap between two non-zero values layer i can combine. None for one layer."""
    if len(rates) < 2:
        return None
    m = rates[-1]
    for r in reversed(rates[1:-1]):
        m = max(m - 2 * r, m - 2 * (m - r), r)
    return m


def gridding_report(rates: Sequence[int], kernel_size: int = 3) -> GriddingReport:
    """Exactly which input offsets a stack of dilated convs (kernel_size, rates[i]) reaches.

    The offsets one conv reaches are {0, r, ..., (k-1) r}; a stack reaches
    their Minkowski sum, inside a span of (k-1) * sum(rates) + 1 pixels. The
    stack is gridded when some offset of the span is not reached: `holes` lists
    them (empty: no gridding). Also reported: HDC's M_2 and whether M_2 <= k.
    """
    if not isinstance(kernel_size, numbers.Integral) or isinstance(kernel_size, bool) or kernel_size < 1:
        raise ValueError(f"gridding_report: expected kernel_size to be an int >= 1, got {kernel_size!r}")
    rates = tuple(rates)
    if not rates or not all(isinstance(r, numbers.Integral) and not isinstance(r, bool) and r >= 1 for r in rates):
        raise ValueError(f"gridding_report: expected a non-empty sequence of int rates >= 1, got {rates!r}")
    rates = tuple(int(r) for r in rates)
    reach = {0}
    for r in rates:
        reach = {o + m * r for o in reach for m in range(kernel_size)}
    span = (kernel_size - 1) * sum(rates) + 1
    holes = tuple(o for o in range(span) if o not in reach)
    m2 = _hdc_m2(rates)
    satisfied = None if m2 is None else m2 <= kernel_size
    if holes:
        verdict = f"gridded: {len(holes)} of the {span} offsets in the span are never reached"
    else:
        verdict = f"no holes: all {span} offsets in the span are reached"
    if m2 is None:
        hdc = "HDC's M_2 needs at least two layers."
    else:
        hdc = (f"HDC (Wang et al. 2018): M_2 = {m2} {'<=' if satisfied else '>'} K = {kernel_size}"
               f" ({'met' if satisfied else 'not met'}). M_2 <= K alone is not sufficient: rates with a common "
               f"factor > 1 such as [2, 2, 2] meet it and still leave holes, so the exact offset check decides.")
    return GriddingReport(rates, int(kernel_size), span, tuple(sorted(reach)), holes, m2, satisfied,
                          f"rates {list(rates)}, kernel {kernel_size}: {verdict}. {hdc}")


# --------------------------------------------------- plot_receptive_field --


def _path_counts(rates, kernel_size):
    """counts[o] = number of tap paths through the stack that reach offset o (1-D):
    the stack's taps convolved together."""
    import numpy as np

    counts = np.ones(1)
    for r in rates:
        taps = np.zeros((kernel_size - 1) * r + 1)
        taps[::r] = 1
        counts = np.convolve(counts, taps)
    return counts


def plot_receptive_field(rates: Union[Sequence[int], Dict[str, Sequence[int]]], path: str, kernel_size: int = 3,
                         title: Optional[str] = None) -> str:
    """Writes a PNG of the input pixels one output pixel sees through stacks of dilated convs.

    `rates` is one stack ([1, 2, 5]) or several by label ({"HDC": [1, 2, 5],
    "gridded": [2, 2, 2]}), drawn side by side. Each panel shows, per input
    pixel of the span, how many paths reach it (colour) and the holes that none
    reaches (white, counted in the panel's title). Returns `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stacks = dict(rates) if isinstance(rates, dict) else {str(list(rates)): rates}
    if not stacks:
        raise ValueError("plot_receptive_field: expected at least one stack of rates, got none")
    fig, axes = plt.subplots(1, len(stacks), figsize=(3.6 * len(stacks), 4.3), squeeze=False)
    for ax, (label, stack) in zip(axes[0], stacks.items()):
        report = gridding_report(stack, kernel_size)
        counts = _path_counts(report.rates, kernel_size)
        grid = np.outer(counts, counts)
        masked = np.ma.masked_equal(grid, 0)
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        half = (report.span - 1) / 2
        ax.imshow(masked, cmap=cmap, extent=(-half - 0.5, half + 0.5, half + 0.5, -half - 0.5),
                  interpolation="nearest")
        holes_2d = int((grid == 0).sum())
        ax.set_title(f"{label}\nrates {list(report.rates)}: "
                     + (f"{holes_2d} of {report.span ** 2} pixels unseen" if holes_2d else "no holes"),
                     fontsize=9)
        ax.set_xlabel(f"offset (px); field {report.span}x{report.span}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or f"What one output pixel sees through {kernel_size}x{kernel_size} dilated convs "
                          "(colour: number of paths; white: holes)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
