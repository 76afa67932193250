"""receptive_field (against the empirical, gradient-based field), gridding_report
(exact holes, HDC's M_2) and plot_receptive_field."""
import itertools
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous_cuda import AtrousConv1d, AtrousConv2d
from atrous_cuda.models import WaveNet, dilated_resnet18
from atrous_cuda.receptive_field import gridding_report, plot_receptive_field, receptive_field


def _positive(model):
    """Positive weights and no cancellation: every input in the field gets a non-zero gradient."""
    g = torch.Generator().manual_seed(0)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.1)
    return model


def _empirical_field(model, input_shape, out_index):
    """(lo, hi) per spatial axis of the inputs whose gradient for output pixel out_index is non-zero."""
    x = torch.ones(input_shape, dtype=torch.float64, requires_grad=True)
    y = model(x)
    y[(0, slice(None)) + tuple(out_index)].sum().backward()
    nz = x.grad[0].abs().sum(0).nonzero()
    return [(int(nz[:, a].min()), int(nz[:, a].max())) for a in range(nz.shape[1])]


def _assert_field_matches(model, input_shape, out_indices):
    model = _positive(model)
    row = receptive_field(model, input_shape)[-1]
    assert row["name"] == "(model)"
    for out_index in out_indices:
        for axis, (lo, hi) in enumerate(_empirical_field(model, input_shape, out_index)):
            assert row["size"][axis] == hi - lo + 1, (out_index, axis)
            assert row["start"][axis] + row["jump"][axis] * out_index[axis] == (lo + hi) / 2, (out_index, axis)


def test_conv_and_pool_chain_matches_the_gradient_field():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        AtrousConv2d(2, 2, 3, padding=2, dilation=2),
        nn.AvgPool2d(2),
        AtrousConv2d(2, 2, (3, 5), stride=(1, 2), padding=(4, 8), dilation=(4, 4)),
        nn.ReLU(),
        nn.Conv2d(2, 1, 1),
    )
    _assert_field_matches(model, (1, 1, 96, 96), [(8, 5), (9, 6)])


def test_same_strided_and_asymmetric_padding_are_read_from_the_modules():
    model = nn.Sequential(
        AtrousConv2d(1, 2, 3, stride=2, padding="same", dilation=3),
        AtrousConv2d(2, 1, 3, padding=(0, 4, 1, 3), dilation=2),  # F.pad order: left, right, top, bottom
    )
    _assert_field_matches(model, (1, 1, 60, 60), [(10, 12), (11, 9)])


def test_max_pool_has_the_average_pool_field():
    def chain(pool):
        return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), pool, nn.Conv2d(1, 1, 3, dilation=2))
    rows_max = receptive_field(chain(nn.MaxPool2d(3, stride=2, padding=1)), (1, 1, 32, 32))
    rows_avg = receptive_field(chain(nn.AvgPool2d(3, stride=2, padding=1)), (1, 1, 32, 32))
    assert [r["size"] for r in rows_max] == [r["size"] for r in rows_avg]
    assert [r["start"] for r in rows_max] == [r["start"] for r in rows_avg]
    _assert_field_matches(chain(nn.AvgPool2d(3, stride=2, padding=1)), (1, 1, 32, 32), [(6, 7)])


def test_one_row_per_layer_in_execution_order():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(1), nn.Conv2d(1, 1, 3))
    rows = receptive_field(model, (1, 1, 20, 20))
    assert [r["name"] for r in rows] == ["0", "2", "4", "(model)"]
    # 3x3 conv: 3; 2x2 pool: 3 + 1 = 4, jump 2; 3x3 conv at jump 2: 4 + 2*2 = 8.
    assert [r["size"] for r in rows] == [[3, 3], [4, 4], [8, 8], [8, 8]]
    assert [r["jump"] for r in rows] == [[1, 1], [2, 2], [2, 2], [2, 2]]


def test_residual_merge_is_the_union_of_the_branches():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = AtrousConv2d(2, 2, 3, padding=3, dilation=3)
            self.conv2 = AtrousConv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return x + self.conv2(self.conv1(x))

    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), Residual())
    _assert_field_matches(model, (1, 1, 40, 40), [(9, 9)])


def test_bilinear_upsampling_field_size():
    class UpNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)

        def forward(self, x):
            return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=False)

    model = _positive(UpNet())
    row = receptive_field(model, (1, 1, 32, 32))[-1]
    # Each output reads two stride-2 pixels: 3 + 2 = 5 input pixels; jump back to 1.
    assert row["size"] == [5, 5] and row["jump"] == [1, 1]
    for o in (9, 10):
        (lo, hi), _ = _empirical_field(model, (1, 1, 32, 32), (o, o))
        assert hi - lo + 1 == 5
        # The start is the resize's linear approximation: within half an input jump (1 px).
        assert abs(row["start"][0] + o - (lo + hi) / 2) <= 1


def test_transposed_conv_field_is_the_widest_over_outputs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ConvTranspose2d(2, 1, 4, stride=2, padding=1))
    model = _positive(model)
    row = receptive_field(model, (1, 1, 32, 32))[-1]
    # Every output of a 4x4/stride-2 transposed conv reads two inputs: 3 + 2*1 = 5.
    assert row["size"] == [5, 5] and row["jump"] == [1, 1]
    widest = max(hi - lo + 1 for o in (10, 11) for (lo, hi) in _empirical_field(model, (1, 1, 32, 32), (o, o)))
    assert widest == 5


def test_global_pooling_sees_the_whole_input():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    row = receptive_field(model, (1, 1, 17, 12))[-1]
    # Output (0, 0) averages every conv output: 17 (12) pixels plus the conv's 1 on each side.
    assert row["size"] == [19, 14] and row["start"] == [8, 5.5]


def test_causal_conv1d_field_is_all_past():
    model = WaveNet(1, 1, residual_channels=2, gate_channels=2, skip_channels=2, dilations=(1, 2, 4), stacks=2)
    row = receptive_field(model, (1, 1, 64))[-1]
    assert row["size"] == [model.receptive_field] == [15]
    # Output 0 is centred (size - 1) / 2 pixels before input 0: it sees only the past.
    assert row["start"] == [-(model.receptive_field - 1) / 2]
    _assert_field_matches(nn.Sequential(AtrousConv1d(1, 1, 2, dilation=4, padding="causal"),
                                        AtrousConv1d(1, 1, 3, dilation=2, padding="causal")), (1, 1, 40), [(30,)])


def test_dilated_basic_block_backbone_keeps_jump_and_field():
    """layer4 at output stride 32 (jump 16 -> 32): conv1 (stride 2) adds 2*16, then three
    convs add 2*32 each: 224. At output stride 16 it stays at jump 16 with dilations
    (1, 1) then (2, 2): 2*16 + 2*16 + 2*32 + 2*32 = 192. Everything before is shared."""
    rows32 = receptive_field(dilated_resnet18(output_stride=32, width=2), (1, 3, 64, 64))
    rows16 = receptive_field(dilated_resnet18(output_stride=16, width=2), (1, 3, 64, 64))
    assert rows32[-1]["jump"] == [32, 32] and rows16[-1]["jump"] == [16, 16]
    assert rows32[-1]["size"][0] - rows16[-1]["size"][0] == 224 - 192
    assert rows32[-1]["size"] == [435, 435]  # ResNet-18's well-known receptive field


def test_receptive_field_rejects_bad_arguments():
    with pytest.raises(ValueError, match="input_shape"):
        receptive_field(nn.Conv2d(1, 1, 3), (1, 8))
    with pytest.raises(TypeError, match="nn.Module"):
        receptive_field(lambda x: x, (1, 1, 8, 8))


# ------------------------------------------------------------- gridding --


def _reached_by_real_convs(rates, kernel_size):
    """Offsets a stack of AtrousConv1d with positive weights actually reads, from the gradient."""
    convs = nn.Sequential(*[AtrousConv1d(1, 1, kernel_size, dilation=r, bias=False) for r in rates])
    span = (kernel_size - 1) * sum(rates) + 1
    with torch.no_grad():
        for c in convs:
            c.weight.fill_(1.0)
    x = torch.ones(1, 1, span, dtype=torch.float32, requires_grad=True)
    convs(x).sum().backward()  # one output pixel
    return tuple(int(i) for i in x.grad[0, 0].nonzero().flatten())


@pytest.mark.parametrize("rates,kernel_size", [([1, 2, 5], 3), ([2, 2, 2], 3), ([2, 4, 8], 3), ([1, 2, 9], 3),
                                               ([3, 1], 2), ([1, 3, 9], 2), ([6, 12, 18], 3)])
def test_reachable_offsets_are_those_real_convs_read(rates, kernel_size):
    report = gridding_report(rates, kernel_size)
    assert report.reachable == _reached_by_real_convs(rates, kernel_size)
    assert set(report.holes) == set(range(report.span)) - set(report.reachable)


def test_hdc_rates_1_2_5_have_no_holes():
    report = gridding_report([1, 2, 5])
    assert report.holes == () and not report.gridded and report.span == 17
    # M_3 = 5, M_2 = max(5 - 2*2, 5 - 2*(5 - 2), 2) = 2 <= 3.
    assert report.hdc_m2 == 2 and report.hdc_satisfied


def test_equal_even_rates_are_gridded_although_m2_is_met():
    report = gridding_report([2, 2, 2])
    # Every tap offset is even, so the odd offsets of the 13-pixel span are never reached.
    assert report.holes == (1, 3, 5, 7, 9, 11)
    # M_3 = 2, M_2 = max(2 - 4, 2 - 0, 2) = 2 <= 3: met, and still gridded.
    assert report.hdc_m2 == 2 and report.hdc_satisfied and report.gridded
    assert "not sufficient" in report.message


def test_doubling_rates_2_4_8_are_gridded_and_fail_hdc():
    report = gridding_report([2, 4, 8])
    assert report.holes == tuple(range(1, 29, 2))
    # M_3 = 8, M_2 = max(8 - 4, 8 - 2*(8 - 4), 4) = 4 > 3.
    assert report.hdc_m2 == 4 and report.hdc_satisfied is False
    assert "gridded" in report.message and "M_2 = 4 > K = 3" in report.message


def test_single_layer_has_no_m2_and_rate_gaps():
    report = gridding_report([3])
    assert report.hdc_m2 is None and report.holes == (1, 2, 4, 5)


@pytest.mark.parametrize("rates,kernel_size,match", [([], 3, "rates"), ([1, 0], 3, "rates"), ([1, 2.5], 3, "rates"),
                                                     ([1, 2], 0, "kernel_size")])
def test_gridding_report_rejects_bad_arguments(rates, kernel_size, match):
    with pytest.raises(ValueError, match=match):
        gridding_report(rates, kernel_size)


def test_plot_receptive_field_writes_a_png_showing_holes(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (make setup installs it)")
    import matplotlib.image

    path = plot_receptive_field({"HDC": [1, 2, 5], "gridded": [2, 2, 2]}, str(tmp_path / "rf.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 200
    single = plot_receptive_field([1, 2, 3], str(tmp_path / "one.png"), title="one stack")
    assert matplotlib.image.imread(single).shape[1] > 100


def test_transposed_conv_spread_matches_brute_force():
    """One output o of a transposed conv reads inputs i with i*s + m*d - p == o; the
    widest spread of those i over every o, counted directly, for every small (k, s, d)."""
    from atrous_cuda.receptive_field import _transposed_spread

    def brute(k, s, d, inputs=200):
        spread = 0
        for o in range(4 * s * d * k):
            read = [(o - m * d) // s for m in range(k) if (o - m * d) % s == 0 and 0 <= (o - m * d) // s < inputs]
            spread = max(spread, max(read) - min(read)) if read else spread
        return spread

    for k, s, d in itertools.product(range(1, 6), range(1, 7), range(1, 6)):
        assert _transposed_spread(k, s, d) == brute(k, s, d), (k, s, d)
    assert _transposed_spread(3, 6, 4) == 0  # taps at 0, 4, 8 never meet at one output
