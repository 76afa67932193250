"""torch.export and AOTInductor (CPU); torch.compile with inductor is in
test_compile_inductor.py (each file stays under ~30 s of compiling).

The ops are torch.library custom ops with fake kernels, so export and
inductor keep them as single nodes (atrous::conv_forward / conv_backward).
AOTInductor compiles the graph around them to C++ and calls them through
its proxy executor, which finds the op in the dispatcher at run time: the
package needs atrous_cuda's shared library loaded (`import atrous_cuda`, or
torch.ops.load_library on the .so from C++/Python), nothing else.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import reference_conv, seeded_randn
from torch import nn

import atrous_cuda
from atrous_cuda import AtrousConv1d, AtrousConv2d


class AsppLike(nn.Module):
    """Small but covers the argument forms: dilations, 'same' with stride,
    asymmetric and causal padding, groups, a 1-D conv, no-bias."""

    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList([AtrousConv2d(3, 4, 3, padding=d, dilation=d) for d in (1, 2, 4)])
        self.down = AtrousConv2d(12, 8, 3, stride=2, padding="same", dilation=2, groups=4, bias=False)
        self.asym = AtrousConv2d(8, 4, (3, 2), padding=(0, 1, 2, 2), dilation=(2, 1))
        self.temporal = AtrousConv1d(4, 2, 2, padding="causal", dilation=2)

    def forward(self, x):
        y = torch.relu(torch.cat([b(x) for b in self.branches], 1))
        y = torch.relu(self.asym(torch.relu(self.down(y))))
        n, c, h, w = y.shape
        return self.temporal(y.reshape(n, c, h * w))


def _torch_reference(model, x):
    """The same network with torch's own convolutions."""
    def conv(m, t):
        return reference_conv(t, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)

    y = torch.relu(torch.cat([conv(b, x) for b in model.branches], 1))
    y = torch.relu(conv(model.asym, torch.relu(conv(model.down, y))))
    n, c, h, w = y.shape
    return conv(model.temporal, y.reshape(n, c, h * w))


def small_model(dtype=torch.float64):
    torch.manual_seed(0)
    return AsppLike().to(dtype).eval()


def _atrous_nodes(graph_module):
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and "atrous" in str(n.target)]


# ------------------------------------------------------------ torch.export --


def test_export_keeps_the_op_and_matches_eager():
    model = small_model()
    x = seeded_randn((2, 3, 9, 10))
    exported = torch.export.export(model, (x,))
    assert len(_atrous_nodes(exported.graph_module)) == 6
    out = exported.module()(x)
    assert torch.equal(out, model(x))
    torch.testing.assert_close(out, _torch_reference(model, x))
    # Another input of the same shape: the program is not specialized to values.
    x2 = seeded_randn((2, 3, 9, 10), seed=9)
    assert torch.equal(exported.module()(x2), model(x2))


def test_export_with_dynamic_batch():
    model = small_model()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (seeded_randn((2, 3, 9, 10)),), dynamic_shapes=({0: batch},))
    for n in (1, 5):
        x = seeded_randn((n, 3, 9, 10), seed=n)
        assert torch.equal(exported.module()(x), model(x))


def test_exported_program_saves_and_loads():
    model = small_model()
    x = seeded_randn((2, 3, 9, 10))
    exported = torch.export.export(model, (x,))
    path = os.path.join(os.environ.get("PYTEST_TMPDIR", "/tmp"), f"atrous_export_{os.getpid()}.pt2")
    try:
        torch.export.save(exported, path)
        assert torch.equal(torch.export.load(path).module()(x), model(x))
    finally:
        if os.path.exists(path):
            os.remove(path)


# ------------------------------------------------------------ AOTInductor --


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="AOTInductor needs a C++ compiler")
def test_aot_inductor_cpu_package_runs_the_op(tmp_path):
    """Compile once (~35 s on the 2-core build machine, most of it g++), then
    run the package twice: here, and in a fresh interpreter that never imports
    the atrous_cuda Python package but only loads its shared library with
    torch.ops.load_library, as a C++ deployment would."""
    model = small_model(torch.float32)
    x = seeded_randn((2, 3, 9, 10), torch.float32)
    exported = torch.export.export(model, (x,))
    package = torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp_path / "model.pt2"))
    loaded = torch._inductor.aoti_load_package(package)
    expected = model(x)
    # Inductor may fuse or reorder the elementwise parts; the convs are our op.
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)

    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        torch.ops.load_library({atrous_cuda._C.__file__!r})
        assert "atrous_cuda" not in sys.modules
        data = torch.load({str(tmp_path / "io.pt")!r})
        loaded = torch._inductor.aoti_load_package({package!r})
        torch.testing.assert_close(loaded(data["x"]), data["expected"], rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
