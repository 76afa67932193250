"""The README's main command: `python -m atrous_cuda bench` checks every row
against torch before timing it, and counts only useful multiply-adds."""
import itertools

import pytest
import torch

from atrous_cuda import bench


def _brute_force_useful_macs(layer, dilation):
    pad = bench.padding_for(layer, dilation)
    dil = [dilation if layer.height > 1 else 1, dilation]
    size = [layer.height, layer.width]
    out = [(size[a] + 2 * pad[a] - dil[a] * (layer.kernel[a] - 1) - 1) // layer.stride + 1 for a in range(2)]
    valid = 0
    for oy, ox, ky, kx in itertools.product(range(out[0]), range(out[1]), range(layer.kernel[0]), range(layer.kernel[1])):
        iy = oy * layer.stride - pad[0] + ky * dil[0]
        ix = ox * layer.stride - pad[1] + kx * dil[1]
        valid += 0 <= iy < size[0] and 0 <= ix < size[1]
    return layer.batch * valid * (layer.in_channels // layer.groups) * layer.out_channels


@pytest.mark.parametrize("dilation", [1, 6, 18, 40])
def test_useful_macs_count_only_taps_inside_the_image(dilation):
    layer = bench.Layer("t", 2, 4, 13, 17, 3, (3, 3), (dilation,))
    assert bench.useful_macs(layer, dilation) == _brute_force_useful_macs(layer, dilation)
    one_d = bench.Layer("t1d", 1, 4, 1, 50, 2, (1, 3), (dilation,))
    assert bench.useful_macs(one_d, dilation) == _brute_force_useful_macs(one_d, dilation)


def test_cpu_suite_is_the_gpu_suite_scaled_down():
    cpu = bench.cpu_suite()
    assert len(cpu) == 8 and all(layer.batch == 1 for layer in cpu)
    assert [layer.dilations for layer in cpu] == [layer.dilations for layer in bench.GPU_SUITE[:8]]


def test_bench_checks_every_row_and_writes_a_report(tmp_path, monkeypatch):
    # A two-layer suite keeps this quick; the code path is the one `make bench` runs.
    monkeypatch.setattr(bench, "cpu_suite", lambda: [
        bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,)),
        bench.Layer("depthwise", 1, 8, 9, 9, 8, (3, 3), (2,), groups=8),
    ])
    report = tmp_path / "report.md"
    assert bench.main(["--device", "cpu", "--reps", "1", "--report", str(report)]) == 0
    rows = [line for line in report.read_text().splitlines() if line.startswith("| aspp") or line.startswith("| depthwise")]
    assert len(rows) == 6 and all(line.rstrip().endswith("| ok |") for line in rows)


def test_bench_fails_when_a_row_does_not_match_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cpu_suite", lambda: [bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,))])
    monkeypatch.setitem(bench.TOLERANCE, torch.float32, -1.0)  # nothing can pass
    assert bench.main(["--device", "cpu", "--reps", "1"]) == 1
