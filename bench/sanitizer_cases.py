"""Small cases that run every CUDA kernel once, for compute-sanitizer.

    compute-sanitizer --tool memcheck python bench/sanitizer_cases.py
    compute-sanitizer --tool racecheck python bench/sanitizer_cases.py

Covers, per dtype: the implicit-GEMM forward and grad_input (SIMT for
float/double, tensor cores for half/bfloat16, and for float32 once more with
TF32 allowed) with partial tiles, stride, asymmetric padding and groups, and
several cp.async K steps per tap; grad_weight (split and reduce); the
depthwise kernels with a channel multiplier; grad_bias. Each result is
compared with the CPU kernels, so a kernel that reads garbage also fails here.
"""
import sys

import torch

import atrous_cuda  # noqa: F401
from atrous_cuda import _ops

CASES = [
    # N, Cin, H, W, Cout, kH, kW, stride, padding (t, b, l, r), dilation, groups
    (2, 24, 11, 13, 40, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),      # partial tiles
    (1, 16, 9, 10, 16, 3, 2, (2, 1), (3, 1, 0, 4), (3, 2), 2),       # stride, asymmetric, groups
    (1, 13, 7, 6, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),         # channels not a multiple of 8
    (2, 8, 7, 9, 16, 3, 3, (1, 1), (4, 4, 4, 4), (4, 4), 8),         # depthwise, multiplier 2
    (1, 32, 1, 64, 32, 1, 3, (1, 1), (0, 0, 16, 0), (1, 8), 1),      # 1-D causal
    (1, 80, 9, 10, 48, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),       # 3-5 aligned K steps per tap
]

# (label, dtype, relative tolerance, allow TF32): float32 runs the exact SIMT
# kernels, and with TF32 allowed the tensor-core ones (error up to about
# 4 * 2^-11 * sqrt(K) of the largest value, K <= 720 here).
PASSES = [
    ("float32", torch.float32, 1e-4, False),
    ("float32+tf32", torch.float32, 5e-2, True),
    ("float64", torch.float64, 1e-10, False),
    ("float16", torch.float16, 2e-2, False),
    ("bfloat16", torch.bfloat16, 8e-2, False),
]


def main():
    if not torch.cuda.is_available():
        print("sanitizer_cases: no CUDA device", file=sys.stderr)
        return 2
    failures = 0
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    for label, dtype, tol, tf32 in PASSES:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for n, cin, h, w, cout, kh, kw, stride, pad, dil, groups in CASES:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(n, cin, h, w, generator=gen).to(dtype)
            wt = torch.randn(cout, cin // groups, kh, kw, generator=gen).to(dtype)
            b = torch.randn(cout, generator=gen).to(dtype)
            args = (list(stride), list(pad), list(dil), groups)
            y_cpu = _ops.conv_forward(x, wt, b, *args)
            gy = torch.randn(y_cpu.shape, generator=gen).to(dtype)
            g_cpu = _ops.conv_backward(gy, x, wt, *args, [True, True, True])
            y = _ops.conv_forward(x.cuda(), wt.cuda(), b.cuda(), *args)
            g = _ops.conv_backward(gy.cuda(), x.cuda(), wt.cuda(), *args, [True, True, True])
            torch.cuda.synchronize()
            for name, ours, ref in (("forward", y, y_cpu), ("grad_input", g[0], g_cpu[0]),
                                    ("grad_weight", g[1], g_cpu[1]), ("grad_bias", g[2], g_cpu[2])):
                err = (ours.cpu().double() - ref.double()).abs().max().item() / max(ref.double().abs().max().item(), 1e-30)
                ok = err <= tol
                failures += not ok
                print(f"{label:15} {str((n, cin, h, w, cout, kh, kw, stride, pad, dil, groups)):60} {name:12} "
                      f"rel.err {err:.1e} {'ok' if ok else 'FAIL'}")
    torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    print("all sanitizer cases matched the CPU kernels" if not failures else f"{failures} case(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
