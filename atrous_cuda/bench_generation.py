"""The benchmark's WaveNet generation section (issue 16): autoregressive
generation speed on the CPU, float32, one sample at a time.

Why: a WaveNet vocoder is only useful if it generates audio at least as fast
as it is played. Generation cannot be batched over time (each sample is fed
back as the next input), so it runs the whole network once per sample, at
batch 1 or a few sequences; that is dominated by per-call overhead and by
reading the weights, not by multiply-adds, and the layer suite says nothing
about it.

What: the issue's model, WaveNet(256, 256, residual_channels=64,
gate_channels=64, skip_channels=128) (20 blocks, dilations 1..512 twice,
kernel_size 2, 256 classes), random weights from a fixed seed, float32 on
the CPU under torch.inference_mode(), with the threads torch has
(torch.get_num_threads(), recorded). Rows:

    per-layer torch path   WaveNet._steps_torch, one call per sample, batch 1: what step()
                           ran before the C++ path (the baseline, ~4 ms a sample)
    step()                 teacher-forced, one call per sample, batch 1 and 8 (one-hot inputs
                           of random classes, prepared before timing)
    generate()             one call of a few thousand samples, sampling softmax(logits) at
                           temperature 1 with a seeded torch.Generator, batch 1 and 8
    generate(), bf16       the same with reset_state(n, weights_dtype=torch.bfloat16)
                           (bfloat16 weights, float32 activations and accumulation), when
                           the model supports it; otherwise the rows say "not available"

Each row is timed as the median of 5 repetitions (3 with --quick), the rows
taken in turn within every repetition (interleaved, so that a busy spell of
the shared host slows every row alike), after one warm-up round. Every
repetition starts from reset_state and one untimed step or sample, so the
one-off weight packing is not timed. samples/s counts every sequence of the
batch; the real-time factor is samples/s / 16,000.

Targets (issue 16): step() >= 16,000 samples/s at batch 1; generate() >=
24,000 samples/s at batch 1; at batch 8, >= 8x real time at 16 kHz in total
(128,000 samples/s summed over the batch), applied to step() and generate().
bf16 rows have no target: the summary says whether they are faster than the
float32 generate() of the same batch, and at what error: over a teacher-forced
run (the same one-hot inputs through step() with float32 and with bfloat16
weights), the largest ||logits_bf16 - logits_fp32|| / ||logits_fp32|| of any
sample (norms over the classes), and the fraction of samples whose argmax
(the greedy choice) is the same.

Correctness checks, run before timing (a failure fails the bench like a
layer row): teacher-forced step(), one call per sample, equals forward()
bitwise (torch.equal) over a few hundred samples; greedy generate() equals
argmax decoding done by hand with forward (start from a zero input, feed
back one_hot(argmax)). Both at every batch of the section.
"""
import inspect
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .models.wavenet import WaveNet

SAMPLE_RATE = 16000

# Issue 16's targets, in samples/s summed over the batch, by (row kind, batch).
TARGETS = {
    ("step", 1): 16000,     # real time at 16 kHz
    ("generate", 1): 24000,  # real time at 24 kHz
    ("step", 8): 8 * SAMPLE_RATE,      # 8x real time at 16 kHz in total
    ("generate", 8): 8 * SAMPLE_RATE,
}

PATHS = {
    "torch": "per-layer torch path (_steps_torch), step",
    "step": "step()",
    "generate": "generate()",
    "generate_bf16": "generate(), bf16 weights",
}


@dataclass(frozen=True)
class Settings:
    """The model and the amount of work of the section (tests use a tiny model)."""
    in_channels: int = 256
    out_channels: int = 256
    residual_channels: int = 64
    gate_channels: int = 64
    skip_channels: int = 128
    dilations: tuple = tuple(2 ** i for i in range(10))
    stacks: int = 2
    kernel_size: int = 2
    seed: int = 0
    batches: tuple = (1, 8)
    torch_steps: int = 40        # per-layer torch path: ~4 ms a step
    step_steps: int = 2000       # step(): calls per repetition
    generate_steps: int = 4096   # generate(): samples in its one call
    reps: int = 5
    warmup: int = 1
    check_steps: int = 300       # teacher-forced step() == forward
    greedy_steps: int = 32       # greedy generate() == argmax by hand
    error_steps: int = 300       # bf16 error run
    model_kwargs: dict = field(default_factory=dict)  # anything else WaveNet takes

    def model(self):
        return WaveNet(self.in_channels, self.out_channels, residual_channels=self.residual_channels,
                       gate_channels=self.gate_channels, skip_channels=self.skip_channels,
                       dilations=self.dilations, stacks=self.stacks, kernel_size=self.kernel_size,
                       **self.model_kwargs)


def default_settings(quick=False):
    """Issue 16's model; --quick takes a quarter of the steps and 3 repetitions (~10 s)."""
    if not quick:
        return Settings()
    return Settings(torch_steps=10, step_steps=500, generate_steps=1024, reps=3, check_steps=100,
                    greedy_steps=16, error_steps=100)


def evaluate_target(kind, batch, samples_per_s):
    """(target in samples/s or None, "met" / "NOT met" / "-") for a row of `kind`
    ("torch", "step", "generate", "generate_bf16") at `batch`, from its measured rate
    (None or NaN when the row was not measured: "NOT met" if it has a target)."""
    target = TARGETS.get((kind, batch))
    if target is None:
        return None, "-"
    measured = samples_per_s is not None and math.isfinite(samples_per_s)
    return target, "met" if measured and samples_per_s >= target else "NOT met"


def bf16_unavailable_reason(model):
    """None when reset_state(n, weights_dtype=torch.bfloat16) works with step and
    generate on this model; otherwise why not (shown in the bf16 rows)."""
    if "weights_dtype" not in inspect.signature(model.reset_state).parameters:
        return "reset_state has no weights_dtype parameter in this build"
    try:
        model.reset_state(1, weights_dtype=torch.bfloat16)
        model.step(model.input_conv.weight.new_zeros(1, model.in_channels))
        model.generate(1, greedy=True)
    except Exception as e:  # reported in the table, never hidden
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        model.reset_state(1)
    return None


def _one_hot_inputs(gen, batch, channels, steps, dtype):
    """(batch, channels, steps) one-hot inputs of random classes."""
    classes = torch.randint(channels, (batch, steps), generator=gen)
    return F.one_hot(classes, channels).to(dtype).permute(0, 2, 1).contiguous()


def check_step_equals_forward(model, batches, steps, seed=0):
    """Teacher-forced step(), one call per sample, against forward: bitwise equal.
    Returns (ok, detail)."""
    gen = torch.Generator().manual_seed(seed + 1)
    details, ok = [], True
    for n in batches:
        x = _one_hot_inputs(gen, n, model.in_channels, steps, model.input_conv.weight.dtype)
        model.reset_state(n)
        stepped = torch.stack([model.step(x[:, :, s].contiguous()) for s in range(steps)], dim=2)
        reference = model(x)
        same = torch.equal(stepped, reference)
        ok &= same
        details.append(f"batch {n}: " + ("bitwise equal" if same else
                                         f"differs (max |diff| {(stepped - reference).abs().max().item():.1e})"))
    return ok, "; ".join(details)


def check_greedy_generate(model, batches, steps):
    """Greedy generate() against argmax decoding by hand with forward (zero first
    input, one-hot feedback). Returns (ok, detail)."""
    dtype = model.input_conv.weight.dtype
    table = torch.eye(model.out_channels, dtype=dtype)
    details, ok = [], True
    for n in batches:
        model.reset_state(n)
        samples = model.generate(steps, greedy=True)
        x = torch.zeros(n, model.in_channels, 1, dtype=dtype)
        by_hand = []
        for _ in range(steps):
            k = model(x)[:, :, -1].argmax(dim=1)
            by_hand.append(k)
            x = torch.cat([x, table[k].unsqueeze(2)], dim=2)
        by_hand = torch.stack(by_hand, dim=1)
        same = torch.equal(samples, by_hand)
        ok &= same
        details.append(f"batch {n}: " + ("equal" if same else
                                         f"{(samples != by_hand).sum().item()} of {samples.numel()} differ"))
    return ok, "; ".join(details)


def bf16_error(model, batch, steps, seed=0):
    """Teacher-forced logits with bfloat16 weights against float32 ones (the same inputs):
    (largest per-sample ||l16 - l32|| / ||l32|| over the classes, fraction of equal argmax)."""
    gen = torch.Generator().manual_seed(seed + 2)
    x = _one_hot_inputs(gen, batch, model.in_channels, steps, model.input_conv.weight.dtype)
    model.reset_state(batch)
    fp32 = model.step(x)
    model.reset_state(batch, weights_dtype=torch.bfloat16)
    bf16 = model.step(x)
    error = ((bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)).max().item()
    agreement = (bf16.argmax(dim=1) == fp32.argmax(dim=1)).double().mean().item()
    return error, agreement


class _Row:
    """One timed row: prepare() (untimed: fresh state, weights packed) then run() (timed)."""

    def __init__(self, kind, batch, steps, prepare, run):
        self.kind, self.batch, self.steps = kind, batch, steps
        self.prepare, self.run = prepare, run
        self.times = []


def _rows(model, settings, bf16):
    dtype = model.input_conv.weight.dtype
    gen = torch.Generator().manual_seed(settings.seed + 3)
    rows = []

    # The per-layer torch path, as step() ran it before: one (1, in, 1) call per sample.
    torch_inputs = [x.unsqueeze(2) for x in _one_hot_inputs(gen, 1, model.in_channels, settings.torch_steps,
                                                            dtype).unbind(2)]
    torch_inputs = [x.contiguous() for x in torch_inputs]

    def torch_prepare():
        model.reset_state(1)
        model._steps_torch(model.state, torch_inputs[0], None, None)

    def torch_run():
        state = model.state
        for x in torch_inputs:
            model._steps_torch(state, x, None, None)

    rows.append(_Row("torch", 1, settings.torch_steps, torch_prepare, torch_run))

    def step_row(n):
        inputs = [x.contiguous() for x in _one_hot_inputs(gen, n, model.in_channels, settings.step_steps,
                                                          dtype).unbind(2)]

        def prepare():
            model.reset_state(n)
            model.step(inputs[0])  # packs the weights

        def run():
            for x in inputs:
                model.step(x)
        return _Row("step", n, settings.step_steps, prepare, run)

    def generate_row(n, kind, reset_kwargs):
        sampler = torch.Generator()

        def prepare():
            model.reset_state(n, **reset_kwargs)
            model.generate(1, greedy=True)  # packs the weights
            sampler.manual_seed(settings.seed + 4)

        def run():
            model.generate(settings.generate_steps, temperature=1.0, generator=sampler)
        return _Row(kind, n, settings.generate_steps, prepare, run)

    for n in settings.batches:
        rows.append(step_row(n))
        rows.append(generate_row(n, "generate", {}))
    if bf16:
        for n in settings.batches:
            rows.append(generate_row(n, "generate_bf16", {"weights_dtype": torch.bfloat16}))
    return rows


def _time_interleaved(rows, reps, warmup):
    for _ in range(warmup):
        for row in rows:
            row.prepare()
            row.run()
    for _ in range(reps):
        for row in rows:
            row.prepare()
            t0 = time.perf_counter()
            row.run()
            row.times.append(time.perf_counter() - t0)


def run_section(settings=None, title="WaveNet generation, float32"):
    """Checks, then times, every row. Returns the section: a dict with `rows` (one dict per
    row), `checks` (name, ok, detail), `summary` (lines), `threads`, `failures` (failed
    checks) and `table` (the markdown); `seconds` is how long it took."""
    settings = settings or default_settings()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = settings.model().eval()
    threads = torch.get_num_threads()
    phases = {}
    with torch.inference_mode():
        checks = []
        ok, detail = check_step_equals_forward(model, settings.batches, settings.check_steps, settings.seed)
        checks.append(dict(name=f"teacher-forced step() == forward() bitwise, {settings.check_steps} steps",
                           ok=ok, detail=detail))
        ok, detail = check_greedy_generate(model, settings.batches, settings.greedy_steps)
        checks.append(dict(name=f"greedy generate() == argmax decoding with forward(), {settings.greedy_steps} "
                                "samples", ok=ok, detail=detail))

        phases["checks"] = time.perf_counter() - start
        unavailable = bf16_unavailable_reason(model)
        errors = {}
        if unavailable is None:
            for n in settings.batches:
                try:
                    errors[n] = bf16_error(model, n, settings.error_steps, settings.seed)
                except Exception as e:  # shown in the row
                    errors[n] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        phases["bf16 error"] = time.perf_counter() - start - sum(phases.values())
        timed = _rows(model, settings, bf16=unavailable is None)
        _time_interleaved(timed, settings.reps, settings.warmup)
        phases["timing"] = time.perf_counter() - start - sum(phases.values())

    rows = []
    for row in timed:
        seconds = statistics.median(row.times)
        per_step = seconds / row.steps
        rate = row.batch * row.steps / seconds
        target, verdict = evaluate_target(row.kind, row.batch, rate)
        r = dict(path=PATHS[row.kind], kind=row.kind, batch=row.batch, steps=row.steps, reps=len(row.times),
                 rep_seconds=row.times,
                 us_per_step=per_step * 1e6, samples_per_s=rate, realtime_16k=rate / SAMPLE_RATE,
                 target=target, verdict=verdict, error=None, agreement=None, note=None, available=True)
        if row.kind == "generate_bf16":
            e = errors.get(row.batch)
            if isinstance(e, tuple):
                r["error"], r["agreement"] = e
            else:
                r["note"] = f"error not measured: {e}"
        rows.append(r)
    if unavailable is not None:
        for n in settings.batches:
            target, verdict = evaluate_target("generate_bf16", n, None)
            rows.append(dict(path=PATHS["generate_bf16"], kind="generate_bf16", batch=n, steps=0, reps=0,
                             rep_seconds=[],
                             us_per_step=None, samples_per_s=None, realtime_16k=None, target=target,
                             verdict=verdict, error=None, agreement=None, available=False,
                             note=f"not available: {unavailable}"))

    summary = [f"threads: {threads} (torch.get_num_threads()); model: {_describe(model, settings)}; "
               f"median of {settings.reps} interleaved repetitions after {settings.warmup} warm-up"]
    fp32_generate = {r["batch"]: r for r in rows if r["kind"] == "generate"}
    for r in rows:
        if r["kind"] != "generate_bf16":
            continue
        if not r["available"]:
            summary.append(f"bf16 weights, batch {r['batch']}: {r['note']}")
            continue
        base = fp32_generate.get(r["batch"])
        speedup = base["us_per_step"] / r["us_per_step"] if base else float("nan")
        verdict = ("adds speed" if speedup >= 1.05 else "slower" if speedup <= 0.95
                   else "adds no speed: within 5%")
        error = (f"max rel. logits error {r['error']:.2e}, greedy agreement {r['agreement']:.1%} over "
                 f"{settings.error_steps} teacher-forced steps") if r["error"] is not None else r["note"]
        summary.append(f"bf16 weights, generate() batch {r['batch']}: {speedup:.2f}x the float32 speed "
                       f"({verdict}); {error}")
    section = dict(device="cpu", dtype="float32", memory_format=None, kind="generation", title=title,
                   rows=rows, checks=checks, summary=summary, threads=threads,
                   failures=sum(not c["ok"] for c in checks),
                   settings={k: v for k, v in vars(settings).items() if k != "model_kwargs"})
    section["table"] = format_table(section)
    section["seconds"] = time.perf_counter() - start
    section["phase_seconds"] = phases
    return section


def _describe(model, settings):
    return (f"WaveNet({settings.in_channels}, {settings.out_channels}, residual_channels="
            f"{settings.residual_channels}, gate_channels={settings.gate_channels}, skip_channels="
            f"{settings.skip_channels}), {len(model.blocks)} blocks, dilations {settings.dilations[0]}.."
            f"{settings.dilations[-1]} x{settings.stacks}, kernel_size {settings.kernel_size}, "
            f"receptive field {model.receptive_field}")


def _fmt(value, spec):
    return "not available" if value is None else format(value, spec)


def format_table(section):
    """The section's markdown: the rows, then the checks and the summary."""
    lines = [
        f"### {section['title']}",
        "",
        "| path | batch | time per step (us) | samples/s | real time at 16 kHz | target (samples/s) | met "
        "| logits error vs fp32 | greedy agreement vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        bf16 = r["kind"] == "generate_bf16"
        realtime = "not available" if r["realtime_16k"] is None else f"{r['realtime_16k']:.2f}x"
        target = "-" if r["target"] is None else format(r["target"], ",")
        lines.append(
            f"| {r['path']} | {r['batch']} | {_fmt(r['us_per_step'], '.1f')} | {_fmt(r['samples_per_s'], ',.0f')} | "
            f"{realtime} | {target} | {r['verdict']} | {_fmt(r['error'], '.2e') if bf16 else '-'} | "
            f"{_fmt(r['agreement'], '.1%') if bf16 else '-'} |")
    lines.append("")
    for c in section["checks"]:
        lines.append(f"- check: {c['name']}: {'ok' if c['ok'] else 'FAIL'} ({c['detail']})")
    for line in section["summary"]:
        lines.append(f"- {line}")
    return "\n".join(lines)
