"""The demo (python -m atrous_cuda demo) in a tiny configuration: it trains both
models, writes the picture and the numbers, is reproducible, and its data has
the properties the comparison relies on."""
import json

import torch

from atrous_cuda.__main__ import main as cli_main
from atrous_cuda.demo import SmallDeepLab, make_batch, run_demo

TINY = dict(iterations=2, batch_size=4, size=32, channels=8, train_images=8, test_images=4, rows=2, progress=False)


def _without_timings(results):
    return {k: ({kk: vv for kk, vv in v.items() if kk != "train_seconds"} if isinstance(v, dict) else v)
            for k, v in results.items()}


def test_demo_writes_picture_and_numbers_and_is_reproducible(tmp_path):
    results = run_demo(str(tmp_path / "a"), **TINY)
    with open(tmp_path / "a" / "demo.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "a" / "demo.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    atrous, plain = results["atrous"], results["dilation_1"]
    assert atrous["parameters"] == plain["parameters"]
    assert json.loads(json.dumps(plain["dilations"])) == {"block_dilations": [[1, 1], [1, 1]], "rates": [1, 1, 1]}
    assert atrous["block_rates_holes"] == 0 and plain["block_rates_holes"] == 0
    for r in (atrous, plain):
        assert len(r["iou"]) == 3 and all(0.0 <= v <= 1.0 for v in r["iou"])
        assert abs(r["miou"] - sum(r["iou"]) / 3) < 1e-3
    # Stem 3 + 2*2 + 2*2*2 = 7 px at jump 4; each block conv adds 2*dilation*4, so 4*8 = 32 px
    # at dilation 1 and 2*(1+2+5+9)*4 = 136 px at 1, 2, 5, 9; the widest ASPP branch 2*rate*4.
    assert plain["conv_receptive_field_px"] == 7 + 32 + 8
    assert atrous["conv_receptive_field_px"] == 7 + 136 + 72
    again = run_demo(str(tmp_path / "b"), **TINY)
    assert _without_timings(again) == _without_timings(results)


def test_demo_command_line(tmp_path, capsys):
    assert cli_main(["demo", "--out-dir", str(tmp_path), "--iterations", "1", "--batch-size", "2", "--size", "32",
                     "--channels", "8", "--train-images", "4", "--test-images", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "atrous: mIoU" in out and "dilation_1: mIoU" in out
    assert (tmp_path / "demo.png").exists() and (tmp_path / "demo.json").exists()


def test_demo_data_is_seeded_and_has_both_shape_sizes():
    a = make_batch(6, 64, torch.Generator().manual_seed(3))
    b = make_batch(6, 64, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    images, labels = a
    assert images.shape == (6, 3, 64, 64) and labels.shape == (6, 64, 64)
    assert set(labels.unique().tolist()) == {0, 1, 2}
    # Large shapes cover more pixels than small ones (radius 16-24 against 3-7).
    assert (labels == 2).sum() > (labels == 1).sum()


def test_same_parameters_with_and_without_dilation():
    atrous = SmallDeepLab(3, 8, block_dilations=((1, 2), (5, 9)), rates=(3, 6, 9))
    plain = SmallDeepLab(3, 8, block_dilations=((1, 1), (1, 1)), rates=(1, 1, 1))
    assert [p.shape for p in atrous.parameters()] == [p.shape for p in plain.parameters()]
    x = torch.randn(2, 3, 32, 32)
    assert atrous(x).shape == plain(x).shape == (2, 3, 32, 32)
