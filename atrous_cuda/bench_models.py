"""The benchmark's whole-model section (issue 14 §4): DeepLabV3-ResNet50 at
output stride 8 on the CPU, torchvision's model against the same model after
`convert_model`.

Why: users judge us by the whole model, not by one conv. `convert_model`
swaps only the dilated convs; the model's other convs, its BatchNorms, ReLUs,
pooling, upsampling and the loss stay torch's. Whether a model gets faster
depends on the share of its time those convs take and on what the swap costs
around them (layout changes, weight packing, autograd), which the layer suite
does not see.

What: torchvision.models.segmentation.deeplabv3_resnet50(weights=None,
weights_backbone=None, num_classes=21, aux_loss=False), random weights from a
fixed seed (no downloads). It is output stride 8: torchvision builds its
backbone as resnet50(replace_stride_with_dilation=[False, True, True])
(layer3 at dilation 2, layer4 at 2 then 4), and the section checks it (the
backbone's output is 65x65 for a 520x520 input) and shows it in the summary.
"converted" is a deep copy of it (its own Parameters, so gradients and
optimizer steps stay apart) through atrous_cuda.convert_model: the 11 Conv2d
with dilation > 1 (layer3's five 3x3 at dilation 2, layer4's three 3x3 at 2,
4, 4, ASPP's three 3x3 at 12, 24, 36) of the model's 61 become AtrousConv2d.
The summary counts them and the share of the convs' multiply-adds they carry
(counted with forward hooks on the first checked run: every tap, padding
included). "own" is atrous_cuda.models.DeepLabV3(21, "resnet50",
output_stride=8), which runs all 61 convs on our kernels; it has torchvision's
module names, so it loads the torchvision model's state_dict and computes the
same function with the same weights. It is timed in every row beside the
converted model (its ratio is torch / own; it has no target).

Rows (the models are in eval mode for inference, in train mode for training):

    inference, fp32, NCHW                    batch 1, 520x520, under torch.inference_mode()
    inference, fp32, channels_last           the same with model.to(memory_format=torch.channels_last)
                                             and the input likewise
    inference, bf16 autocast, channels_last  the same under torch.autocast("cpu", dtype=torch.bfloat16)
    training step, fp32, NCHW                batch 2, 321x321: zero_grad(set_to_none=True), forward,
                                             cross-entropy against a fixed random target, backward,
                                             then one torch.optim.SGD step (lr 1e-3)
    training step, fp32, channels_last       the same in channels_last

The training step ends with an SGD step because a real step changes the
weights, so whatever is derived from them (our packed-weight cache, issue 14
§2) is rebuilt every step, as in training; without it, the repetitions would
reuse packings a real loop cannot. Each training row starts from the same
weights (saved before it, restored after it). BatchNorm runs in train mode.

Timing: each row is timed on its own, its models taken in turn (torch,
converted, own) within every repetition (interleaved, so that a busy spell of
the shared host slows every model alike), after the check and one warm-up
round; the time of a model is the median of 5 repetitions (3 with --quick,
which also skips the warm-up round, the check's run serving as warm-up, and
does not time the own model). Rows are not interleaved with each other, so
each model's packed weights stay cached between its repetitions, as they
would for a user running that one model (all of a row's packings fit the
cache's default 256 MB). Ratios are torch time / converted time (> 1:
converted is faster). The issue's target: at least 1.3 in every row; "met" or
"NOT met" per row, measured, nothing tuned for it. With the threads torch
has (torch.get_num_threads(), recorded).

Correctness check, per row and model, before timing (a failure fails the
bench like a layer row): the relative Frobenius error ||ours - torch|| /
||torch|| of the "out" logits, and in the training rows also of the loss and
of three weight gradients: the classifier's last 1x1 (classifier.4), the
ASPP's rate-36 conv (classifier.0.convs.3.0, converted) and the first dilated
conv (backbone.layer3.1.conv2, converted, the deepest). The training check
runs the Dropout layer as the identity (the timed steps do not): torch draws
a Dropout mask in memory order, so models whose activations differ only in
layout draw different masks, and own's do: its ASPP projection (a 1x1 conv on
the NCHW concatenation, with a channels_last-strided weight) returns NCHW,
where torch's conv follows the weight's strides to channels_last. Bounds
(TOLERANCE), with what this host measured at full size (2026-12-08), and what
a real bug gives (layer3.1.conv2's kernel flipped, 65x65):

    quantity                bound  measured (converted; own)      flipped kernel
    logits, fp32            1e-3   2e-6 to 2e-5; 2e-6 to 1e-4     0.19 (inference), 1.1 (training)
    logits, bf16 autocast   3e-2   8e-3; 1e-2                     -
    loss                    1e-4   0; 0 to 2e-7                   2e-3
    grad classifier.4       1e-3   4e-6 to 5e-6; 1e-5 to 3e-5     0.43
    grad ASPP rate-36 conv  1e-1   2e-3; 4e-3 to 1e-2             1.4
    grad layer3.1.conv2     1e-1   2e-3 to 5e-3; 3e-3 to 2e-2    1.4

fp32: the implementations sum in different orders through ~50 layers. bf16:
each side rounds every conv's inputs to bf16 (2^-8) on its own path (torch
rounds the whole model's convs, ours the same convs through our kernels). The
two gradients behind train-mode BatchNorms are badly conditioned in a randomly
initialised network (BatchNorm's backward subtracts the projections of the
incoming gradient, leaving a small remainder): torch's own fp32 gradients of
these convs differ from a float64 run of the same model by 0.5-2e-2 (33x33
and 129x129, batch 2), as much as ours do, and our own model reached 3.8e-2
at 17x17; 1e-1 stays an order of magnitude below a bug's error of order 1.
"""
import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .convert import convert_model
from .modules import AtrousConv2d

TARGET = 1.3  # issue 14 §4: torch time / converted time, every row

# The gradients the training rows check, by parameter name (the same in all three models).
GRAD_CHECKS = {
    "classifier.4.weight": "grad classifier.4",
    "classifier.0.convs.3.0.weight": "grad ASPP rate-36 conv",
    "backbone.layer3.1.conv2.weight": "grad layer3.1.conv2",
}

# Bounds on the relative Frobenius error against torch's model (see the module docstring).
TOLERANCE = {
    "logits": 1e-3,
    "logits (bf16)": 3e-2,
    "loss": 1e-4,
    "grad classifier.4": 1e-3,
    "grad ASPP rate-36 conv": 1e-1,
    "grad layer3.1.conv2": 1e-1,
}


@dataclass(frozen=True)
class Config:
    """One row: inference or a training step, in a layout, fp32 or bf16 autocast."""
    name: str
    training: bool
    channels_last: bool
    bf16: bool = False


CONFIGS = (
    Config("inference, fp32, NCHW", False, False),
    Config("inference, fp32, channels_last", False, True),
    Config("inference, bf16 autocast, channels_last", False, True, bf16=True),
    Config("training step, fp32, NCHW", True, False),
    Config("training step, fp32, channels_last", True, True),
)


@dataclass(frozen=True)
class Settings:
    """The sizes and the amount of work of the section (tests use tiny inputs)."""
    num_classes: int = 21
    inference_batch: int = 1
    inference_size: int = 520
    train_batch: int = 2
    train_size: int = 321
    lr: float = 1e-3
    configs: tuple = CONFIGS
    own_model: bool = True  # time atrous_cuda.models.DeepLabV3 too
    reps: int = 5
    warmup: int = 1
    seed: int = 0
    note: str = ""  # shown in the table's title (e.g. what --quick leaves out)


def default_settings(quick=False):
    """Issue 14 §4's sizes; --quick: 3 repetitions, the check's run as the warm-up, no own model."""
    if not quick:
        return Settings()
    return Settings(reps=3, warmup=0, own_model=False,
                    note="quick: 3 repetitions, no warm-up round, own DeepLabV3 not timed")


def build_torchvision(settings):
    """torchvision's DeepLabV3-ResNet50 (output stride 8), random weights from settings.seed."""
    from torchvision.models.segmentation import deeplabv3_resnet50
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=settings.num_classes,
                                  aux_loss=False)


def convert(model):
    """The converted model: a deep copy (its own Parameters and buffers) through convert_model."""
    return convert_model(copy.deepcopy(model))


def build_own(reference, settings):
    """atrous_cuda.models.DeepLabV3 at output stride 8 with `reference`'s weights (its state_dict)."""
    from .models import DeepLabV3
    own = DeepLabV3(settings.num_classes, "resnet50", output_stride=8)
    own.load_state_dict(reference.state_dict())
    return own


def _logits(output):
    return output["out"] if isinstance(output, dict) else output


def rel_error(ours, ref):
    """||ours - ref||_F / ||ref||_F, in float64."""
    ours, ref = ours.detach().double(), ref.detach().double()
    scale = ref.norm().item()
    diff = (ours - ref).norm().item()
    return diff / scale if scale else diff


def _count_convs(model):
    """(convs on our kernels, all Conv2d) of `model`."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(isinstance(m, AtrousConv2d) for m in convs), len(convs)


class _Survey:
    """Forward hooks on a torchvision model's convs and backbone during one run: the
    multiply-adds of every conv (all taps) and the backbone's output size."""

    def __init__(self, model, row):
        self.config, self.batch, self.size = row.config.name, row.batch, row.size
        self.macs, self.backbone_out, self._handles = {}, None, []
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self._handles.append(m.register_forward_hook(self._conv_hook(name)))
        self._handles.append(model.backbone.register_forward_hook(self._backbone_hook))

    def _conv_hook(self, name):
        def hook(module, inputs, output):
            self.macs[name] = (output.numel() * module.weight[0].numel(), max(module.dilation) > 1)
        return hook

    def _backbone_hook(self, module, inputs, output):
        self.backbone_out = tuple(_logits(output).shape[-2:])

    def remove(self):
        for h in self._handles:
            h.remove()


class _Row:
    """The models and inputs of one row, with run(name) doing one timed unit of work."""

    def __init__(self, config, settings, models):
        self.config, self.settings, self.models = config, settings, models
        gen = torch.Generator().manual_seed(settings.seed + 1)
        batch, size = ((settings.train_batch, settings.train_size) if config.training
                       else (settings.inference_batch, settings.inference_size))
        self.batch, self.size = batch, size
        x = torch.randn(batch, 3, size, size, generator=gen)
        self.x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
        self.target = torch.randint(settings.num_classes, (batch, size, size), generator=gen)
        self.optimizers = {}
        if config.training:
            self.optimizers = {name: torch.optim.SGD(m.parameters(), lr=settings.lr) for name, m in models.items()}

    def forward(self, name):
        """Inference: the logits. Training: (logits, loss) after backward, no optimizer step."""
        model = self.models[name]
        if not self.config.training:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16):
                return _logits(model(self.x))
        self.optimizers[name].zero_grad(set_to_none=True)
        logits = _logits(model(self.x))
        loss = F.cross_entropy(logits, self.target)
        loss.backward()
        return logits, loss

    def run(self, name):
        self.forward(name)
        if self.config.training:
            self.optimizers[name].step()

    def check(self, surveyed=False):
        """Runs every model once (untimed) and compares it with torch's: (a list of
        dict(model, quantity, error, bound, ok), the _Survey of torch's run when `surveyed`)."""
        survey = _Survey(self.models["torch"], self) if surveyed else None
        try:
            results = {name: self._observe(name) for name in self.models}
        finally:
            if survey is not None:
                survey.remove()
        checks = []
        for name, observed in results.items():
            if name == "torch":
                continue
            for quantity, value in observed.items():
                key = "logits (bf16)" if quantity == "logits" and self.config.bf16 else quantity
                error = rel_error(value, results["torch"][quantity])
                bound = TOLERANCE[key]
                checks.append(dict(model=name, quantity=key, error=error, bound=bound,
                                   ok=math.isfinite(error) and error <= bound))
        return checks, survey

    def _observe(self, name):
        if not self.config.training:
            return {"logits": self.forward(name).float()}
        # Dropout as the identity: its mask is drawn in memory order, so it differs between
        # models whose activations differ only in layout (see the module docstring).
        dropouts = [m for m in self.models[name].modules() if isinstance(m, nn.Dropout)]
        for m in dropouts:
            m.eval()
        try:
            logits, loss = self.forward(name)
        finally:
            for m in dropouts:
                m.train()
        params = dict(self.models[name].named_parameters())
        observed = {"logits": logits.detach(), "loss": loss.detach()}
        observed.update({label: params[p].grad.detach().clone() for p, label in GRAD_CHECKS.items()})
        self.optimizers[name].zero_grad(set_to_none=True)
        return observed


def _time_interleaved(row, names, reps, warmup):
    for _ in range(warmup):
        for name in names:
            row.run(name)
    times = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            t0 = time.perf_counter()
            row.run(name)
            times[name].append(time.perf_counter() - t0)
    return times


def evaluate_target(ratio):
    """"met" when torch time / converted time >= TARGET, else "NOT met" (NaN: not measured)."""
    return "met" if ratio is not None and math.isfinite(ratio) and ratio >= TARGET else "NOT met"


def _model_sets(settings):
    """Per layout (False: NCHW, True: channels_last), the models, built on first use."""
    sets = {}

    def get(channels_last):
        if channels_last not in sets:
            reference = build_torchvision(settings)
            models = {"torch": reference, "converted": convert(reference)}
            if settings.own_model:
                models["own"] = build_own(reference, settings)
            if channels_last:
                for m in models.values():
                    m.to(memory_format=torch.channels_last)
            sets[channels_last] = models
        return sets[channels_last]
    return get


def run_section(settings=None, title="DeepLabV3-ResNet50 OS8, whole model"):
    """Checks, then times, every row. Returns the section: a dict with `rows`, `summary`
    (lines), `threads`, `failures` (rows with a failed check), `table` (the markdown);
    `seconds` is how long it took."""
    settings = settings or default_settings()
    start = time.perf_counter()
    models_for = _model_sets(settings)
    threads = torch.get_num_threads()
    rows, survey, counts = [], None, {}
    for config in settings.configs:
        models = models_for(config.channels_last)
        counts = {name: _count_convs(m) for name, m in models.items()}
        saved = None
        if config.training:
            saved = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
        for m in models.values():
            m.train(config.training)
        row = _Row(config, settings, models)
        names = list(models)
        error = None
        try:
            checks, row_survey = row.check(surveyed=survey is None)
            survey = survey or row_survey
            times = _time_interleaved(row, names, settings.reps, settings.warmup)
        except Exception as e:  # a model that fails to run fails the row; the bench goes on
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            checks, times = [], {name: [] for name in names}
        finally:
            if saved is not None:
                for name, m in models.items():
                    m.load_state_dict(saved[name])
            for m in models.values():
                m.eval()
        ms = {name: statistics.median(t) * 1e3 if t else float("nan") for name, t in times.items()}
        ratio = ms["torch"] / ms["converted"]
        own_ratio = ms["torch"] / ms["own"] if "own" in ms else None
        worst = max(checks, key=lambda c: c["error"] / c["bound"] if c["bound"] else math.inf, default=None)
        rows.append(dict(
            config=config.name, training=config.training,
            memory_format="channels_last" if config.channels_last else "nchw",
            precision="bf16 autocast" if config.bf16 else "fp32", batch=row.batch, size=row.size,
            torch_ms=ms["torch"], converted_ms=ms["converted"], ratio=ratio, target=TARGET,
            verdict=evaluate_target(ratio), own_ms=ms.get("own"), own_ratio=own_ratio,
            converted_convs=counts["converted"][0], convs=counts["converted"][1],
            checks=checks, worst=worst, error=error, ok=error is None and all(c["ok"] for c in checks),
            reps=len(times["torch"]), rep_seconds=times))
    summary = _summary(settings, rows, survey, counts, threads)
    section = dict(device="cpu", dtype="float32", memory_format=None, kind="models",
                   title=title + (f" ({settings.note})" if settings.note else ""),
                   rows=rows, summary=summary, threads=threads, failures=sum(not r["ok"] for r in rows),
                   settings={k: (v if k != "configs" else [c.name for c in v])
                             for k, v in vars(settings).items()})
    section["table"] = format_table(section)
    section["seconds"] = time.perf_counter() - start
    return section


def _summary(settings, rows, survey, counts, threads):
    lines = [f"threads: {threads} (torch.get_num_threads()); median of {settings.reps} interleaved repetitions "
             f"after the check and {settings.warmup} warm-up round(s); ratio = torch ms / converted ms, "
             f"target >= {TARGET}"]
    if survey is not None and survey.macs and survey.backbone_out:
        total = sum(m for m, _ in survey.macs.values())
        dilated = sum(m for m, d in survey.macs.values() if d)
        n_dilated = sum(d for _, d in survey.macs.values())
        stride = output_stride(survey.size, survey.backbone_out[-1])
        lines.append(
            f"model: torchvision deeplabv3_resnet50(weights=None, num_classes={settings.num_classes}, "
            f"aux_loss=False), random weights (seed {settings.seed}); backbone output "
            f"{survey.backbone_out[0]}x{survey.backbone_out[1]} for a {survey.size}x{survey.size} input: "
            f"output stride {stride}")
        lines.append(
            f"converted: {n_dilated} of its {len(survey.macs)} Conv2d (those with dilation > 1), carrying "
            f"{dilated / total:.0%} of the convs' multiply-adds ({dilated / 1e9:.1f} of {total / 1e9:.1f} GMAC "
            f"in the {survey.config} row, batch {survey.batch}, {survey.size}x{survey.size})")
    if "own" in counts:
        own = counts["own"]
        faster = [r["config"] for r in rows if r["own_ratio"] is not None and r["own_ratio"] > 1]
        lines.append(
            f"own: atrous_cuda.models.DeepLabV3({settings.num_classes}, 'resnet50', output_stride=8) with the "
            f"torchvision model's state_dict, {own[0]} of {own[1]} convs ours; faster than torchvision's in "
            + (", ".join(faster) if faster else "no row"))
    else:
        lines.append("own: atrous_cuda.models.DeepLabV3 not timed")
    lines.append("training step: zero_grad, forward, cross-entropy, backward, SGD step (lr "
                 f"{settings.lr}); batch {settings.train_batch}, {settings.train_size}x{settings.train_size}")
    met = sum(r["verdict"] == "met" for r in rows)
    lines.append(f"target torch/converted >= {TARGET}: met in {met} of {len(rows)} rows")
    return lines


def output_stride(size, out):
    """The backbone's output stride: the 2^k with ceil(size / 2^k) == out (each ResNet
    downsampling rounds up), or None."""
    return next((2 ** k for k in range(7) if -(-size // 2 ** k) == out), None)


def _fmt(value, spec):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def check_cell(row):
    if row["error"] is not None:
        return f"FAIL ({row['error']})"
    w = row["worst"]
    if w is None:
        return "FAIL (nothing checked)"
    return f"{'ok' if row['ok'] else 'FAIL'} ({w['model']} {w['quantity']} {w['error']:.1e} <= {w['bound']:.0e})"


def format_table(section):
    """The section's markdown: the rows, then the checks and the summary."""
    lines = [
        f"### {section['title']}",
        "",
        "| configuration | batch, size | torch ms | converted ms | torch/converted | target | met "
        "| own DeepLabV3 ms | torch/own | convs converted | check (worst error / bound) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['config']} | {r['batch']}, {r['size']}x{r['size']} | {_fmt(r['torch_ms'], '.0f')} | "
            f"{_fmt(r['converted_ms'], '.0f')} | {_fmt(r['ratio'], '.2f')} | >= {r['target']} | {r['verdict']} | "
            f"{_fmt(r['own_ms'], '.0f')} | {_fmt(r['own_ratio'], '.2f')} | {r['converted_convs']} of {r['convs']} | "
            f"{check_cell(r)} |")
    lines.append("")
    for r in section["rows"]:
        if r["checks"]:
            detail = "; ".join(f"{c['model']} {c['quantity']} {c['error']:.1e}{'' if c['ok'] else ' FAIL'}"
                               for c in r["checks"])
            lines.append(f"- check, {r['config']}: {'ok' if r['ok'] else 'FAIL'} ({detail})")
    for line in section["summary"]:
        lines.append(f"- {line}")
    return "\n".join(lines)
