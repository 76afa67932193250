"""The benchmark suite with its correctness check: `python -m atrous_cuda bench`.

Every row is first checked against torch (forward, grad_input, grad_weight,
in the row's dtype, against F.conv2d / aten.convolution_backward), then timed
against torch in the same run. Ratios are torch time / our time (> 1 means we
are faster); GFLOP/s count only useful multiply-adds, the ones whose input
pixel is inside the image, so skipping padding earns no credit by itself.

The GPU suite is the one of the CUDA issue; the CPU suite is the one of the
CPU issue, in NCHW and channels_last. On the CPU (float32), a WaveNet
generation section follows (issue 16; atrous_cuda/bench_generation.py):
samples/s of the per-layer torch path, step() and generate(), against
real time, after checking step() and greedy generate() against forward.
Then the whole-model section (issue 14 §4; atrous_cuda/bench_models.py):
torchvision's DeepLabV3-ResNet50 at output stride 8 against the same model
through convert_model (and atrous_cuda.models.DeepLabV3), inference in fp32
NCHW, fp32 channels_last and bf16 autocast, and a training step in both
layouts, after checking the logits, loss and gradients against torch's
model; 5-10 minutes on the 2-thread build machine (--no-models skips it).
Results go to the terminal (with a progress bar), and to
`bench/results/bench-<device>.{md,json,png}`: the markdown tables, the same
rows as JSON, and a bar chart of the ratios.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import _C, _ops, bench_generation, bench_models


@dataclass(frozen=True)
class Layer:
    name: str
    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple
    dilations: tuple
    groups: int = 1
    stride: int = 1


GPU_SUITE = [
    Layer("1 DeepLabv3 ASPP OS16", 16, 2048, 33, 33, 256, (3, 3), (6, 12, 18)),
    Layer("2 torchvision ASPP OS8", 8, 2048, 65, 65, 256, (3, 3), (12, 24, 36)),
    Layer("3 ResNet-101 layer4 OS8", 8, 512, 65, 65, 512, (3, 3), (4,)),
    Layer("4 ResNet-101 layer3 OS8", 8, 256, 65, 65, 256, (3, 3), (2,)),
    Layer("5 multi-grid block4 OS16", 16, 512, 33, 33, 512, (3, 3), (2, 4, 8)),
    Layer("6 DeepLabv3+ sep. ASPP (dw)", 16, 2048, 33, 33, 2048, (3, 3), (12,), groups=2048),
    Layer("7 WaveNet 1-D", 8, 512, 1, 8192, 512, (1, 3), (1, 32, 512)),
    Layer("8 WaveGlow WN 1-D", 12, 256, 1, 2000, 512, (1, 3), (1, 2, 4, 8, 16, 32, 64, 128)),
]
# Rows 1 and 2 again at N=1, for latency.
GPU_SUITE += [replace(GPU_SUITE[0], name="1 ASPP OS16, N=1", batch=1),
              replace(GPU_SUITE[1], name="2 ASPP OS8, N=1", batch=1)]


# The CPU issue's suite (fp32; run in NCHW and in channels_last).
CPU_SUITE = [
    Layer("1 ASPP OS16", 1, 2048, 33, 33, 256, (3, 3), (6, 12, 18)),
    Layer("2 ASPP OS8", 1, 2048, 65, 65, 256, (3, 3), (12, 24, 36)),
    Layer("3 ResNet layer4 OS8", 1, 512, 65, 65, 512, (3, 3), (4,)),
    Layer("4 ResNet layer3 OS8", 2, 256, 65, 65, 256, (3, 3), (2,)),
    Layer("5 sep. ASPP (dw)", 2, 2048, 33, 33, 2048, (3, 3), (12,), groups=2048),
    Layer("6 WaveNet 1-D k=2", 2, 256, 1, 16000, 512, (1, 2), (1, 32, 512)),
    Layer("6 WaveNet 1-D k=3", 2, 256, 1, 16000, 512, (1, 3), (1, 32, 512)),
    Layer("7 small C, large map", 1, 64, 256, 512, 64, (3, 3), (16,)),
]


def cpu_suite():
    return list(CPU_SUITE)


def generation_settings(quick):
    """The WaveNet generation section's model and step counts (issue 16's model; tests
    substitute a tiny one, as they do the layer suite)."""
    return bench_generation.default_settings(quick)


def models_settings(quick):
    """The whole-model section's sizes and repetitions (issue 14 §4; tests substitute tiny inputs)."""
    return bench_models.default_settings(quick)


def padding_for(layer, dilation):
    """Symmetric padding per axis (height, width), as torch takes it.

    Odd kernels get 'same' padding, d*(k-1)/2 a side. Even kernels (WaveNet's
    k=2) get torch's causal idiom: d*(k-1) on both sides, the caller trims the
    right end; both sides of the comparison compute the same rows.
    """
    def axis(k, d):
        return d * (k - 1) // 2 if k % 2 else d * (k - 1)
    return [axis(layer.kernel[0], dilation) if layer.height > 1 else 0, axis(layer.kernel[1], dilation)]


def useful_macs(layer, dilation):
    """Multiply-adds whose input pixel lies inside the image."""
    pad = padding_for(layer, dilation)
    dil = [dilation if layer.height > 1 else 1, dilation]
    sizes = [layer.height, layer.width]
    outs = [_C.conv_out_size(sizes[a], pad[a], pad[a], layer.kernel[a], layer.stride, dil[a]) for a in range(2)]
    per_axis = []
    for a in range(2):
        total = 0
        for t in range(layer.kernel[a]):
            begin, end = _C.valid_out_range(sizes[a], outs[a], t, layer.stride, pad[a], dil[a])
            total += end - begin
        per_axis.append(total)
    return layer.batch * per_axis[0] * per_axis[1] * (layer.in_channels // layer.groups) * layer.out_channels


def _time(fn, device, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_alternating(ours, theirs, warmup, reps):
    """Medians of our and torch's CPU times, the two runs taken in turn, so that a
    busy spell of the host (the build machine is a shared VM) slows both sides
    of a ratio rather than one."""
    for _ in range(warmup):
        ours()
        theirs()
    times = ([], [])
    for _ in range(reps):
        for fn, out in zip((ours, theirs), times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def _rel_err(ours, ref):
    ref = ref.float()
    scale = ref.abs().max().item() or 1.0
    return (ours.float() - ref).abs().max().item() / scale


# Relative error (to the largest reference magnitude) allowed per dtype. Both
# sides accumulate in at least fp32, so the error is a few units of the
# output's rounding: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16), times a factor
# for the different summation orders over K = Cin*k*k terms.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def run_layer(layer, dilation, device, dtype, warmup, reps, memory_format=torch.contiguous_format,
              time_torch=True, reference_dtype=None):
    """Checks and times one conv in every direction. `reference_dtype` (e.g.
    float32 for 16-bit rows) computes torch's reference from the same rounded
    inputs in that dtype; `time_torch=False` leaves torch's time out (NaN)."""
    gen = torch.Generator().manual_seed(0)
    shape = (layer.batch, layer.in_channels, layer.height, layer.width)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(layer.out_channels, layer.in_channels // layer.groups, *layer.kernel, generator=gen)
         / (layer.in_channels // layer.groups * layer.kernel[0] * layer.kernel[1]) ** 0.5).to(device=device, dtype=dtype)
    b = torch.randn(layer.out_channels, generator=gen).to(device=device, dtype=dtype)
    if memory_format == torch.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    pad = padding_for(layer, dilation)
    dil = [dilation if layer.height > 1 else 1, dilation]
    stride = [layer.stride, layer.stride]
    pads4 = [pad[0], pad[0], pad[1], pad[1]]

    ours_fwd = lambda: _ops.conv_forward(x, w, b, stride, pads4, dil, layer.groups)  # noqa: E731
    torch_fwd = lambda: F.conv2d(x, w, b, stride, pad, dil, layer.groups)  # noqa: E731
    # The reference sees the same (rounded) inputs, in reference_dtype when one is given.
    ref_inputs = (x, w, b) if reference_dtype is None else tuple(t.to(reference_dtype) for t in (x, w, b))
    y_ref = F.conv2d(*ref_inputs, stride, pad, dil, layer.groups)
    gy = torch.randn(y_ref.shape, generator=gen).to(device=device, dtype=dtype)
    if memory_format == torch.channels_last:
        gy = gy.contiguous(memory_format=torch.channels_last)

    def ours_bwd(mask):
        return lambda: _ops.conv_backward(gy, x, w, stride, pads4, dil, layer.groups, mask)

    def torch_bwd(mask):
        return lambda: torch.ops.aten.convolution_backward(
            gy, x, w, [layer.out_channels], stride, pad, dil, False, [0, 0], layer.groups, mask)

    if reference_dtype is None:
        ref_bwd = torch_bwd([True, True, False])()
    else:
        ref_bwd = torch.ops.aten.convolution_backward(
            gy.to(reference_dtype), ref_inputs[0], ref_inputs[1], [layer.out_channels], stride, pad, dil, False,
            [0, 0], layer.groups, [True, True, False])
    ours_gi = ours_bwd([True, False, False])()[0]
    ours_gw = ours_bwd([False, True, False])()[1]
    errors = {
        "forward": _rel_err(ours_fwd(), y_ref),
        "grad_input": _rel_err(ours_gi, ref_bwd[0]),
        "grad_weight": _rel_err(ours_gw, ref_bwd[1]),
    }
    macs = useful_macs(layer, dilation)
    results = []
    for direction, ours, theirs in (
        ("forward", ours_fwd, torch_fwd),
        ("grad_input", ours_bwd([True, False, False]), torch_bwd([True, False, False])),
        ("grad_weight", ours_bwd([False, True, False]), torch_bwd([False, True, False])),
    ):
        if device == "cpu" and time_torch:
            t_ours, t_torch = _time_alternating(ours, theirs, warmup, reps)
        else:
            t_ours = _time(ours, torch.device(device), warmup, reps)
            t_torch = _time(theirs, torch.device(device), warmup, reps) if time_torch else float("nan")
        t_det = float("nan")
        if device == "cuda":
            # torch's deterministic mode: cuDNN restricted to deterministic algorithms.
            torch.backends.cudnn.deterministic = True
            try:
                t_det = _time(theirs, torch.device(device), warmup, reps)
            finally:
                torch.backends.cudnn.deterministic = False
        results.append(dict(
            layer=layer.name, dilation=dilation, direction=direction,
            memory_format="channels_last" if memory_format == torch.channels_last else "nchw",
            useful_macs=macs, height=layer.height, width=layer.width, ours_ms=t_ours * 1e3,
            torch_ms=t_torch * 1e3, ratio=t_torch / t_ours, gflops=2 * macs / t_ours / 1e9,
            det_ratio=t_det / t_ours, error=errors[direction], ok=errors[direction] <= TOLERANCE[dtype],
        ))
    return results


def _geomean(values):
    values = [v for v in values if v > 0 and math.isfinite(v)]
    if not values:
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(rows, gpu=False, peak_gflops=None):
    """The issue targets' measures over one table: geometric means of
    torch time / our time, and the share of the machine's peak."""
    summary = {}
    for direction in ("forward", "grad_input", "grad_weight"):
        summary[direction] = _geomean([r["ratio"] for r in rows if r["direction"] == direction])
    per_conv = {}
    for r in rows:
        ours, theirs = per_conv.get((r["layer"], r["dilation"]), (0.0, 0.0))
        per_conv[(r["layer"], r["dilation"])] = (ours + r["ours_ms"], theirs + r["torch_ms"])
    summary["forward+backward"] = _geomean([t / o for o, t in per_conv.values()])
    summary["rate>=12"] = _geomean([r["ratio"] for r in rows if r["dilation"] >= 12 and r["height"] > 1])
    # The CPU issue's ASPP target: rates >= 12 on maps <= 65x65, every direction.
    summary["ASPP rate>=12"] = _geomean([
        r["ratio"] for r in rows
        if "ASPP" in r["layer"] and "dw" not in r["layer"] and r["dilation"] >= 12
        and r["height"] <= 65 and r["width"] <= 65])
    if gpu:
        summary["torch deterministic/ours"] = _geomean([r["det_ratio"] for r in rows])
    if peak_gflops:
        # "The largest shapes": the rows with at least half the useful work of the largest row.
        largest = max(r["useful_macs"] for r in rows)
        big = [r["gflops"] / peak_gflops for r in rows if r["useful_macs"] >= largest / 2]
        summary["share of peak, largest shapes (median)"] = statistics.median(big) if big else float("nan")
        summary["share of peak, largest shapes (min)"] = min(big) if big else float("nan")
    return summary


PEAK_PROBES = 7
# The CPU issue's targets (torch time / ours, or share of peak), shown beside each measure.
CPU_TARGETS = {"forward": 1.0, "forward+backward": 1.0, "ASPP rate>=12": 1.5, "grad_weight": 1.5,
               "share of peak, largest shapes (median)": 0.8}
# The CPU issue's 16-bit target: bfloat16 and float16 at least as fast as our float32.
HALF_DTYPES = ("bfloat16", "float16")
HALF_TARGET = 1.0
# The CUDA issue's targets.
GPU_TARGETS = {"forward": 1.0, "forward+backward": 1.0, "rate>=12": 1.5, "torch deterministic/ours": 3.0}


def half_precision_section(rows, fp32_rows, dtype_name):
    """Our 16-bit rows against our float32 rows of the same convs (same run):
    each row gets `vs_fp32` = our float32 time / our 16-bit time."""
    fp32 = {(r["layer"], r["dilation"], r["direction"]): r["ours_ms"] for r in fp32_rows}
    for r in rows:
        r["fp32_ours_ms"] = fp32.get((r["layer"], r["dilation"], r["direction"]), float("nan"))
        r["vs_fp32"] = r["fp32_ours_ms"] / r["ours_ms"]
    summary = {f"our float32 time / our {dtype_name} time, {direction}":
               _geomean([r["vs_fp32"] for r in rows if r["direction"] == direction])
               for direction in ("forward", "grad_input", "grad_weight")}
    summary["torch/ours, forward"] = _geomean([r["ratio"] for r in rows if r["direction"] == "forward"])
    return summary


def _ms_or_untimed(value, fmt=".3f"):
    return "not timed" if math.isnan(value) else format(value, fmt)


def format_half_table(title, rows, summary):
    lines = [
        f"### {title}",
        "",
        "| layer | dilation | direction | ours ms | ours float32 ms | float32/ours | torch ms | torch/ours "
        "| rel. error | check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['dilation']} | {r['direction']} | {r['ours_ms']:.3f} | {r['fp32_ours_ms']:.3f} | "
            f"{r['vs_fp32']:.2f} | {_ms_or_untimed(r['torch_ms'])} | {_ms_or_untimed(r['ratio'], '.2f')} | {r['error']:.1e} | "
            f"{'ok' if r['ok'] else 'FAIL'} |")
    lines.append("")
    for name, value in summary.items():
        if isinstance(value, float) and math.isnan(value):
            continue
        verdict = ""
        if name.startswith("our float32"):
            verdict = f" (target >= {HALF_TARGET:.1f}: {'met' if value >= HALF_TARGET else 'not met'})"
        lines.append(f"- geometric mean {name}: {value:.2f}{verdict}")
    return "\n".join(lines)


def format_table(title, rows, summary, gpu=False):
    lines = [
        f"### {title}",
        "",
        "| layer | dilation | direction | ours ms | torch ms | torch/ours | useful "
        + ("TFLOP/s | torch det./ours" if gpu else "GFLOP/s") + " | rel. error | check |",
        "|---|---|---|---|---|---|---|" + ("---|" if gpu else "") + "---|---|",
    ]
    for r in rows:
        rate = f"{r['gflops'] / 1e3:.1f} | {r['det_ratio']:.2f}" if gpu else f"{r['gflops']:.1f}"
        lines.append(
            f"| {r['layer']} | {r['dilation']} | {r['direction']} | {r['ours_ms']:.3f} | {r['torch_ms']:.3f} | "
            f"{r['ratio']:.2f} | {rate} | {r['error']:.1e} | {'ok' if r['ok'] else 'FAIL'} |"
        )
    lines.append("")
    targets = GPU_TARGETS if gpu else CPU_TARGETS
    for name, value in summary.items():
        if isinstance(value, float) and math.isnan(value):
            continue
        shown = f"{value:.0%}" if name.startswith("share") else f"{value:.2f}"
        if name in targets and value < targets[name] and float(shown.rstrip("%")) >= targets[name] * (
                100 if name.startswith("share") else 1):
            shown = f"{value:.1%}" if name.startswith("share") else f"{value:.3f}"  # just short: show it
        kind = "" if name.startswith("share") else "geometric mean torch/ours, "
        target = targets.get(name)
        verdict = ""
        if target is not None:
            goal = f"{target:.0%}" if name.startswith("share") else f"{target:.1f}"
            verdict = f" (target >= {goal}: {'met' if value >= target else 'not met'})"
        lines.append(f"- {kind}{name}: {shown}{verdict}")
    return "\n".join(lines)


def environment(peak_gflops=None):
    info = _C.build_info()
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "with_cuda": info["with_cuda"], "cuda_archs": info["cuda_archs"], "cpu_isa": info["cpu_isa"],
        "cpu_isas_available": info["cpu_isas_available"], "cpu_threads": info["cpu_threads"],
        "cpu": platform.processor() or platform.machine(), "cpu_peak_gflops": peak_gflops,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def environment_lines(env):
    lines = [
        f"- date: {env['date']}",
        f"- python {env['python']}, torch {env['torch']}, CUDA {env['cuda']}",
        f"- atrous_cuda built with CUDA: {env['with_cuda']} (archs: {env['cuda_archs'] or 'none'}); "
        f"CPU GEMM: {env['cpu_isa']} (available: {env['cpu_isas_available']}); threads: {env['cpu_threads']}",
        f"- CPU: {env['cpu']}",
    ]
    if env.get("cpu_peak_gflops"):
        lines.append(f"- measured CPU fp32 FMA peak ({env['cpu_isa']}, {env['cpu_threads']} threads): "
                     f"{env['cpu_peak_gflops']:.0f} GFLOP/s")
    if env.get("gpu"):
        lines.append(f"- GPU: {env['gpu']}, cudnn {env['cudnn']}")
    return lines


def plot_ratios(sections, path):
    """A bar chart of torch time / our time, one panel per layer table (the generation
    and whole-model sections are not drawn). Returns False when matplotlib is not
    installed (the chart is optional) or there is nothing to draw."""
    sections = [s for s in sections if s.get("kind") not in ("generation", "models")]
    if not sections:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    directions = ("forward", "grad_input", "grad_weight")
    fig, axes = plt.subplots(len(sections), 1, figsize=(14, 5.2 * len(sections)), squeeze=False)
    for ax, section in zip(axes[:, 0], sections):
        # 16-bit sections show our float32 time / our 16-bit time.
        key = "vs_fp32" if section.get("kind") == "vs_fp32" else "ratio"
        convs = list(dict.fromkeys((r["layer"], r["dilation"]) for r in section["rows"]))
        width = 0.8 / len(directions)
        for i, direction in enumerate(directions):
            by_conv = {(r["layer"], r["dilation"]): r[key] for r in section["rows"] if r["direction"] == direction}
            ax.bar([c + (i - 1) * width for c in range(len(convs))], [by_conv.get(c, 0.0) for c in convs],
                   width, label=direction)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(convs)))
        ax.set_xticklabels([f"{name}, d={d}" for name, d in convs], fontsize=8, rotation=30, ha="right")
        ax.set_ylabel(("our float32 time / ours" if key == "vs_fp32" else "torch time / ours") + " (log scale)")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_title(section["title"], fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


class _Progress:
    """tqdm's bar when tqdm is installed, plain lines otherwise."""

    def __init__(self, total):
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="conv", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self._bar = None

    def write(self, line):
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def update(self, description):
        if self._bar is not None:
            self._bar.set_description(description[:40])
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m atrous_cuda bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="'all' (default) runs every device present")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16", "float64"],
                        help="default: float32 on CPU; float32 and bfloat16 on CUDA")
    parser.add_argument("--memory-format", action="append", choices=["nchw", "channels_last"],
                        help="default: both on CPU, nchw on CUDA")
    parser.add_argument("--quick", action="store_true",
                        help="the first dilation of each layer only, fewer reps (and fewer generation steps; 3 "
                             "whole-model repetitions without the own DeepLabV3)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-models", action="store_true",
                        help="skip the whole-model section (DeepLabV3-ResNet50, 5-10 minutes on 2 threads)")
    parser.add_argument("--results-dir", default=os.path.join("bench", "results"),
                        help="where bench-<device>.{md,json,png} go (default: bench/results); '' for none")
    parser.add_argument("--report", help="also write all the tables as markdown to this file")
    args = parser.parse_args(argv)

    devices = []
    if args.device in ("all", "cpu"):
        devices.append("cpu")
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append("cuda")
        elif args.device == "cuda":
            parser.error("--device cuda: no CUDA device is visible")
    if "cuda" in devices and not _C.build_info()["with_cuda"]:
        print("note: this build has no CUDA kernels; skipping the CUDA device", file=sys.stderr)
        devices.remove("cuda")

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    # The peak is an upper bound, so the best of several probes: one probe (about 0.1 s) that a
    # busy host interrupts reads low (189 instead of 234 GFLOP/s once) and inflates every share.
    peak = max(_C.cpu_peak_gflops() for _ in range(PEAK_PROBES)) if "cpu" in devices else None
    env = environment(peak)
    report = ["## atrous_cuda benchmark", "", *environment_lines(env), ""]
    print("\n".join(report), flush=True)
    failures = 0
    for device in devices:
        gpu = device == "cuda"
        suite = GPU_SUITE if gpu else cpu_suite()
        dtypes = args.dtype or (["float32", "bfloat16"] if gpu else ["float32"])
        formats = args.memory_format or (["nchw"] if gpu else ["nchw", "channels_last"])
        reps = args.reps or (20 if gpu else 7)
        warmup = 5 if gpu else 1
        if args.quick:
            reps = max(3, reps // 4)
        name = torch.cuda.get_device_name() if gpu else f"CPU ({env['cpu_threads']} threads)"
        units = sum(len(layer.dilations[:1] if args.quick else layer.dilations) for layer in suite)
        # The CPU issue's 16-bit target: by default the first dilation of each
        # layer in bfloat16 and float16, channels_last, against our float32 rows.
        half = not gpu and not args.dtype and "channels_last" in formats
        progress = _Progress(units * len(dtypes) * len(formats) + (len(suite) * len(HALF_DTYPES) if half else 0))
        sections = []
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            for fmt in formats:
                memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
                rows = []
                for layer in suite:
                    for d in layer.dilations[:1] if args.quick else layer.dilations:
                        rows += run_layer(layer, d, device, dtype, warmup, reps, memory_format)
                        for r in rows[-3:]:
                            progress.write(
                                f"  {r['layer']:<24} d={r['dilation']:<4} {fmt:<13} {r['direction']:<11} "
                                f"ours {r['ours_ms']:9.3f} ms  torch {r['torch_ms']:9.3f} ms  x{r['ratio']:.2f}  "
                                f"{r['gflops']:8.1f} GFLOP/s  err {r['error']:.1e} {'ok' if r['ok'] else 'FAIL'}")
                        progress.update(f"{device} {dtype_name} {fmt}")
                failures += sum(not r["ok"] for r in rows)
                title = f"{name}, {dtype_name}, {fmt}"
                summary = summarize(rows, gpu=gpu, peak_gflops=None if gpu else peak)
                sections.append(dict(device=device, dtype=dtype_name, memory_format=fmt, title=title,
                                     rows=rows, summary=summary))
        if half:
            fp32_rows = next(s["rows"] for s in sections if s["memory_format"] == "channels_last")
            for dtype_name in HALF_DTYPES:
                rows = []
                for layer in suite:
                    # torch's CPU float16 conv has no fast path (5-10x slower than its float32,
                    # minutes per row here), so it is not timed; the check uses a float32 reference.
                    rows += run_layer(layer, layer.dilations[0], device, getattr(torch, dtype_name), warmup, reps,
                                      torch.channels_last, time_torch=dtype_name != "float16",
                                      reference_dtype=torch.float32)
                    progress.update(f"{device} {dtype_name} channels_last")
                failures += sum(not r["ok"] for r in rows)
                sections.append(dict(device=device, dtype=dtype_name, memory_format="channels_last",
                                     kind="vs_fp32", title=f"{name}, {dtype_name}, channels_last, against our float32",
                                     rows=rows, summary=half_precision_section(rows, fp32_rows, dtype_name)))
        progress.close()
        if not gpu and "float32" in dtypes:
            # Issue 16: WaveNet generation (float32), after the layer suite.
            settings = generation_settings(args.quick)
            print(f"WaveNet generation section ({settings.reps} repetitions)...", file=sys.stderr, flush=True)
            generation = bench_generation.run_section(settings, title=f"{name}, WaveNet generation, float32")
            for c in generation["checks"]:
                print(f"  check: {c['name']}: {'ok' if c['ok'] else 'FAIL'} ({c['detail']})", file=sys.stderr)
            failures += generation["failures"]
            sections.append({k: v for k, v in generation.items() if k != "table"})
        if not gpu and "float32" in dtypes and not args.no_models:
            # Issue 14 §4: whole models (DeepLabV3-ResNet50 OS8), after the generation section.
            settings = models_settings(args.quick)
            print(f"Whole-model section ({settings.reps} repetitions)...", file=sys.stderr, flush=True)
            models = bench_models.run_section(settings, title=f"{name}, whole models: DeepLabV3-ResNet50 OS8")
            for r in models["rows"]:
                print(f"  {r['config']:<40} torch {r['torch_ms']:9.1f} ms  converted {r['converted_ms']:9.1f} ms  "
                      f"x{r['ratio']:.2f}  {bench_models.check_cell(r)}", file=sys.stderr)
            failures += models["failures"]
            sections.append({k: v for k, v in models.items() if k != "table"})
        tables = [format_half_table(s["title"], s["rows"], s["summary"]) if s.get("kind") == "vs_fp32"
                  else bench_generation.format_table(s) if s.get("kind") == "generation"
                  else bench_models.format_table(s) if s.get("kind") == "models"
                  else format_table(s["title"], s["rows"], s["summary"], gpu=gpu) for s in sections]
        print("\n" + "\n\n".join(tables) + "\n", flush=True)
        report += [t + "\n" for t in tables]
        if args.results_dir:
            os.makedirs(args.results_dir, exist_ok=True)
            stem = os.path.join(args.results_dir, f"bench-{device}")
            device_report = ["## atrous_cuda benchmark", "", *environment_lines(env), "", *[t + "\n" for t in tables]]
            with open(stem + ".md", "w") as f:
                f.write("\n".join(device_report))
            with open(stem + ".json", "w") as f:
                json.dump(dict(environment=env, sections=sections), f, indent=1)
            written = [stem + ".md", stem + ".json"]
            if plot_ratios(sections, stem + ".png"):
                written.append(stem + ".png")
            print("wrote " + ", ".join(written))
    if args.report:
        with open(args.report, "w") as f:
            f.write("\n".join(report) + "\n")
        print(f"wrote {args.report}")
    if failures:
        print(f"{failures} row(s) FAILED the correctness check", file=sys.stderr)
        return 1
    print("every row matched torch")
    return 0
