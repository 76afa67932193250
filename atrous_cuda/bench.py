"""The benchmark suite with its correctness check: `python -m atrous_cuda bench`.

Every row is first checked against torch (forward, grad_input, grad_weight,
in the row's dtype, against F.conv2d / aten.convolution_backward), then timed
against torch in the same run. Ratios are torch time / our time (> 1 means we
are faster); GFLOP/s count only useful multiply-adds, the ones whose input
pixel is inside the image, so skipping padding earns no credit by itself.

The GPU suite is the one of the CUDA issue. The CPU suite runs the same layers
at batch 1 with a quarter of the channels, so the whole table takes a few
minutes on two cores.
"""
import argparse
import datetime
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import _C, _ops


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


def cpu_suite():
    rows = []
    for layer in GPU_SUITE[:8]:
        groups = layer.groups // 4 if layer.groups > 1 else 1
        rows.append(replace(layer, batch=1, in_channels=layer.in_channels // 4,
                            out_channels=layer.out_channels // 4, groups=groups))
    return rows


def padding_for(layer, dilation):
    # 'same' output size: pad d*(k-1)/2 on each side of each axis (k odd).
    return [dilation * (layer.kernel[0] - 1) // 2 if layer.height > 1 else 0,
            dilation * (layer.kernel[1] - 1) // 2]


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


def _rel_err(ours, ref):
    ref = ref.float()
    scale = ref.abs().max().item() or 1.0
    return (ours.float() - ref).abs().max().item() / scale


# Relative error (to the largest reference magnitude) allowed per dtype. Both
# sides accumulate in at least fp32, so the error is a few units of the
# output's rounding: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16), times a factor
# for the different summation orders over K = Cin*k*k terms.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def run_layer(layer, dilation, device, dtype, warmup, reps, memory_format=torch.contiguous_format):
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
    y_ref = torch_fwd()
    gy = torch.randn(y_ref.shape, generator=gen).to(device=device, dtype=dtype)
    if memory_format == torch.channels_last:
        gy = gy.contiguous(memory_format=torch.channels_last)

    def ours_bwd(mask):
        return lambda: _ops.conv_backward(gy, x, w, stride, pads4, dil, layer.groups, mask)

    def torch_bwd(mask):
        return lambda: torch.ops.aten.convolution_backward(
            gy, x, w, [layer.out_channels], stride, pad, dil, False, [0, 0], layer.groups, mask)

    ref_bwd = torch_bwd([True, True, False])()
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
        t_ours = _time(ours, torch.device(device), warmup, reps)
        t_torch = _time(theirs, torch.device(device), warmup, reps)
        t_det = float("nan")
        if device == "cuda":
            # torch's deterministic mode: cuDNN restricted to deterministic algorithms.
            torch.backends.cudnn.deterministic = True
            try:
                t_det = _time(theirs, torch.device(device), warmup, reps)
            finally:
                torch.backends.cudnn.deterministic = False
        results.append(dict(
            layer=layer.name, dilation=dilation, direction=direction, ours_ms=t_ours * 1e3,
            torch_ms=t_torch * 1e3, ratio=t_torch / t_ours, gflops=2 * macs / t_ours / 1e9,
            det_ratio=t_det / t_ours, error=errors[direction], ok=errors[direction] <= TOLERANCE[dtype],
        ))
    return results


def _geomean(values):
    values = [v for v in values if v > 0]
    if not values:
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_table(device_name, dtype, rows, gpu=False):
    lines = [
        f"### {device_name}, {str(dtype).replace('torch.', '')}",
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
    for direction in ("forward", "grad_input", "grad_weight"):
        sel = [r["ratio"] for r in rows if r["direction"] == direction]
        lines.append(f"- geometric mean torch/ours, {direction}: {_geomean(sel):.2f}")
    fwd_bwd = {}
    for r in rows:
        key = (r["layer"], r["dilation"])
        o, t = fwd_bwd.get(key, (0.0, 0.0))
        fwd_bwd[key] = (o + r["ours_ms"], t + r["torch_ms"])
    lines.append(f"- geometric mean torch/ours, forward+backward: {_geomean([t / o for o, t in fwd_bwd.values()]):.2f}")
    high_rate = [r["ratio"] for r in rows if r["dilation"] >= 12]
    if high_rate:
        lines.append(f"- geometric mean torch/ours on rows with rate >= 12: {_geomean(high_rate):.2f}")
    if gpu:
        lines.append(f"- geometric mean torch deterministic/ours: {_geomean([r['det_ratio'] for r in rows]):.2f}")
    return "\n".join(lines)


def environment_lines():
    info = _C.build_info()
    lines = [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}",
        f"- atrous_cuda built with CUDA: {info['with_cuda']} (archs: {info['cuda_archs'] or 'none'}); "
        f"CPU GEMM: {info['cpu_isa']} (available: {info['cpu_isas_available']}); threads: {info['cpu_threads']}",
        f"- CPU: {platform.processor() or platform.machine()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name()}, cudnn {torch.backends.cudnn.version()}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m atrous_cuda bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="'all' (default) runs every device present")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16", "float64"],
                        help="default: float32 on CPU; float32 and bfloat16 on CUDA")
    parser.add_argument("--quick", action="store_true", help="the first dilation of each layer only, fewer reps")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--report", help="also write the tables as markdown to this file")
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

    sections = ["## atrous_cuda benchmark", "", *environment_lines(), ""]
    print("\n".join(sections), flush=True)
    failures = 0
    for device in devices:
        suite = GPU_SUITE if device == "cuda" else cpu_suite()
        dtypes = args.dtype or (["float32", "bfloat16"] if device == "cuda" else ["float32"])
        reps = args.reps or (20 if device == "cuda" else 5)
        warmup = 5 if device == "cuda" else 1
        if args.quick:
            reps = max(3, reps // 4)
        name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({_C.build_info()['cpu_threads']} threads)"
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            rows = []
            for layer in suite:
                dilations = layer.dilations[:1] if args.quick else layer.dilations
                for d in dilations:
                    rows += run_layer(layer, d, device, dtype, warmup, reps)
                    for r in rows[-3:]:
                        print(f"  {r['layer']:<30} d={r['dilation']:<4} {r['direction']:<11} ours {r['ours_ms']:9.3f} ms"
                              f"  torch {r['torch_ms']:9.3f} ms  x{r['ratio']:.2f}  {r['gflops']:8.1f} GFLOP/s"
                              f"  err {r['error']:.1e} {'ok' if r['ok'] else 'FAIL'}", flush=True)
            failures += sum(not r["ok"] for r in rows)
            table = format_table(name, dtype, rows, gpu=device == "cuda")
            print("\n" + table + "\n", flush=True)
            sections += [table, ""]
    if args.report:
        with open(args.report, "w") as f:
            f.write("\n".join(sections) + "\n")
        print(f"wrote {args.report}")
    if failures:
        print(f"{failures} row(s) FAILED the correctness check", file=sys.stderr)
        return 1
    print("every row matched torch")
    return 0
