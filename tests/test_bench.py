"""The README's main command: `python -m atrous_cuda bench` checks every row
against torch before timing it, and counts only useful multiply-adds."""
import copy
import inspect
import itertools
import json

import pytest
import torch

from atrous_cuda import bench, bench_generation, bench_models

# A tiny WaveNet and a few steps: the generation section's code path in well under a second.
TINY_GENERATION = bench_generation.Settings(
    in_channels=8, out_channels=8, residual_channels=4, gate_channels=4, skip_channels=8, dilations=(1, 2),
    stacks=2, torch_steps=3, step_steps=12, generate_steps=40, reps=2, check_steps=24, greedy_steps=8,
    error_steps=16)

GENERATION_ROWS = [("torch", 1), ("step", 1), ("generate", 1), ("step", 8), ("generate", 8),
                   ("generate_bf16", 1), ("generate_bf16", 8)]
GENERATION_COLUMNS = ["path", "batch", "time per step (us)", "samples/s", "real time at 16 kHz",
                      "target (samples/s)", "met", "logits error vs fp32", "greedy agreement vs fp32"]


# The whole-model section on 33x33 inputs (at 17x17 torch's CPU kernels take a slow path, ~1 s a
# forward), one repetition. bench.main's tests run its first row only, without the own model.
TINY_MODELS = bench_models.Settings(inference_size=33, train_size=33, reps=1, warmup=0)
TINY_MAIN_MODELS = bench_models.Settings(inference_size=33, train_size=33, reps=1, warmup=0,
                                         configs=bench_models.CONFIGS[:1], own_model=False)
MODEL_COLUMNS = ["configuration", "batch, size", "torch ms", "converted ms", "torch/converted", "target", "met",
                 "own DeepLabV3 ms", "torch/own", "convs converted", "check (worst error / bound)"]


def _substitute_settings(monkeypatch, name, tiny):
    """bench.<name>(quick) returns `tiny`; the list returned records each call's `quick`."""
    calls = []

    def settings(quick):
        calls.append(quick)
        return tiny
    monkeypatch.setattr(bench, name, settings)
    return calls


@pytest.fixture(autouse=True)
def tiny_generation_section(monkeypatch):
    """bench.main runs the generation section on the tiny model here (never issue 16's)."""
    return _substitute_settings(monkeypatch, "generation_settings", TINY_GENERATION)


@pytest.fixture(autouse=True)
def tiny_models_section(monkeypatch):
    """bench.main runs the whole-model section on tiny inputs here (never issue 14's 520x520)."""
    return _substitute_settings(monkeypatch, "models_settings", TINY_MAIN_MODELS)


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


def test_bench_checks_every_row_and_writes_a_report(tmp_path, monkeypatch, tiny_generation_section,
                                                    tiny_models_section):
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
    # The layer sections, then the WaveNet generation section (issue 16) and the whole-model section
    # (issue 14 §4) after them.
    assert [(s["dtype"], s["memory_format"], s.get("kind")) for s in data["sections"]] == [
        ("float32", "nchw", None), ("float32", "channels_last", None), ("bfloat16", "channels_last", "vs_fp32"),
        ("float16", "channels_last", "vs_fp32"), ("float32", None, "generation"), ("float32", None, "models")]
    layer_sections, generation, models = data["sections"][:4], data["sections"][4], data["sections"][5]
    assert all(len(s["rows"]) == 6 and all(r["ok"] for r in s["rows"]) for s in layer_sections)
    fp32 = {(r["layer"], r["direction"]): r["ours_ms"] for r in data["sections"][1]["rows"]}
    for section in layer_sections[2:]:
        for r in section["rows"]:
            assert r["fp32_ours_ms"] == fp32[(r["layer"], r["direction"])]
            assert r["vs_fp32"] == pytest.approx(r["fp32_ours_ms"] / r["ours_ms"])
    assert "our float32 time / our bfloat16 time, forward" in data["sections"][2]["summary"]
    assert data["environment"]["cpu_peak_gflops"] > 0
    assert (results / "bench-cpu.md").read_text().count("| ok |") == 24
    # The generation section: tiny settings, not --quick; its rows and checks in the json,
    # its table in the report and in bench-cpu.md.
    assert tiny_generation_section == [False]
    assert [(r["kind"], r["batch"]) for r in generation["rows"]] == GENERATION_ROWS
    assert generation["failures"] == 0 and all(c["ok"] for c in generation["checks"])
    assert generation["threads"] == torch.get_num_threads() and "table" not in generation
    for text in (report.read_text(), (results / "bench-cpu.md").read_text()):
        assert "WaveNet generation, float32" in text
        assert "| per-layer torch path (_steps_torch), step | 1 |" in text
        assert text.count("- check: ") == 2 and "FAIL" not in text
    # The whole-model section: tiny settings, not --quick; its row in the json and its table in both files.
    assert tiny_models_section == [False]
    assert [r["config"] for r in models["rows"]] == ["inference, fp32, NCHW"]
    assert models["failures"] == 0 and models["rows"][0]["ok"] and "table" not in models
    for text in (report.read_text(), (results / "bench-cpu.md").read_text()):
        assert "whole models: DeepLabV3-ResNet50 OS8" in text
        assert "| inference, fp32, NCHW | 1, 33x33 |" in text
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


def test_bench_quick_runs_a_quick_generation_section(tmp_path, monkeypatch, tiny_generation_section,
                                                     tiny_models_section):
    monkeypatch.setattr(bench, "cpu_suite", lambda: [bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,))])
    report = tmp_path / "report.md"
    assert bench.main(["--device", "cpu", "--quick", "--results-dir", "", "--report", str(report)]) == 0
    assert tiny_generation_section == [True] and tiny_models_section == [True]
    assert "WaveNet generation, float32" in report.read_text()
    # --quick itself: fewer steps and repetitions than the full section.
    quick, full = bench_generation.default_settings(True), bench_generation.default_settings(False)
    assert full.reps == 5 and quick.reps < full.reps
    for name in ("torch_steps", "step_steps", "generate_steps", "check_steps", "greedy_steps", "error_steps"):
        assert getattr(quick, name) < getattr(full, name)
    assert (full.in_channels, full.out_channels, full.residual_channels, full.gate_channels, full.skip_channels,
            full.dilations, full.stacks, full.kernel_size) == (256, 256, 64, 64, 128, tuple(2 ** i for i in range(10)),
                                                               2, 2)


def test_bench_skips_the_generation_section_without_float32(tmp_path, monkeypatch, tiny_generation_section,
                                                            tiny_models_section):
    monkeypatch.setattr(bench, "cpu_suite", lambda: [bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,))])
    assert bench.main(["--device", "cpu", "--reps", "1", "--dtype", "float64", "--results-dir", ""]) == 0
    assert tiny_generation_section == [] and tiny_models_section == []


def test_bench_no_models_skips_the_whole_model_section(tmp_path, monkeypatch, tiny_models_section):
    monkeypatch.setattr(bench, "cpu_suite", lambda: [bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,))])
    report = tmp_path / "report.md"
    assert bench.main(["--device", "cpu", "--reps", "1", "--memory-format", "nchw", "--no-models",
                       "--results-dir", "", "--report", str(report)]) == 0
    assert tiny_models_section == [] and "whole models" not in report.read_text()


def test_bench_fails_when_a_generation_check_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cpu_suite", lambda: [bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,))])
    monkeypatch.setattr(bench_generation, "check_greedy_generate", lambda *args: (False, "batch 1: 1 of 8 differ"))
    report = tmp_path / "report.md"
    assert bench.main(["--device", "cpu", "--reps", "1", "--memory-format", "nchw", "--results-dir", "",
                       "--report", str(report)]) == 1
    assert "- check: greedy generate() == argmax decoding with forward(), 8 samples: FAIL (batch 1: 1 of 8 differ)" \
        in report.read_text()


# ------------------------------------------------------ WaveNet generation --

def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_generation_section_has_every_row_and_column_and_its_checks_pass():
    section = bench_generation.run_section(TINY_GENERATION, title="tiny")
    assert section["failures"] == 0
    assert [c["ok"] for c in section["checks"]] == [True, True]
    assert "batch 1: bitwise equal; batch 8: bitwise equal" in section["checks"][0]["detail"]
    assert section["threads"] == torch.get_num_threads()
    rows = section["rows"]
    assert [(r["kind"], r["batch"]) for r in rows] == GENERATION_ROWS
    for r in rows:
        assert r["available"] and r["reps"] == TINY_GENERATION.reps
        assert r["samples_per_s"] == pytest.approx(r["batch"] * 1e6 / r["us_per_step"])
        assert r["realtime_16k"] == pytest.approx(r["samples_per_s"] / 16000)
        assert (r["target"], r["verdict"]) == bench_generation.evaluate_target(r["kind"], r["batch"],
                                                                               r["samples_per_s"])
        if r["kind"] == "generate_bf16":
            # bfloat16 weights: about 2^-8 relative error per product, far from float32's bitwise equality.
            assert 0 < r["error"] < 0.05 and 0 <= r["agreement"] <= 1
        else:
            assert r["error"] is None and r["agreement"] is None
    assert {r["kind"]: r["steps"] for r in rows} == {"torch": 3, "step": 12, "generate": 40, "generate_bf16": 40}

    lines = section["table"].splitlines()
    assert lines[0] == "### tiny"
    assert _cells(lines[2]) == GENERATION_COLUMNS
    body = [_cells(line) for line in lines[4:4 + len(rows)]]
    assert all(len(cells) == len(GENERATION_COLUMNS) for cells in body)
    assert [cells[0] for cells in body] == [bench_generation.PATHS[kind] for kind, _ in GENERATION_ROWS]
    assert [cells[6] for cells in body] == [r["verdict"] for r in rows]
    assert all(cells[6] in ("met", "NOT met") for cells in body[1:5]) and body[0][5:7] == ["-", "-"]
    assert [cells[5] for cells in body[1:5]] == ["16,000", "24,000", "128,000", "128,000"]
    assert all(cells[7] != "-" and cells[8].endswith("%") for cells in body[5:])
    checks = [line for line in lines if line.startswith("- check: ")]
    assert len(checks) == 2 and all(": ok (" in line for line in checks)
    assert any(line.startswith("- threads: ") for line in lines)
    assert sum("bf16 weights, generate() batch" in line and "the float32 speed" in line for line in lines) == 2
    json.dumps({k: v for k, v in section.items() if k != "table"})  # the bench writes it as json


def test_generation_bf16_rows_say_not_available(monkeypatch):
    # Before reset_state took weights_dtype: rows that say so, not a crash or a gap.
    monkeypatch.setattr(bench_generation, "bf16_unavailable_reason", lambda model: "reset_state has no weights_dtype")
    section = bench_generation.run_section(TINY_GENERATION)
    rows = section["rows"]
    assert [(r["kind"], r["batch"]) for r in rows] == GENERATION_ROWS
    for r in rows[5:]:
        assert not r["available"] and r["us_per_step"] is None and r["verdict"] == "-"
        assert r["note"] == "not available: reset_state has no weights_dtype"
    table_rows = [line for line in section["table"].splitlines() if line.startswith("| generate(), bf16 weights")]
    assert len(table_rows) == 2 and all(_cells(line)[2:5] == ["not available"] * 3 for line in table_rows)
    assert section["table"].count("not available: reset_state has no weights_dtype") == 2
    assert section["failures"] == 0


def test_bf16_unavailable_reason():
    class Old:  # reset_state without weights_dtype
        def reset_state(self, batch_size):
            pass
    assert "no weights_dtype" in bench_generation.bf16_unavailable_reason(Old())
    model = TINY_GENERATION.model()
    if "weights_dtype" in inspect.signature(model.reset_state).parameters:
        assert bench_generation.bf16_unavailable_reason(model) is None
        assert model.state.batch_size == 1 and model.state.t == 0  # left in a fresh float32 state


@pytest.mark.parametrize("kind, batch, rate, expected", [
    ("step", 1, 16000.0, (16000, "met")),
    ("step", 1, 15999.9, (16000, "NOT met")),
    ("generate", 1, 24000.0, (24000, "met")),
    ("generate", 1, 23000.0, (24000, "NOT met")),
    ("step", 8, 128000.0, (128000, "met")),
    ("generate", 8, 127999.0, (128000, "NOT met")),
    ("generate", 8, 1e9, (128000, "met")),
    ("torch", 1, 1e9, (None, "-")),
    ("generate_bf16", 1, 1e9, (None, "-")),
    ("generate_bf16", 8, None, (None, "-")),
    ("step", 4, 1e9, (None, "-")),  # no target at other batches
    ("generate", 1, None, (24000, "NOT met")),  # not measured
    ("generate", 1, float("nan"), (24000, "NOT met")),
])
def test_generation_targets(kind, batch, rate, expected):
    assert bench_generation.evaluate_target(kind, batch, rate) == expected


def test_generation_checks_catch_a_difference(monkeypatch):
    model = TINY_GENERATION.model()  # outside inference mode, as the section builds it
    with torch.inference_mode():
        assert bench_generation.check_step_equals_forward(model, (1, 2), 10) == (
            True, "batch 1: bitwise equal; batch 2: bitwise equal")
        assert bench_generation.check_greedy_generate(model, (1, 2), 6) == (True, "batch 1: equal; batch 2: equal")
        step, generate = model.step, model.generate
        model.step = lambda x: step(x) * (1 + 2 ** -20)  # one rounding away
        ok, detail = bench_generation.check_step_equals_forward(model, (1,), 10)
        assert not ok and "batch 1: differs" in detail

        def off_by_one(n, **kwargs):
            samples = generate(n, **kwargs)
            samples[0, -1] = (samples[0, -1] + 1) % model.out_channels
            return samples
        model.generate = off_by_one
        assert bench_generation.check_greedy_generate(model, (1,), 6) == (False, "batch 1: 1 of 6 differ")


# ------------------------------------------------------------- whole models --

def test_models_section_has_every_row_and_column_and_its_checks_pass():
    section = bench_models.run_section(TINY_MODELS, title="tiny")
    assert section["failures"] == 0 and section["kind"] == "models"
    rows = section["rows"]
    assert [r["config"] for r in rows] == [c.name for c in bench_models.CONFIGS] == [
        "inference, fp32, NCHW", "inference, fp32, channels_last", "inference, bf16 autocast, channels_last",
        "training step, fp32, NCHW", "training step, fp32, channels_last"]
    for r in rows:
        assert r["ok"] and r["error"] is None and r["reps"] == 1
        assert (r["converted_convs"], r["convs"]) == (11, 61)
        assert r["ratio"] == pytest.approx(r["torch_ms"] / r["converted_ms"])
        assert r["own_ratio"] == pytest.approx(r["torch_ms"] / r["own_ms"])
        assert r["verdict"] == bench_models.evaluate_target(r["ratio"]) and r["target"] == 1.3
        assert (r["batch"], r["size"]) == ((2, 33) if r["training"] else (1, 33))
        quantities = {(c["model"], c["quantity"]) for c in r["checks"]}
        logits = "logits (bf16)" if "bf16" in r["config"] else "logits"
        expected = {logits} | ({"loss", *bench_models.GRAD_CHECKS.values()} if r["training"] else set())
        assert quantities == {(m, q) for m in ("converted", "own") for q in expected}
        assert all(0 <= c["error"] <= c["bound"] == bench_models.TOLERANCE[c["quantity"]] for c in r["checks"])
    lines = section["table"].splitlines()
    assert lines[0] == "### tiny"
    assert _cells(lines[2]) == MODEL_COLUMNS
    body = [_cells(line) for line in lines[4:4 + len(rows)]]
    assert [cells[0] for cells in body] == [r["config"] for r in rows]
    assert all(len(cells) == len(MODEL_COLUMNS) and cells[6] in ("met", "NOT met") and cells[9] == "11 of 61"
               and cells[10].startswith("ok (") for cells in body)
    checks = [line for line in lines if line.startswith("- check, ")]
    assert len(checks) == 5 and all(": ok (" in line for line in checks)
    # The model is output stride 8, and the summary says so; the converted convs' share of the work.
    assert any("backbone output 5x5 for a 33x33 input: output stride 8" in line for line in lines)
    assert any(line.startswith("- converted: 11 of its 61 Conv2d") for line in lines)
    assert any(line.startswith("- own: atrous_cuda.models.DeepLabV3(21, 'resnet50', output_stride=8)")
               for line in lines)
    json.dumps({k: v for k, v in section.items() if k != "table"})  # the bench writes it as json


def _flip_a_dilated_kernel(model):
    """convert(), then layer3.1.conv2's kernel flipped (correlation vs convolution, a classic bug)."""
    converted = bench_models.convert_model(copy.deepcopy(model))
    with torch.no_grad():
        conv = converted.backbone.layer3[1].conv2
        conv.weight.copy_(conv.weight.flip(-1, -2))
    return converted


def test_models_check_fails_on_a_broken_conversion(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_models, "convert", _flip_a_dilated_kernel)
    settings = bench_models.Settings(inference_size=33, train_size=33, reps=1, warmup=0, own_model=False,
                                     configs=(bench_models.CONFIGS[0], bench_models.CONFIGS[3]))
    section = bench_models.run_section(settings)
    assert section["failures"] == 2
    for r in section["rows"]:
        assert not r["ok"]
        failed = {c["quantity"] for c in r["checks"] if not c["ok"]}
        assert "logits" in failed and (not r["training"] or "grad layer3.1.conv2" in failed)
    assert section["table"].count("| FAIL (converted ") == 2
    # bench.main counts it: exit status 1.
    monkeypatch.setattr(bench, "cpu_suite", lambda: [bench.Layer("aspp", 1, 8, 9, 9, 8, (3, 3), (3,))])
    report = tmp_path / "report.md"
    assert bench.main(["--device", "cpu", "--reps", "1", "--memory-format", "nchw", "--results-dir", "",
                       "--report", str(report)]) == 1
    assert "| inference, fp32, NCHW | 1, 33x33 |" in report.read_text() and "| FAIL (converted logits" in \
        report.read_text()


def test_models_row_that_raises_is_a_failure(monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no kernel for this\nsecond line")
    monkeypatch.setattr(bench_models, "convert", lambda model: Broken())
    section = bench_models.run_section(TINY_MAIN_MODELS)
    (row,) = section["rows"]
    assert section["failures"] == 1 and not row["ok"] and row["error"] == "RuntimeError: no kernel for this"
    assert row["verdict"] == "NOT met" and "FAIL (RuntimeError: no kernel for this)" in section["table"]


def test_models_settings_and_targets():
    full, quick = bench_models.default_settings(False), bench_models.default_settings(True)
    assert (full.inference_batch, full.inference_size, full.train_batch, full.train_size) == (1, 520, 2, 321)
    assert full.reps == 5 and full.warmup == 1 and full.own_model and full.configs == bench_models.CONFIGS
    assert quick.reps == 3 and quick.note and (quick.inference_size, quick.train_size) == (520, 321)
    assert [bench_models.evaluate_target(r) for r in (1.3, 1.29, 2.0, float("nan"), None)] == [
        "met", "NOT met", "met", "NOT met", "NOT met"]
    assert [bench_models.output_stride(520, out) for out in (65, 33, 17, 64)] == [8, 16, 32, None]
    assert bench_models.rel_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == 1.0
