"""The README's main command: `python -m atrous_cuda bench` checks every row
against torch before timing it, and counts only useful multiply-adds."""
import itertools
import json

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


def test_useful_macs_with_even_kernel_causal_idiom_padding():
    # k=2 takes d*(k-1) on both sides (torch's causal idiom).
    layer = bench.Layer("k2", 1, 3, 1, 40, 2, (1, 2), (5,))
    assert bench.padding_for(layer, 5) == [0, 5]
    assert bench.useful_macs(layer, 5) == _brute_force_useful_macs(layer, 5)


def test_cpu_suite_is_the_cpu_issue_suite():
    rows = {(layer.name.split()[0], layer.batch, layer.in_channels, layer.height, layer.width,
             layer.out_channels, layer.kernel, layer.dilations, layer.groups) for layer in bench.cpu_suite()}
    assert rows == {
        ("1", 1, 2048, 33, 33, 256, (3, 3), (6, 12, 18), 1),
        ("2", 1, 2048, 65, 65, 256, (3, 3), (12, 24, 36), 1),
        ("3", 1, 512, 65, 65, 512, (3, 3), (4,), 1),
        ("4", 2, 256, 65, 65, 256, (3, 3), (2,), 1),
        ("5", 2, 2048, 33, 33, 2048, (3, 3), (12,), 2048),
        ("6", 2, 256, 1, 16000, 512, (1, 2), (1, 32, 512), 1),
        ("6", 2, 256, 1, 16000, 512, (1, 3), (1, 32, 512), 1),
        ("7", 1, 64, 256, 512, 64, (3, 3), (16,), 1),
    }


def test_summary_geomeans_and_targets():
    rows = [dict(layer="2 ASPP OS8", dilation=12, direction=d, ours_ms=1.0, torch_ms=t, ratio=t,
                 gflops=g, useful_macs=m, height=65, width=65)
            for d, t, g, m in (("forward", 2.0, 100.0, 10), ("grad_input", 8.0, 200.0, 10),
                               ("grad_weight", 0.5, 50.0, 2))]
    summary = bench.summarize(rows, peak_gflops=200.0)
    assert summary["forward"] == 2.0 and summary["grad_weight"] == 0.5
    assert abs(summary["forward+backward"] - 10.5 / 3) < 1e-12  # times add up per conv
    assert abs(summary["ASPP rate>=12"] - 2.0) < 1e-12  # (2 * 8 * 0.5) ** (1/3)
    # Largest shapes: the two rows with 10 useful MACs (>= half the largest), at 50% and 100% of peak.
    assert summary["share of peak, largest shapes (median)"] == 0.75
    table = bench.format_table("t", [dict(r, error=0.0, ok=True, det_ratio=float("nan")) for r in rows], summary)
    assert "forward: 2.00 (target >= 1.0: met)" in table
    assert "grad_weight: 0.50 (target >= 1.5: not met)" in table


def test_cpu_peak_probe_is_positive_and_bounded():
    peak = bench._C.cpu_peak_gflops(200000)
    # 2 FLOP per lane per FMA; no core does more than 2 512-bit FMAs per cycle at 6 GHz.
    assert 0 < peak < 2 * 16 * 2 * 6.0 * torch.get_num_threads()


def test_bench_checks_every_row_and_writes_a_report(tmp_path, monkeypatch):
    # A two-layer suite keeps this quick; the code path is the one `make bench` runs.
    monkeypatch.setattr(bench, "cpu_suite", lambda: [
        bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,)),
        bench.Layer("depthwise", 1, 8, 9, 9, 8, (3, 3), (2,), groups=8),
    ])
    report = tmp_path / "report.md"
    results = tmp_path / "results"
    assert bench.main(["--device", "cpu", "--reps", "1", "--report", str(report), "--results-dir", str(results)]) == 0
    rows = [line for line in report.read_text().splitlines() if line.startswith("| aspp") or line.startswith("| depthwise")]
    # 2 convs x 3 directions x 2 memory formats (NCHW and channels_last) in float32, then
    # bfloat16 and float16 in channels_last against our float32 rows.
    assert len(rows) == 24 and all(line.rstrip().endswith("| ok |") for line in rows)
    data = json.loads((results / "bench-cpu.json").read_text())
    assert [(s["dtype"], s["memory_format"]) for s in data["sections"]] == [
        ("float32", "nchw"), ("float32", "channels_last"), ("bfloat16", "channels_last"), ("float16", "channels_last")]
    assert all(len(s["rows"]) == 6 and all(r["ok"] for r in s["rows"]) for s in data["sections"])
    fp32 = {(r["layer"], r["direction"]): r["ours_ms"] for r in data["sections"][1]["rows"]}
    for section in data["sections"][2:]:
        for r in section["rows"]:
            assert r["fp32_ours_ms"] == fp32[(r["layer"], r["direction"])]
            assert r["vs_fp32"] == pytest.approx(r["fp32_ours_ms"] / r["ours_ms"])
    assert "our float32 time / our bfloat16 time, forward" in data["sections"][2]["summary"]
    assert data["environment"]["cpu_peak_gflops"] > 0
    assert (results / "bench-cpu.md").read_text().count("| ok |") == 24
    # The chart is optional: written exactly when matplotlib is installed.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (results / "bench-cpu.png").exists()
    else:
        assert (results / "bench-cpu.png").read_bytes().startswith(b"\x89PNG")


def test_bench_fails_when_a_row_does_not_match_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cpu_suite", lambda: [bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,))])
    monkeypatch.setitem(bench.TOLERANCE, torch.float32, -1.0)  # nothing can pass
    assert bench.main(["--device", "cpu", "--reps", "1", "--results-dir", ""]) == 1
