"""torch.compile with the default backend (inductor), for inference and training.

The ops stay single nodes in the FX graphs (fake kernels give the shapes);
inductor compiles the code around them and calls them as extern kernels.
"""
import torch
from torch._inductor.utils import run_and_get_code
from conftest import seeded_randn
from torch import nn

from atrous_cuda import AtrousConv2d


def small_model(dtype=torch.float64):
    """Two convs (dilated; 'same' with stride and groups) around a ReLU: small,
    because each inductor compile runs g++ (tens of seconds on 2 cores)."""
    torch.manual_seed(0)
    return nn.Sequential(AtrousConv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(),
                         AtrousConv2d(4, 2, 3, stride=2, padding="same", dilation=2, groups=2)).to(dtype).eval()

# ---------------------------------------------------- torch.compile, inductor --


def test_inductor_compile_inference_matches_eager():
    torch._dynamo.reset()
    model = small_model()
    compiled = torch.compile(model, fullgraph=True)  # default backend: inductor
    x = seeded_randn((2, 3, 9, 10))
    with torch.no_grad():
        out, (code, *_) = run_and_get_code(compiled, x)
        # The generated wrapper calls our op as an extern kernel, twice.
        assert code.count("torch.ops.atrous.conv_forward.default(") == 2, code
        torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)


def test_inductor_compile_training_matches_eager_grads():
    """A few SGD steps through the compiled model (forward and backward graphs
    compiled by inductor, our ops called from them) end at the parameters of
    eager training. Float64 so the only difference is the order of inductor's
    fused elementwise arithmetic."""
    torch._dynamo.reset()
    eager, compiled_model = small_model().train(), small_model().train()
    compiled = torch.compile(compiled_model, fullgraph=True)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (eager, compiled_model)]
    for step in range(3):
        x = seeded_randn((2, 3, 9, 10), seed=step)
        for m, opt in zip((eager, compiled), opts):
            opt.zero_grad()
            m(x).square().mean().backward()
        for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"step {step}, {name}: {m}")
        for opt in opts:
            opt.step()
    for p, q in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
