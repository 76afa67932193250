"""python -m atrous_cuda wavenet-demo: a conditioned WaveNet learns to play melodies, then plays one.

The data (made here, seeded, no downloads): melodies at 4 kHz. Each note is one
of 8 pitches (A major pentatonic, A3 220 Hz to C#5 554 Hz) held for 6-12
frames of 64 samples (96-192 ms); the phase runs on across note changes, so
there are no clicks. Each melody has one of two timbres: "sine" or "bright"
(the fundamental plus its 2nd and 3rd harmonics at 1/2 and 1/4 amplitude).
The audio is mu-law quantized to 64 classes (mu = 63).

The model: a small WaveNet (atrous_cuda.models.WaveNet; default 2 stacks of
dilations 1..32, kernel 2, so it sees 127 samples, 32 residual and gate
channels) with
  * local conditioning: per frame, the one-hot of the note's pitch (8 channels),
    upsampled 64 times by repetition to the sample rate;
  * global conditioning: the one-hot of the timbre (2 channels);
  * input: the previous sample's mu-law value (in_channels 1, feedback="mu_law").
Trained with teacher forcing (cross-entropy of the next sample's class) on
fresh random melodies every step, then, for a held-out melody, generate()
produces every sample from the pitch frames and the timbre alone: greedily
(argmax) by default, or sampled at a temperature.

Reported: the pitch of every generated note (the peak of its spectrum, the
note's first frame left out) against the note it was asked for, as the
fraction within half a semitone (chance: 1 in 8) and the median error in cents
(the same measure of the target, which should score 100%, checks the measure);
the share of power above 1.5 f0 (about 0 for "sine", 0.24 for "bright": whether
the timbre came through);
the generated level against the target's; the held-out teacher-forced loss;
and generate()'s speed (samples/s and real-time factor at 4 kHz). Greedy
decoding is deterministic: within a note the generated audio mostly settles
into an exact repetition, of a whole number of samples: one period, or a loop
of several (A4: 73 samples, 8 periods). A pitch whose period is far from whole
(C#4: 14.43 samples; 14 or 15 are 52 and 67 cents off) is only right when the
model found such a loop. Written:
generated.wav and target.wav (16-bit PCM mono: the sine melody, then the
bright one), wavenet_demo.png (waveforms and spectrograms; needs matplotlib)
and wavenet_demo.json.
"""
import argparse
import json
import math
import os
import sys
import time
import wave

import torch
import torch.nn.functional as F

from .models.wavenet import WaveNet, mu_law_decode

__all__ = ["PITCHES_HZ", "TIMBRES", "make_batch", "mu_law_encode", "estimate_pitch", "make_model", "main",
           "run_demo"]

# A major pentatonic, A3 .. C#5 (equal temperament from A4 = 440 Hz).
PITCHES_HZ = tuple(round(440.0 * 2.0 ** (s / 12), 2) for s in (-12, -10, -8, -5, -3, 0, 2, 4))
PITCH_NAMES = ("A3", "B3", "C#4", "E4", "F#4", "A4", "B4", "C#5")
TIMBRES = ("sine", "bright")
_HARMONICS = {"sine": (1.0,), "bright": (1.0, 0.5, 0.25)}
AMPLITUDE = 0.6  # the peak of every timbre

SAMPLE_RATE = 4000
HOP = 64  # samples per conditioning frame
CLASSES = 64  # mu-law classes
NOTE_FRAMES = (6, 12)  # a note lasts this many frames, both included

DEFAULT = dict(steps=300, batch_size=8, segment=1024, channels=32, skip_channels=64, stacks=2, max_dilation=32,
               lr=3e-3, seconds=4.0)
QUICK = dict(steps=3, batch_size=2, segment=256, channels=8, skip_channels=8, stacks=1, max_dilation=8,
             lr=3e-3, seconds=0.5)


# -------------------------------------------------------------------- data --


def mu_law_encode(audio, classes=CLASSES):
    """Values in [-1, 1] -> mu-law classes 0..classes-1 (int64): the inverse of mu_law_decode,
    y = sign(x) * ln(1 + mu|x|) / ln(1 + mu), k = round((y + 1) * mu / 2)."""
    mu = classes - 1
    x = audio.to(torch.float64).clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.round((y + 1.0) * (mu / 2.0)).to(torch.int64)


def _timbre_peak(timbre):
    phase = torch.linspace(0, 2 * math.pi, 4097, dtype=torch.float64)
    return max(sum(a * torch.sin((h + 1) * phase) for h, a in enumerate(_HARMONICS[timbre])).abs().max().item(),
               1e-12)


_PEAKS = {t: _timbre_peak(t) for t in TIMBRES}


def make_melody(frames, generator):
    """Pitch indices (frames,) int64: notes of NOTE_FRAMES frames, each a pitch other than the
    one before; the first note has already been playing for a while (its length is cut)."""
    notes = []
    pitch = None
    first = True
    while len(notes) < frames:
        length = int(torch.randint(NOTE_FRAMES[0], NOTE_FRAMES[1] + 1, (1,), generator=generator))
        if first:
            length = int(torch.randint(1, length + 1, (1,), generator=generator))
            first = False
        choices = [p for p in range(len(PITCHES_HZ)) if p != pitch]
        pitch = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        notes += [pitch] * length
    return torch.tensor(notes[:frames], dtype=torch.int64)


def synthesize(melody, timbre, phase0=0.0):
    """The waveform (frames * HOP,) float64 in [-AMPLITUDE, AMPLITUDE] of a melody of pitch indices."""
    freq = torch.tensor(PITCHES_HZ, dtype=torch.float64)[melody].repeat_interleave(HOP)
    # The phase at sample t is phase0 plus the sum of the frequencies before t: continuous at note changes.
    phase = phase0 + 2 * math.pi * torch.cumsum(F.pad(freq[:-1], (1, 0)), 0) / SAMPLE_RATE
    wave_ = sum(a * torch.sin((h + 1) * phase) for h, a in enumerate(_HARMONICS[timbre]))
    return AMPLITUDE * wave_ / _PEAKS[timbre]


def make_batch(n, frames, generator, timbres=None):
    """n melodies of `frames` frames: (audio (n, frames*HOP) float64, pitch frames one-hot
    (n, len(PITCHES_HZ), frames) float32, timbre one-hot (n, len(TIMBRES)) float32,
    melodies (n, frames) int64, timbre indices (n,) int64). `timbres` fixes each one's
    timbre (indices); by default they are drawn at random."""
    melodies, audio, which = [], [], []
    for i in range(n):
        melody = make_melody(frames, generator)
        timbre = int(torch.randint(len(TIMBRES), (1,), generator=generator)) if timbres is None else timbres[i]
        phase0 = 2 * math.pi * torch.rand(1, generator=generator, dtype=torch.float64).item()
        melodies.append(melody)
        audio.append(synthesize(melody, TIMBRES[timbre], phase0))
        which.append(timbre)
    melodies, which = torch.stack(melodies), torch.tensor(which, dtype=torch.int64)
    local = F.one_hot(melodies, len(PITCHES_HZ)).transpose(1, 2).float()
    glob = F.one_hot(which, len(TIMBRES)).float()
    return torch.stack(audio), local, glob, melodies, which


# ------------------------------------------------------------------- model --


def make_model(channels=32, skip_channels=64, stacks=2, max_dilation=32):
    """The demo's WaveNet: mu-law value in, CLASSES logits out, pitch frames upsampled HOP
    times by repetition, the timbre as global conditioning."""
    dilations = tuple(2 ** i for i in range(int(math.log2(max_dilation)) + 1))
    return WaveNet(1, CLASSES, residual_channels=channels, gate_channels=channels, skip_channels=skip_channels,
                   dilations=dilations, stacks=stacks, kernel_size=2, local_channels=len(PITCHES_HZ),
                   upsample_factor=HOP, upsample="repeat", global_channels=len(TIMBRES))


def _teacher_forcing(audio):
    """(input (N, 1, T) float32: the previous sample's mu-law value, 0 at t = 0; target classes (N, T))."""
    classes = mu_law_encode(audio)
    values = mu_law_decode(classes, CLASSES).float()  # exactly generate()'s feedback="mu_law" table
    return F.pad(values[:, :-1], (1, 0)).unsqueeze(1), classes


def _loss(model, audio, local, glob):
    x, target = _teacher_forcing(audio)
    return F.cross_entropy(model(x, local_conditioning=local, global_conditioning=glob), target)


def _train(model, steps, batch_size, segment, lr, seed, progress):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    every = max(steps // 10, 1)
    for i in range(steps):
        audio, local, glob, _, _ = make_batch(batch_size, segment // HOP, g)
        loss = _loss(model, audio, local, glob)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and (i + 1) % every == 0:
            print(f"  step {i + 1}/{steps}: loss {sum(losses[-every:]) / every:.3f} nats/sample", file=sys.stderr)
    return losses


# ---------------------------------------------------------------- quality --


def _spectrum(segment):
    """(log magnitude, power, Hz per bin) of a 1-D waveform at SAMPLE_RATE: Hann-windowed, mean
    removed, zero-padded to at least 8192 points."""
    x = segment.to(torch.float64)
    x = (x - x.mean()) * torch.hann_window(len(x), periodic=False, dtype=torch.float64)
    n = max(8192, 1 << (len(x) - 1).bit_length())
    mag = torch.fft.rfft(x, n).abs()
    return mag.add(1e-12).log(), mag.pow(2), SAMPLE_RATE / n


def estimate_pitch(segment, low=80.0, high=None):
    """The dominant frequency (Hz) of a 1-D waveform at SAMPLE_RATE: the peak of its
    Hann-windowed, zero-padded spectrum between `low` and `high` Hz (default: just under
    Nyquist), refined by a parabola through the log magnitudes around it."""
    mag, _, hz = _spectrum(segment)
    lo, hi = int(math.ceil(low / hz)), int((high or 0.95 * SAMPLE_RATE / 2) / hz)
    k = lo + int(mag[lo:hi].argmax())
    a, b, c = mag[k - 1].item(), mag[k].item(), mag[k + 1].item()
    offset = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    return (k + offset) * hz


def overtone_fraction(segment, f0):
    """The share of a waveform's power above 1.5 * f0: about 0 for a sine at f0, 0.24 for
    the "bright" timbre (harmonics 2 and 3 at amplitudes 1/2 and 1/4)."""
    _, power, hz = _spectrum(segment)
    return (power[int(1.5 * f0 / hz):].sum() / power.sum().clamp(min=1e-30)).item()


def _notes(melody):
    """(first frame, frame count, pitch index) of each note of a melody."""
    notes, start = [], 0
    m = melody.tolist()
    for f in range(1, len(m) + 1):
        if f == len(m) or m[f] != m[start]:
            notes.append((start, f - start, m[start]))
            start = f
    return notes


def note_report(audio, melody, skip_frames=1, min_samples=128):
    """Per note of `melody` (its first `skip_frames` frames left out, and notes shorter than
    min_samples after that skipped): (target Hz, estimated Hz of `audio`, error in cents,
    overtone fraction at the target pitch)."""
    rows = []
    for start, length, pitch in _notes(melody):
        a, b = (start + skip_frames) * HOP, (start + length) * HOP
        if b - a < min_samples:
            continue
        f0 = PITCHES_HZ[pitch]
        f = estimate_pitch(audio[a:b])
        rows.append((f0, f, 1200 * math.log2(f / f0), overtone_fraction(audio[a:b], f0)))
    return rows


def _median(values):
    s = sorted(values)
    return None if not s else (s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2]))


def _pitch_summary(rows):
    cents = [abs(row[2]) for row in rows]
    return {"notes": len(rows),
            "within_half_semitone": None if not rows else round(sum(c < 50 for c in cents) / len(rows), 4),
            "median_abs_cents": None if not rows else round(_median(cents), 1),
            "overtone_fraction": None if not rows else round(sum(row[3] for row in rows) / len(rows), 4)}


def _rms(x):
    return x.to(torch.float64).pow(2).mean().sqrt().item()


# ------------------------------------------------------------------ output --


def write_wav(path, audio):
    """A 16-bit PCM mono WAV at SAMPLE_RATE of values in [-1, 1] (1-D)."""
    pcm = (audio.to(torch.float64).clamp(-1, 1) * 32767).round().to(torch.int16)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.numpy().astype("<i2").tobytes())


def _plot(path, target, generated, melodies, rows):
    """A row per timbre: a zoom into the waveforms around a note change, and the generated
    audio's spectrogram with the requested pitch drawn over it. False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TIMBRES), 2, figsize=(12, 3.2 * len(TIMBRES)), squeeze=False)
    for r, timbre in enumerate(TIMBRES):
        # The first note change with 100 samples before it (or none).
        change = next((start * HOP for start, _, _ in _notes(melodies[r]) if start * HOP >= 100), 0)
        a = max(change - 100, 0)
        b = min(a + 200, target.shape[1])
        t_ms = torch.arange(a, b, dtype=torch.float64) * 1000 / SAMPLE_RATE
        ax = axes[r][0]
        ax.plot(t_ms.numpy(), target[r, a:b].numpy(), lw=1.2, label="target")
        ax.plot(t_ms.numpy(), generated[r, a:b].numpy(), lw=1.0, label="generated")
        if a < change < b:
            ax.axvline(change * 1000 / SAMPLE_RATE, color="grey", ls=":", lw=1)
        ax.set_xlabel("ms")
        ax.set_title(f"{timbre}: waveforms around a note change (the phase is the model's own)", fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
        ax = axes[r][1]
        n_fft = min(256, 1 << (generated.shape[1].bit_length() - 1))
        spec = torch.stft(generated[r].float(), n_fft, hop_length=HOP, window=torch.hann_window(n_fft),
                          return_complex=True).abs().add(1e-6).log10()
        seconds = generated.shape[1] / SAMPLE_RATE
        ax.imshow(spec.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=spec.max().item() - 3.5,
                  extent=(0, seconds, 0, SAMPLE_RATE / 2))
        f0 = torch.tensor(PITCHES_HZ)[melodies[r]]
        frames_t = (torch.arange(len(f0) + 1) * HOP / SAMPLE_RATE).numpy()
        ax.step(frames_t, torch.cat([f0, f0[-1:]]).numpy(), where="post", color="cyan", lw=1, ls="--",
                label="requested pitch")
        ax.set_ylim(0, SAMPLE_RATE / 2)
        ax.set_xlabel("s")
        ax.set_ylabel("Hz")
        ax.set_title(f"{timbre}: spectrogram of the generated audio; notes at the right pitch "
                     f"{_percent(_pitch_summary(rows[timbre])['within_half_semitone'])}", fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


# -------------------------------------------------------------------- demo --


def run_demo(out_dir="wavenet_demo_out", steps=DEFAULT["steps"], batch_size=DEFAULT["batch_size"],
             segment=DEFAULT["segment"], channels=DEFAULT["channels"], skip_channels=DEFAULT["skip_channels"],
             stacks=DEFAULT["stacks"], max_dilation=DEFAULT["max_dilation"], lr=DEFAULT["lr"],
             seconds=DEFAULT["seconds"], temperature=0.0, seed=0, plot=True, progress=True):
    """Trains the WaveNet, generates the held-out melody in both timbres, writes
    generated.wav, target.wav, wavenet_demo.png (when `plot` and matplotlib is there)
    and wavenet_demo.json to out_dir, returns the results dict. temperature 0 is greedy."""
    for name, value in (("steps", steps), ("batch_size", batch_size), ("channels", channels),
                        ("skip_channels", skip_channels), ("stacks", stacks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"run_demo: expected {name} to be an int >= 1, got {value!r}")
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < HOP or segment % HOP:
        raise ValueError(f"run_demo: expected segment to be a positive multiple of {HOP}, got {segment!r}")
    if isinstance(max_dilation, bool) or not isinstance(max_dilation, int) or max_dilation < 1 or \
            max_dilation & (max_dilation - 1):
        raise ValueError(f"run_demo: expected max_dilation to be a power of two, got {max_dilation!r}")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"run_demo: expected seconds > 0, got {seconds!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"run_demo: expected temperature >= 0 (0: greedy), got {temperature!r}")
    os.makedirs(out_dir, exist_ok=True)

    torch.manual_seed(seed)
    model = make_model(channels, skip_channels, stacks, max_dilation)
    start = time.perf_counter()
    losses = _train(model, steps, batch_size, segment, lr, seed, progress)
    train_seconds = time.perf_counter() - start
    model.eval()

    # The held-out melody (another generator than training's), once in each timbre.
    frames = max(math.ceil(seconds * SAMPLE_RATE / HOP), 1)
    held_out = torch.Generator().manual_seed(seed + 1_000_003)
    melody = make_melody(frames, held_out)
    melodies = melody.expand(len(TIMBRES), frames)
    target = torch.stack([synthesize(melody, t) for t in TIMBRES])
    local = F.one_hot(melodies, len(PITCHES_HZ)).transpose(1, 2).float()
    glob = torch.eye(len(TIMBRES))
    with torch.no_grad():
        held_out_loss = _loss(model, target, local, glob).item()

    samples = frames * HOP
    model.reset_state(len(TIMBRES))
    start = time.perf_counter()
    classes = model.generate(samples, local_conditioning=local, global_conditioning=glob,
                             greedy=temperature == 0, temperature=temperature or 1.0, feedback="mu_law",
                             generator=torch.Generator().manual_seed(seed))
    generate_seconds = time.perf_counter() - start
    generated = mu_law_decode(classes, CLASSES)
    target_q = mu_law_decode(mu_law_encode(target), CLASSES)  # what the model was trained to reproduce

    rows = {t: note_report(generated[i], melodies[i]) for i, t in enumerate(TIMBRES)}
    target_rows = {t: note_report(target_q[i], melodies[i]) for i, t in enumerate(TIMBRES)}
    per_sequence = samples / generate_seconds
    results = {
        "config": dict(steps=steps, batch_size=batch_size, segment=segment, channels=channels,
                       skip_channels=skip_channels, stacks=stacks, max_dilation=max_dilation, lr=lr,
                       seconds=seconds, temperature=temperature, seed=seed, threads=torch.get_num_threads(),
                       sample_rate=SAMPLE_RATE, hop=HOP, classes=CLASSES, pitches_hz=list(PITCHES_HZ),
                       timbres=list(TIMBRES)),
        "model": {"parameters": sum(p.numel() for p in model.parameters()), "layers": len(model.blocks),
                  "receptive_field": model.receptive_field},
        "training": {"seconds": round(train_seconds, 2), "steps_per_second": round(steps / train_seconds, 2),
                     "first_loss": round(losses[0], 4),
                     "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
                     "held_out_loss": round(held_out_loss, 4)},
        "generation": {"mode": "greedy" if temperature == 0 else f"sampled at temperature {temperature}",
                       "batch": len(TIMBRES), "samples_per_sequence": samples, "seconds": round(generate_seconds, 4),
                       "samples_per_second": round(per_sequence * len(TIMBRES), 1),
                       "samples_per_second_per_sequence": round(per_sequence, 1),
                       "real_time_factor": round(per_sequence / SAMPLE_RATE, 3)},
        # The same measures of the target (the quantized melody) check the measuring itself.
        "quality": {"pitch": _pitch_summary([row for t in TIMBRES for row in rows[t]]),
                    "chance": round(1 / len(PITCHES_HZ), 4),
                    "by_timbre": {t: {"generated": _pitch_summary(rows[t]), "target": _pitch_summary(target_rows[t])}
                                  for t in TIMBRES},
                    "rms_ratio": round(_rms(generated) / _rms(target_q), 3),
                    "notes": {t: {"columns": ["target_hz", "generated_hz", "cents", "overtone_fraction"],
                                  "rows": [[round(a, 1), round(b, 1), round(c, 1), round(d, 4)]
                                           for a, b, c, d in rows[t]]}
                              for t in TIMBRES}},
        "files": {"generated": "generated.wav", "target": "target.wav",
                  "layout": f"{' then '.join(TIMBRES)}, {samples} samples each, {SAMPLE_RATE} Hz, 16-bit mono"},
    }
    write_wav(os.path.join(out_dir, "generated.wav"), generated.flatten())
    write_wav(os.path.join(out_dir, "target.wav"), target_q.flatten())
    plotted = plot and _plot(os.path.join(out_dir, "wavenet_demo.png"), target_q, generated, melodies, rows)
    results["files"]["plot"] = "wavenet_demo.png" if plotted else None
    with open(os.path.join(out_dir, "wavenet_demo.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: greedy), got {text}")
    return value


def _percent(fraction):
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def _number(value, digits=0):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m atrous_cuda wavenet-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="wavenet_demo_out",
                   help="where generated.wav, target.wav, wavenet_demo.png and wavenet_demo.json go "
                        "(default: wavenet_demo_out)")
    p.add_argument("--steps", type=_positive(int), help=f"training steps (default {DEFAULT['steps']}; "
                                                        f"--quick: {QUICK['steps']})")
    p.add_argument("--seconds", type=_positive(float),
                   help=f"length of the generated melody, per timbre (default {DEFAULT['seconds']}; "
                        f"--quick: {QUICK['seconds']})")
    p.add_argument("--batch-size", type=_positive(int), help=f"melodies per step (default {DEFAULT['batch_size']})")
    p.add_argument("--channels", type=_positive(int),
                   help=f"residual and gate channels (default {DEFAULT['channels']})")
    p.add_argument("--temperature", type=_non_negative_float, default=0.0,
                   help="0 (default): greedy (argmax); > 0: sample softmax(logits / temperature)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive(int), help="torch intra-op threads (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model, a few steps, half a second: checks the pipeline in seconds (the "
                        "tones it generates are not meant to be right)")
    p.add_argument("--no-plot", action="store_true", help="skip wavenet_demo.png")
    p.add_argument("--no-progress", action="store_true", help="no loss lines during training")
    args = p.parse_args(argv)
    config = dict(QUICK if args.quick else DEFAULT)
    for name in ("steps", "seconds", "batch_size", "channels"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("python -m atrous_cuda wavenet-demo: matplotlib is not installed, so no wavenet_demo.png "
                  "(install it with: pip install 'atrous_cuda[demo]')", file=sys.stderr)
    start = time.perf_counter()
    r = run_demo(args.out, temperature=args.temperature, seed=args.seed, plot=not args.no_plot,
                 progress=not args.no_progress, **config)
    m, t, g, q = r["model"], r["training"], r["generation"], r["quality"]
    print(f"WaveNet: {m['layers']} layers, {m['parameters']} parameters, receptive field {m['receptive_field']} "
          f"samples; pitch frames of {HOP} samples and the timbre as conditioning")
    print(f"trained {config['steps']} steps of {config['batch_size']} x {config['segment']} samples in "
          f"{t['seconds']:.1f} s: loss {t['first_loss']:.3f} -> {t['final_loss']:.3f} nats/sample "
          f"(held-out, teacher-forced: {t['held_out_loss']:.3f})")
    print(f"generated ({g['mode']}) {g['batch']} x {g['samples_per_sequence']} samples in {g['seconds']:.2f} s: "
          f"{g['samples_per_second_per_sequence']:,.0f} samples/s per sequence "
          f"({g['real_time_factor']:.1f}x real time at {SAMPLE_RATE} Hz), {g['samples_per_second']:,.0f} in all")
    s = q["pitch"]
    print(f"pitch of the generated notes: {_percent(s['within_half_semitone'])} of {s['notes']} within half a "
          f"semitone of the requested note (chance {100 * q['chance']:.1f}%), median error "
          f"{_number(s['median_abs_cents'])} cents; level: generated RMS / target RMS = {q['rms_ratio']:.2f}")
    for timbre, both in q["by_timbre"].items():
        gen, tgt = both["generated"], both["target"]
        print(f"  {timbre:>6}: right pitch {_percent(gen['within_half_semitone'])} (target measured the same "
              f"way: {_percent(tgt['within_half_semitone'])}), power above 1.5 f0 "
              f"{_number(gen['overtone_fraction'], 3)} (target {_number(tgt['overtone_fraction'], 3)})")
    written = [r["files"][k] for k in ("generated", "target", "plot") if r["files"].get(k)] + ["wavenet_demo.json"]
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)} in {time.perf_counter() - start:.0f} s")
    return 0
