"""Random convolution configurations against torch, forward and backward, in float64.

derandomize=True makes every run draw the same examples, so CI is stable.
"""
import pytest
import torch
from conftest import check_against_torch, explicit_pads, random_conv_inputs

# `make test` installs hypothesis; a GPU machine running bench/gpu_check.sh may not have it.
pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def conv_configs(draw, ndim):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups > 1
    cin_per_group = 1 if depthwise else draw(st.integers(1, 3))
    cout_per_group = draw(st.integers(1, 3))
    batch = draw(st.sampled_from([0, 1, 2, None]))  # None: unbatched
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = tuple(draw(st.sampled_from([1, 2, 3, 5, 9])) for _ in range(ndim))
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(ndim))

    forms = ["int", "tuple", "same", "valid", "asymmetric"] + (["causal"] if ndim == 1 else [])
    form = draw(st.sampled_from(forms))
    if form == "int":
        padding = draw(st.integers(0, 10))
    elif form == "tuple":
        padding = tuple(draw(st.integers(0, 10)) for _ in range(ndim))
    elif form == "asymmetric":
        padding = tuple(draw(st.integers(0, 10)) for _ in range(2 * ndim))
    else:
        padding = form
    # A dilated kernel longer than the padded input is an error, not a convolution:
    # then pad the end just enough, which exercises asymmetric padding as well.
    pads = list(explicit_pads(padding, ndim, spatial, kernel, stride, dilation))  # F.pad order
    for i in range(ndim):
        j = 2 * (ndim - 1 - i)
        deficit = dilation[i] * (kernel[i] - 1) + 1 - (spatial[i] + pads[j] + pads[j + 1])
        if deficit > 0:
            pads[j + 1] += deficit
            padding = tuple(pads)

    x_shape = ((batch,) if batch is not None else ()) + (groups * cin_per_group,) + spatial
    w_shape = (groups * cout_per_group, cin_per_group) + kernel
    layouts = ["contiguous", "channels_last", "transposed"] if ndim == 2 and batch is not None else ["contiguous"]
    layout = draw(st.sampled_from(layouts))
    return dict(x_shape=x_shape, w_shape=w_shape, bias=draw(st.booleans()), layout=layout,
                kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def _check(config):
    x, w, b = random_conv_inputs(config["x_shape"], config["w_shape"], config["bias"])
    if config["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif config["layout"] == "transposed":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, non-contiguous strides
    ours, _ = check_against_torch(x, w, b, **config["kwargs"])
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        assert ours.out.is_contiguous(memory_format=torch.channels_last)


@SETTINGS
@given(conv_configs(ndim=2))
def test_random_conv2d_matches_torch(config):
    _check(config)


@SETTINGS
@given(conv_configs(ndim=1))
def test_random_conv1d_matches_torch(config):
    _check(config)
