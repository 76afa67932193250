"""python -m atrous_cuda demo: does dilation pay off? Measured on a synthetic task.

The data (generated here, no downloads): textured backgrounds (smooth colour
noise, fine grain and stripes at a random angle) with outlined shapes: circles
and squares whose 2-pixel outline has its own colour and whose inside is the
background's texture, continued. Classes: 0 background, 1 small shape (radius
3-7 px), 2 large shape (radius 16-24 px). A pixel well inside a large shape
looks exactly like background; only an outline up to 24 px away tells it
apart, and only its distance and curvature tell small from large. So the task
needs a receptive field of about twice the large radius: through its convs the
atrous model sees 215 px, the dilation-1 model 47 px (both also have ASPP's
image pooling, which sees everything but cannot localize).

The model: a small DeepLabV3 (two stride-2 convs to stride 4, two residual
blocks, ASPP with image pooling, 1x1 classifier, 4x bilinear upsampling),
trained twice from the same initialization and the same batches:
  * atrous: the blocks' four 3x3 convs at dilations 1, 2, 5, 9 (an HDC-style
    sequence without holes), ASPP rates (3, 6, 9);
  * dilation 1: the very same layers with every dilation 1 (same parameter count).
Reported: per-class IoU and mIoU on a held-out set, the picture
(input / ground truth / both predictions), and the receptive fields.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from .models.aspp import ASPP
from .modules import AtrousConv2d

__all__ = ["SmallDeepLab", "make_batch", "main", "run_demo"]

CLASS_NAMES = ("background", "small shape", "large shape")


# -------------------------------------------------------------------- data --


def _texture(n, size, g):
    coarse = F.interpolate(torch.randn(n, 3, max(size // 8, 1), max(size // 8, 1), generator=g), size=(size, size),
                           mode="bilinear", align_corners=False)
    grain = torch.randn(n, 3, size, size, generator=g)
    theta = torch.rand(n, 1, 1, 1, generator=g) * math.pi
    freq = 0.15 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    stripes = torch.sin(2 * math.pi * freq * (xs * torch.cos(theta) + ys * torch.sin(theta)))
    return 0.6 * coarse + 0.35 * grain + 0.4 * stripes * torch.rand(n, 3, 1, 1, generator=g)


def make_batch(n, size, generator):
    """n images (n, 3, size, size) and labels (n, size, size), from `generator`.

    Shape sizes scale with `size` (the radii above are for size 64).
    """
    g = generator
    images = _texture(n, size, g)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    scale = size / 64
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    for i in range(n):
        shapes = [(2, 16, 24)] * int(torch.randint(1, 3, (1,), generator=g)) + \
                 [(1, 3, 7)] * int(torch.randint(1, 4, (1,), generator=g))
        for cls, r_min, r_max in shapes:  # large first, small drawn over them
            r = (r_min + (r_max - r_min) * torch.rand(1, generator=g).item()) * scale
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            if torch.rand(1, generator=g).item() < 0.5:
                dist = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
            else:
                dist = torch.maximum((ys - cy).abs(), (xs - cx).abs())
            inside = dist <= r
            outline = inside & (dist > r - 2 * max(scale, 0.5))
            colour = (torch.rand(3, 1, generator=g) * 2 - 1) * 1.5
            labels[i][inside] = cls
            images[i][:, outline] = colour.expand(3, int(outline.sum()))
    return images, labels


# ------------------------------------------------------------------- model --


class _ResidualBlock(nn.Module):
    def __init__(self, channels, dilations):
        super().__init__()
        d1, d2 = dilations
        self.conv1 = AtrousConv2d(channels, channels, 3, padding=d1, dilation=d1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = AtrousConv2d(channels, channels, 3, padding=d2, dilation=d2, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class SmallDeepLab(nn.Module):
    """Stride-4 DeepLabV3: stem -> residual blocks (two 3x3 convs each, at the
    dilations of `block_dilations`) -> ASPP(`rates`) -> 1x1 -> 4x upsampling."""

    def __init__(self, num_classes=3, channels=32, block_dilations=((1, 2), (5, 9)), rates=(3, 6, 9)):
        super().__init__()
        self.stem = nn.Sequential(
            AtrousConv2d(3, channels // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels // 2),
            nn.ReLU(),
            AtrousConv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(*[_ResidualBlock(channels, d) for d in block_dilations])
        self.aspp = ASPP(channels, rates, out_channels=channels, dropout=0.1)
        self.classifier = AtrousConv2d(channels, num_classes, 1)

    def forward(self, x):
        logits = self.classifier(self.aspp(self.blocks(self.stem(x))))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ------------------------------------------------------------ train / eval --


def _confusion(pred, target, num_classes):
    return torch.bincount(target.flatten() * num_classes + pred.flatten(),
                          minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _iou(confusion):
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    return (tp / union.clamp(min=1)).tolist()


INSTALL_HINT = "pip install 'atrous_cuda[demo]'"


def _require(module, purpose):
    """Imports an optional dependency of the demo, or raises an ImportError that
    says what it is for and how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"python -m atrous_cuda demo needs {module} ({purpose}), which is not installed "
                          f"({e}); install the demo's dependencies with: {INSTALL_HINT}") from e


def _train(model, train_x, train_y, iterations, batch_size, seed, lr, label, progress):
    g = torch.Generator().manual_seed(seed)  # same batches for every model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations, pct_start=0.15)
    model.train()
    if progress:
        tqdm = _require("tqdm", "the progress bar; --no-progress runs without it").tqdm
        bar = tqdm(range(iterations), desc=label, file=sys.stderr, dynamic_ncols=True)
    else:
        bar = None
    order = torch.empty(0, dtype=torch.long)
    for _ in (bar if bar is not None else range(iterations)):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(train_x), generator=g)])
        batch, order = order[:batch_size], order[batch_size:]
        x, y = train_x[batch], train_y[batch]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.set_postfix(loss=f"{loss.item():.3f}")


@torch.no_grad()
def _evaluate(model, images, labels, num_classes):
    model.eval()
    preds = torch.cat([model(images[i:i + 32]).argmax(1) for i in range(0, len(images), 32)])
    return preds, _iou(_confusion(preds, labels, num_classes))


def _plot(path, images, labels, preds_atrous, preds_plain, miou_atrous, miou_plain, rows):
    matplotlib = _require("matplotlib", "the picture demo.png")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["#202020", "#1f77b4", "#ff7f0e"])
    titles = ["input", "ground truth", f"atrous (mIoU {miou_atrous:.3f})", f"dilation 1 (mIoU {miou_plain:.3f})"]
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2 * rows), squeeze=False)
    for r in range(rows):
        img = images[r].permute(1, 2, 0)
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)
        panels = [img, labels[r], preds_atrous[r], preds_plain[r]]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if c == 0:
                ax.imshow(panel.numpy())
            else:
                ax.imshow(panel.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.text(0.5, 0.005, "classes: background (dark), small shape (blue), large shape (orange)", ha="center",
             fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mean_std(values):
    """Mean and sample standard deviation (n - 1 in the denominator; None for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def _train_and_evaluate(name, kwargs, seed, data, iterations, batch_size, size, channels, lr, progress):
    """One seed's run of one model: initialization and batches from `seed`, data made from it."""
    from .receptive_field import gridding_report, receptive_field

    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)  # same initialization for both models: the layers have the same shapes
    model = SmallDeepLab(len(CLASS_NAMES), channels, **kwargs)
    start = time.perf_counter()
    _train(model, train_x, train_y, iterations, batch_size, seed, lr, f"{name} seed {seed}", progress)
    seconds = time.perf_counter() - start
    preds, iou = _evaluate(model, test_x, test_y, len(CLASS_NAMES))
    # The field through the convs: the stem, the blocks and the largest-rate ASPP
    # branch (the image-pooling branch sees the whole image in both models).
    field_rows = receptive_field(model, (1, 3, size, size))
    widest_branch = f"aspp.convs.{len(kwargs['rates'])}.0"
    conv_field = next(r["size"][0] for r in field_rows if r["name"] == widest_branch)
    result = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "dilations": kwargs,
        "train_seconds": round(seconds, 1),
        "iou": [round(v, 4) for v in iou],
        "miou": round(sum(iou) / len(iou), 4),
        "conv_receptive_field_px": conv_field,
        "block_rates_holes": len(gridding_report([d for b in kwargs["block_dilations"] for d in b]).holes),
    }
    return result, preds


def run_demo(out_dir="docs", iterations=400, batch_size=16, size=64, channels=32, train_images=1024,
             test_images=256, seed=0, lr=4e-3, rows=4, progress=True, seeds=1):
    """Trains both models for seeds seed, seed+1, ..., seed+seeds-1 (each seed draws
    its own data, initialization and batches), writes demo.png (the first seed's
    predictions) and demo.json to out_dir, returns the results dict.

    results[model] holds the first seed's run (the pictured one) and, under
    "over_seeds", every seed's mIoU and per-class IoU with their mean and sample
    standard deviation (None for a single seed).
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"run_demo: expected seeds to be an int >= 1, got {seeds!r}")
    # Fail before minutes of training, not after.
    _require("matplotlib", "the picture demo.png")
    if progress:
        _require("tqdm", "the progress bar; --no-progress runs without it")

    os.makedirs(out_dir, exist_ok=True)
    models = {
        # Block rates 1, 2, 5, 9: no holes (gridding_report), unlike e.g. 2, 2, 4, 4.
        "atrous": dict(block_dilations=((1, 2), (5, 9)), rates=(3, 6, 9)),
        "dilation_1": dict(block_dilations=((1, 1), (1, 1)), rates=(1, 1, 1)),
    }
    results = {"config": dict(iterations=iterations, batch_size=batch_size, size=size, channels=channels,
                              train_images=train_images, test_images=test_images, seed=seed, seeds=seeds, lr=lr,
                              threads=torch.get_num_threads()),
               "classes": list(CLASS_NAMES)}
    runs = {name: [] for name in models}
    pictured = {}
    for s in range(seed, seed + seeds):
        data = (*make_batch(train_images, size, torch.Generator().manual_seed(s)),
                *make_batch(test_images, size, torch.Generator().manual_seed(s + 1_000_003)))
        for name, kwargs in models.items():
            result, preds = _train_and_evaluate(name, kwargs, s, data, iterations, batch_size, size, channels, lr,
                                                progress)
            runs[name].append(result)
            if s == seed:
                pictured[name] = preds
                pictured["test"] = data[2:]
    for name in models:
        first = dict(runs[name][0])
        mious = [r["miou"] for r in runs[name]]
        per_class = list(zip(*[r["iou"] for r in runs[name]]))  # per class, one value per seed
        miou_mean, miou_std = _mean_std(mious)
        class_stats = [_mean_std(list(v)) for v in per_class]
        first["over_seeds"] = {
            "seeds": list(range(seed, seed + seeds)),
            "miou": mious,
            "iou": [r["iou"] for r in runs[name]],
            "miou_mean": round(miou_mean, 4),
            "miou_std": None if miou_std is None else round(miou_std, 4),
            "iou_mean": [round(m, 4) for m, _ in class_stats],
            "iou_std": [None if sd is None else round(sd, 4) for _, sd in class_stats],
        }
        results[name] = first
    test_x, test_y = pictured["test"]
    out_png = os.path.join(out_dir, "demo.png")
    _plot(out_png, test_x, test_y, pictured["atrous"], pictured["dilation_1"], results["atrous"]["miou"],
          results["dilation_1"]["miou"], min(rows, test_images))
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m atrous_cuda demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="docs", help="where demo.png and demo.json go (default: docs)")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--test-images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1,
                   help="train both models for seeds seed .. seed+N-1 and report mean and std (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (and no need for tqdm)")
    args = p.parse_args(argv)
    for name in ("iterations", "batch_size", "size", "channels", "train_images", "test_images", "seeds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.size < 8 or args.size % 4:
        p.error(f"--size must be a multiple of 4 and >= 8, got {args.size}")
    start = time.perf_counter()
    try:
        results = run_demo(args.out_dir, args.iterations, args.batch_size, args.size, args.channels,
                           args.train_images, args.test_images, args.seed, progress=not args.no_progress,
                           seeds=args.seeds)
    except ImportError as e:
        if INSTALL_HINT not in str(e):
            raise
        print(e, file=sys.stderr)
        return 1
    for name in ("atrous", "dilation_1"):
        r = results[name]
        ious = ", ".join(f"{c} {v:.3f}" for c, v in zip(CLASS_NAMES, r["iou"]))
        print(f"{name:>10}: mIoU {r['miou']:.3f} ({ious}); {r['parameters']} parameters; "
              f"receptive field through the convs {r['conv_receptive_field_px']} px; trained in {r['train_seconds']} s")
    if args.seeds > 1:
        print(f"over {args.seeds} seeds ({args.seed}..{args.seed + args.seeds - 1}), mean +- sample std:")
        for name in ("atrous", "dilation_1"):
            o = results[name]["over_seeds"]
            ious = ", ".join(f"{c} {m:.3f} +- {sd:.3f}" for c, m, sd in zip(CLASS_NAMES, o["iou_mean"], o["iou_std"]))
            print(f"{name:>10}: mIoU {o['miou_mean']:.3f} +- {o['miou_std']:.3f} ({ious})")
    print(f"wrote {os.path.join(args.out_dir, 'demo.png')} and {os.path.join(args.out_dir, 'demo.json')} "
          f"in {time.perf_counter() - start:.0f} s")
    return 0
