"""The demo (python -m atrous_cuda demo) in a tiny configuration: it trains both
models, writes the picture and the numbers, is reproducible, and its data has
the properties the comparison relies on."""
import json
import math
import sys

import pytest
import torch

from atrous_cuda.__main__ import main as cli_main
from atrous_cuda.demo import SmallDeepLab, make_batch, run_demo

TINY = dict(iterations=2, batch_size=4, size=32, channels=8, train_images=8, test_images=4, rows=2, progress=False)

try:
    import matplotlib  # noqa: F401
except ImportError:  # the GPU machine of bench/gpu_check.sh has only torch and pytest
    HAVE_MATPLOTLIB = False
else:
    HAVE_MATPLOTLIB = True
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (make setup installs it)")


def _without_timings(results):
    return {k: ({kk: vv for kk, vv in v.items() if kk != "train_seconds"} if isinstance(v, dict) else v)
            for k, v in results.items()}


@needs_matplotlib
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


@needs_matplotlib
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


@needs_matplotlib
def test_demo_over_two_seeds_reports_mean_and_sample_std(tmp_path):
    results = run_demo(str(tmp_path / "two"), seeds=2, **TINY)
    single = run_demo(str(tmp_path / "one"), **TINY)
    for name in ("atrous", "dilation_1"):
        over = results[name]["over_seeds"]
        assert over["seeds"] == [0, 1] and len(over["miou"]) == 2 and len(over["iou"]) == 2
        # The first seed is the pictured run, the same as a single-seed run.
        assert over["miou"][0] == results[name]["miou"] == single[name]["miou"]
        assert over["iou"][0] == results[name]["iou"] == single[name]["iou"]
        a, b = over["miou"]
        # Two values: mean (a+b)/2, sample std |a-b|/sqrt(2).
        assert abs(over["miou_mean"] - (a + b) / 2) <= 1e-4
        assert abs(over["miou_std"] - abs(a - b) / math.sqrt(2)) <= 1e-4
        for c in range(3):
            x, y = over["iou"][0][c], over["iou"][1][c]
            assert abs(over["iou_mean"][c] - (x + y) / 2) <= 1e-4
            assert abs(over["iou_std"][c] - abs(x - y) / math.sqrt(2)) <= 1e-4
        assert single[name]["over_seeds"]["miou_std"] is None  # one value has no sample std
    with open(tmp_path / "two" / "demo.json") as f:
        assert json.load(f)["config"]["seeds"] == 2


@needs_matplotlib
def test_demo_command_line_prints_the_spread_over_seeds(tmp_path, capsys):
    assert cli_main(["demo", "--out-dir", str(tmp_path), "--iterations", "1", "--batch-size", "2", "--size", "32",
                     "--channels", "8", "--train-images", "4", "--test-images", "2", "--no-progress",
                     "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "over 2 seeds (0..1), mean +- sample std:" in out and out.count("+-") >= 2 * 4


def test_demo_rejects_zero_seeds(tmp_path):
    with pytest.raises(ValueError, match="expected seeds to be an int >= 1, got 0"):
        run_demo(str(tmp_path), seeds=0, **TINY)


@needs_matplotlib
def test_demo_runs_without_tqdm_under_no_progress(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    results = run_demo(str(tmp_path), **TINY)  # TINY has progress=False
    assert "miou" in results["atrous"]
    with pytest.raises(ImportError, match=r"needs tqdm \(the progress bar; --no-progress runs without it\).*"
                                          r"pip install 'atrous_cuda\[demo\]'"):
        run_demo(str(tmp_path), **{**TINY, "progress": True})


def test_demo_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli_main(["demo", "--out-dir", str(tmp_path), "--iterations", "1", "--batch-size", "2", "--size", "32",
                     "--channels", "8", "--train-images", "4", "--test-images", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "needs matplotlib (the picture demo.png)" in err and "pip install 'atrous_cuda[demo]'" in err
    assert not (tmp_path / "demo.json").exists()  # it stopped before training


def test_pyproject_declares_the_demo_extra():
    import pathlib

    tomllib = pytest.importorskip("tomllib", reason="tomllib (the TOML parser) is in the standard library from Python 3.11")
    project = tomllib.loads((pathlib.Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras["demo"]) == {"matplotlib", "tqdm"}
    assert {"torchvision", "matplotlib", "tqdm"} <= set(extras["test"])


# ------------------------------------------------- python -m atrous_cuda wavenet-demo --

WAVENET_QUICK = ["--quick", "--no-progress"]


def _read_wav(path):
    import wave

    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes(), w.readframes(w.getnframes())


def test_wavenet_demo_quick_writes_wavs_plot_and_numbers(tmp_path, capsys):
    from atrous_cuda import wavenet_demo as wd

    assert cli_main(["wavenet-demo", "--out", str(tmp_path), *WAVENET_QUICK]) == 0
    out = capsys.readouterr().out
    assert "samples/s per sequence" in out and "within half a semitone" in out
    with open(tmp_path / "wavenet_demo.json") as f:
        results = json.load(f)
    samples = math.ceil(wd.QUICK["seconds"] * wd.SAMPLE_RATE / wd.HOP) * wd.HOP  # whole frames: 2048
    g = results["generation"]
    assert g["samples_per_sequence"] == samples and g["batch"] == len(wd.TIMBRES) and g["mode"] == "greedy"
    assert g["samples_per_second"] > 0 and g["real_time_factor"] > 0
    assert g["samples_per_second"] == pytest.approx(g["samples_per_second_per_sequence"] * 2, rel=1e-3)
    assert g["real_time_factor"] == pytest.approx(g["samples_per_second_per_sequence"] / wd.SAMPLE_RATE, rel=1e-2)
    q = results["quality"]
    assert q["chance"] == 0.125 and q["pitch"]["notes"] > 0
    assert 0.0 <= q["pitch"]["within_half_semitone"] <= 1.0 and q["pitch"]["median_abs_cents"] >= 0
    for timbre in wd.TIMBRES:
        # The measure itself is right: every note of the (quantized) target has its pitch.
        assert q["by_timbre"][timbre]["target"]["within_half_semitone"] == 1.0
    assert q["by_timbre"]["sine"]["target"]["overtone_fraction"] < 0.01
    assert 0.2 < q["by_timbre"]["bright"]["target"]["overtone_fraction"] < 0.3
    assert results["training"]["steps_per_second"] > 0 and results["config"]["steps"] == wd.QUICK["steps"]
    for name in ("generated.wav", "target.wav"):
        channels, width, rate, frames, data = _read_wav(tmp_path / name)
        assert (channels, width, rate, frames) == (1, 2, wd.SAMPLE_RATE, 2 * samples)  # sine, then bright
        assert len(data) == 2 * frames and any(data)
    if HAVE_MATPLOTLIB:
        assert results["files"]["plot"] == "wavenet_demo.png"
        with open(tmp_path / "wavenet_demo.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_wavenet_demo_is_reproducible(tmp_path):
    from atrous_cuda.wavenet_demo import QUICK, run_demo

    config = {**QUICK, "steps": 2, "seconds": 0.1, "plot": False, "progress": False}
    a = run_demo(str(tmp_path / "a"), **config)
    b = run_demo(str(tmp_path / "b"), **config)
    assert _read_wav(tmp_path / "a" / "generated.wav") == _read_wav(tmp_path / "b" / "generated.wav")
    assert a["quality"] == b["quality"] and a["training"]["final_loss"] == b["training"]["final_loss"]


def test_wavenet_demo_data_mu_law_and_pitch_measure():
    from atrous_cuda.models.wavenet import mu_law_decode
    from atrous_cuda.wavenet_demo import (CLASSES, HOP, PITCHES_HZ, TIMBRES, estimate_pitch, make_batch,
                                          mu_law_encode, note_report, synthesize)

    k = torch.arange(CLASSES)
    assert torch.equal(mu_law_encode(mu_law_decode(k, CLASSES)), k)  # the inverse of the model's decoding
    a = make_batch(3, 20, torch.Generator().manual_seed(5))
    b = make_batch(3, 20, torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    audio, local, glob, melodies, timbres = a
    assert audio.shape == (3, 20 * HOP) and local.shape == (3, len(PITCHES_HZ), 20) and glob.shape == (3, 2)
    assert torch.equal(local.argmax(1), melodies) and torch.equal(glob.argmax(1), timbres)
    assert (melodies[:, 1:] != melodies[:, :-1]).any()  # the pitch changes
    for timbre in TIMBRES:
        melody = torch.tensor([0] * 8 + [7] * 8 + [3] * 8)
        wave_ = synthesize(melody, timbre, phase0=1.0)
        assert wave_.abs().max() <= 0.6 + 1e-12
        steps = (wave_[1:] - wave_[:-1]).abs()
        within = torch.cat([steps[:8 * HOP - 1], steps[8 * HOP:16 * HOP - 1], steps[16 * HOP:]])
        assert steps[8 * HOP - 1] <= within.max() and steps[16 * HOP - 1] <= within.max()  # no click at a change
        rows = note_report(wave_, melody)
        assert [r[0] for r in rows] == [PITCHES_HZ[0], PITCHES_HZ[7], PITCHES_HZ[3]]
        assert all(abs(r[2]) < 5 for r in rows)  # cents
    assert abs(estimate_pitch(synthesize(torch.tensor([5] * 10), "bright")) - 440.0) < 1.0


def test_wavenet_demo_without_matplotlib_skips_the_plot_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli_main(["wavenet-demo", "--out", str(tmp_path), *WAVENET_QUICK, "--steps", "1", "--seconds",
                     "0.1"]) == 0
    captured = capsys.readouterr()
    assert "matplotlib is not installed, so no wavenet_demo.png" in captured.err
    assert not (tmp_path / "wavenet_demo.png").exists() and (tmp_path / "generated.wav").exists()
    with open(tmp_path / "wavenet_demo.json") as f:
        assert json.load(f)["files"]["plot"] is None
    assert "wavenet_demo.png" not in captured.out


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "argument --steps: must be > 0, got 0"),
    (["--seconds", "-1"], "argument --seconds: must be > 0, got -1"),
    (["--seconds", "nan"], "argument --seconds: must be > 0, got nan"),
    (["--batch-size", "two"], "argument --batch-size: expected an integer, got 'two'"),
    (["--temperature", "-0.5"], "argument --temperature: must be >= 0 (0: greedy), got -0.5"),
])
def test_wavenet_demo_rejects_bad_options(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        cli_main(["wavenet-demo", "--out", str(tmp_path), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m atrous_cuda wavenet-demo" in err
    assert not any(tmp_path.iterdir())  # nothing trained or written


def test_wavenet_demo_run_demo_rejects_bad_arguments(tmp_path):
    from atrous_cuda.wavenet_demo import run_demo

    with pytest.raises(ValueError, match="expected steps to be an int >= 1, got 0"):
        run_demo(str(tmp_path), steps=0)
    with pytest.raises(ValueError, match="expected segment to be a positive multiple of 64, got 100"):
        run_demo(str(tmp_path), segment=100)
    with pytest.raises(ValueError, match="expected max_dilation to be a power of two, got 6"):
        run_demo(str(tmp_path), max_dilation=6)


def test_main_lists_every_command(capsys):
    assert cli_main([]) == 2
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m atrous_cuda {bench,info,demo,wavenet-demo} [options]")
    for command in ("bench", "info", "demo", "wavenet-demo"):
        assert f"\n  {command} " in usage
    assert cli_main(["--help"]) == 0 and capsys.readouterr().out == usage
    assert cli_main(["nonsense"]) == 2
    assert "unknown command 'nonsense'; expected 'bench', 'info', 'demo' or 'wavenet-demo'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["wavenet-demo", "--help"])
    assert e.value.code == 0
    assert "usage: python -m atrous_cuda wavenet-demo" in capsys.readouterr().out
