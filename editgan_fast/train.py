"""Train the bundled toy-face model: a small StyleGAN2 generator and its DatasetGAN segmenter.

    python -m editgan_fast.train generator --minutes 45 --out editgan_fast/assets
    python -m editgan_fast.train segmenter --out editgan_fast/assets
    python -m editgan_fast.train manifest --out editgan_fast/assets

The generator is trained by regression, not adversarially: z -> toyfaces.render(z) (a deterministic function
of z, see editgan_fast.toyfaces), with an L1 loss weighted up on the small parts (eyes, pupils, mouth) plus an
L1 on image gradients that keeps their edges sharp. It is saved in rosinality's format
({'g_ema': state_dict, 'latent_avg': w_avg}).

The segmenter is trained the DatasetGAN way: generator features of 16 samples, the renderer's exact label maps,
an ensemble of 8 pixel classifiers (Linear-ReLU-BN x2, Linear; cross-entropy weighted up on the small parts),
saved in EditGAN's classifier format by the segmenter module (toyfaces_seg_<i>.pth = {'model_state_dict': ...},
keys module.layers.0 ... module.layers.6).

Everything is seeded; by default training runs for a wall-clock budget, so the number of steps depends on the
machine.
The shipped generator: ~1000 steps (batch 24) with an earlier mapping step size (10x lr), ~1900 steps of this
script's schedule resumed from them, then 3400 steps of a 105-minute `--resume` run (stopped there), 1 thread on a
shared 2-core machine: L1 to the renderer 0.104 on [-1, 1] held-out images, eyes, pupils and mouths drawn, hair
still averaged. `--steps N` replaces the wall-clock budget with a fixed schedule that reproduces across machines.
`manifest` records the files' sha256 and the measured segmenter mIoU in manifest.json, which the tests check.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import io, toyfaces
from . import backend
from .assets import ASSETS, MANIFEST, sha256
from .backend import use_backend
from .ops.bias_act import bias_act_reference
from .ops.modulated_conv2d import modulated_conv2d_reference, skip_padding, up_blur_padding
from .ops.seg_head import PixelMLP, upsample_feature

GENERATOR_FILE = "toyfaces_g.pt"
NUM_CLASSIFIERS = 8
CLASSIFIER_NAME = "toyfaces_seg_{}.pth"
CLASSIFIER_FILES = tuple(CLASSIFIER_NAME.format(i) for i in range(NUM_CLASSIFIERS))
# The architecture: 64 px, a 64-d w, a 4-layer mapping network, channels shrinking with resolution.
ARCH = dict(size=64, style_dim=64, n_mlp=4, channels={4: 128, 8: 128, 16: 96, 32: 48, 64: 24})
# Small parts get more weight in the L1, roughly inverse to their area.
CLASS_WEIGHTS = {toyfaces.BACKGROUND: 1.0, toyfaces.SKIN: 1.0, toyfaces.HAIR: 1.0, toyfaces.EYE_WHITE: 6.0,
                 toyfaces.PUPIL: 10.0, toyfaces.MOUTH: 6.0}
MAPPING_LR_MULTIPLIER = 0.01  # the Generator's default lr_mlp, which rosinality-format checkpoints assume
SEG_SAMPLES = 16
SEG_SEED = 1000
HELD_OUT_SEED = 2000


def _fir_shifted_sums(x, f, up, pad, gain):
    """upfirdn2d (1-D taps, down=1, padding >= 0) as shifted multiply-adds. The reference's single-channel
    convolutions are slow to differentiate on CPU; this is the same arithmetic, batched over channels."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    taps = (f.flip(0) * gain ** 0.5).tolist()  # convolution = correlation with the flipped filter
    k = len(taps)
    x = sum(t * x[:, :, :, i:x.shape[3] - k + 1 + i] for i, t in enumerate(taps))
    return sum(t * x[:, :, i:x.shape[2] - k + 1 + i, :] for i, t in enumerate(taps))


def modulated_conv2d_unfused(x, weight, styles, demodulate=True, up=1, resample_filter=None, wsq=None,
                             noise=None, bias=None, act="linear", alpha=None, gain=None, clamp=None, skip=None,
                             eps=1e-8):
    """modulated_conv2d in StyleGAN2's non-fused form: scale the input by the styles, convolve with the one
    shared weight, scale the output by the demodulation coefficients. The same function as the reference
    (which builds per-sample weights and a grouped convolution), but its backward pass is several times
    faster on CPU, which is what regression training spends its time on. `wsq` is ignored (see below);
    only the 1-D filters, upsampling and non-negative paddings the generator uses are supported."""
    y = x * styles.to(x.dtype)[:, :, None, None]
    w = weight.to(x.dtype)
    if up == 1:
        y = F.conv2d(y, w, padding=w.shape[-1] // 2)
    else:
        y = F.conv_transpose2d(y, w.transpose(0, 1), stride=up)
        y = _fir_shifted_sums(y, resample_filter, 1, up_blur_padding(w.shape[-1], resample_filter.shape[0], up),
                              up * up)
    if demodulate:
        # Recomputed, not the caller's cached wsq: the weights change every step and need its gradient.
        y = y * torch.rsqrt(styles.to(x.dtype).square() @ w.square().sum([2, 3]).t() + eps)[:, :, None, None]
    if noise is not None:
        y = y + noise.to(y.dtype)
    y = bias_act_reference(y, bias, act=act, alpha=alpha, gain=gain, clamp=clamp)
    if skip is not None:
        y = y + _fir_shifted_sums(skip.to(y.dtype), resample_filter, 2, skip_padding(resample_filter.shape[0]), 4)
    return y


def _differentiable_weight(conv, dtype):
    """ModulatedConv2d.frozen without the freezing: the scaled weight and its wsq, in the autograd graph."""
    w = (conv.weight[0] * conv.scale).to(dtype)
    return w, w.square().sum(dim=[2, 3])


@contextlib.contextmanager
def training_ops():
    """What training the generator needs: the reference operators (they differentiate through the weights),
    the non-fused modulated conv, and conv weights that reach the graph. The Generator serves frozen weights
    (a cached, detached copy) because inference never trains them; inside this context it does not."""
    from .models import generator as generator_module
    frozen = generator_module.ModulatedConv2d.frozen
    generator_module.ModulatedConv2d.frozen = _differentiable_weight
    backend.register_reference("modulated_conv2d", modulated_conv2d_unfused)
    try:
        with use_backend("reference"):
            yield
    finally:
        backend.register_reference("modulated_conv2d", modulated_conv2d_reference)
        generator_module.ModulatedConv2d.frozen = frozen


def build_generator(seed: int = 0):
    from .models.generator import Generator
    torch.manual_seed(seed)
    return Generator(**ARCH)


def image_loss(fake, real, labels):
    """Label-weighted L1 + L1 of horizontal/vertical differences (edges of small parts)."""
    table = torch.tensor([CLASS_WEIGHTS[c] for c in range(len(toyfaces.CLASSES))], dtype=fake.dtype)
    weight = table[labels][:, None]
    l1 = (weight * (fake - real).abs()).mean()
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    edges = (dx(fake) - dx(real)).abs().mean() + (dy(fake) - dy(real)).abs().mean()
    return l1 + edges


def wplus_of(generator, z):
    w = generator.mapping(z)
    return w[:, None].expand(-1, generator.num_ws, -1)


def train_generator(minutes: float, batch: int = 24, lr: float = 2e-3, seed: int = 0, log_every: int = 50,
                    generator=None, snapshot=None, max_steps: int | None = None):
    """Regression training for `minutes` of wall time (or `max_steps`); returns the generator (eval mode).
    Run it inside `training_ops()`.
    `snapshot(g)` is called at every log line (to save progress that can be inspected or resumed)."""
    g = generator if generator is not None else build_generator(seed)
    mapping = [p for n, p in g.named_parameters() if n.startswith("style.")]
    rest = [p for n, p in g.named_parameters() if not n.startswith("style.")]
    # The mapping's equalized-lr multiplier (lr_mlp = 0.01) makes a step of size lr change it 100x less, relative
    # to its weights, than the other layers: adversarial training wants that, a regression target does not (the
    # image must follow z), so its group steps lr / lr_mlp, the same relative rate as the rest.
    lrs = (lr, lr / MAPPING_LR_MULTIPLIER)
    opt = torch.optim.Adam([{"params": rest, "lr": lrs[0]}, {"params": mapping, "lr": lrs[1]}], betas=(0.9, 0.99))
    g.train()
    rng = torch.Generator().manual_seed(seed)
    deadline = time.monotonic() + minutes * 60
    step, running = 0, None
    total_steps_guess = None
    start = time.monotonic()
    while time.monotonic() < deadline and (max_steps is None or step < max_steps):
        z = torch.randn(batch, g.style_dim, generator=rng)
        real, labels = toyfaces.render(z, g.resolution)
        fake = g.synthesis(wplus_of(g, z), noise_mode="const")
        loss = image_loss(fake, real, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step == 20:
            total_steps_guess = max_steps if max_steps is not None and math.isinf(minutes) else \
                min(int(20 * minutes * 60 / (time.monotonic() - start)), max_steps or math.inf)
        if total_steps_guess:  # cosine decay over the estimated run length
            frac = min(step / total_steps_guess, 1.0)
            for group, base in zip(opt.param_groups, lrs):
                group["lr"] = base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        if step % log_every == 0:
            print(f"step {step} loss {running:.4f} ({time.monotonic() - start:.0f} s)", flush=True)
            if snapshot is not None:
                snapshot(g)
    g.eval()
    return g


def save_generator(g, path):
    with torch.no_grad():
        latent_avg = g.mapping(torch.randn(4096, g.style_dim, generator=torch.Generator().manual_seed(0))).mean(0)
    with io.atomic_write(path) as f:
        torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg}, f)


def generator_features(g, z):
    """(image, features) of latents z at w+ = broadcast mapping(z)."""
    with torch.no_grad():
        return g.synthesis(wplus_of(g, z), noise_mode="const", return_features=True)


def pixel_stack(features, size):
    """The seg head's input: every map upsampled (bilinear) to size x size, [P, D] pixels in row-major order."""
    stack = torch.cat([upsample_feature(f.float(), (size, size), "bilinear") for f in features], dim=1)
    return stack.permute(0, 2, 3, 1).reshape(-1, stack.shape[1])


def pixel_classifier(dim: int, num_classes: int) -> torch.nn.Sequential:
    """EditGAN's pixel_classifier layers for < 32 classes: Linear-ReLU-BN, Linear-ReLU-BN, Linear."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 128), torch.nn.ReLU(), torch.nn.BatchNorm1d(128),
        torch.nn.Linear(128, 32), torch.nn.ReLU(), torch.nn.BatchNorm1d(32),
        torch.nn.Linear(32, num_classes))


def train_segmenter(g, members: int = NUM_CLASSIFIERS, epochs: int = 8, batch: int = 2048, seed: int = 0):
    """DatasetGAN: SEG_SAMPLES labelled samples, `members` pixel classifiers with different seeds.
    Returns a Segmenter (eval mode, the seg_head op's PixelMLPs)."""
    from .models.segmenter import Segmenter
    z = toyfaces.sample_z(SEG_SAMPLES, g.style_dim, seed=SEG_SEED)
    _, labels = toyfaces.render(z, g.resolution)
    _, features = generator_features(g, z)
    x = pixel_stack(features, g.resolution)
    y = labels.reshape(-1)
    # The small parts (eyes, pupils, mouth: ~1% of the pixels each) are what edits target; weighting them up as
    # in the generator's loss keeps the classifiers from trading them for the large classes.
    class_weight = torch.tensor([CLASS_WEIGHTS[c] for c in range(len(toyfaces.CLASSES))])
    ensemble = []
    for i in range(members):
        torch.manual_seed(seed + i)
        net = pixel_classifier(x.shape[1], len(toyfaces.CLASSES))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for epoch in range(epochs):
            order = torch.randperm(x.shape[0])
            for start in range(0, x.shape[0], batch):
                idx = order[start:start + batch]
                loss = F.cross_entropy(net(x[idx]), y[idx], weight=class_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        print(f"classifier {i}: last batch loss {loss.item():.4f}", flush=True)
        ensemble.append(as_pixel_mlp(net))
    return Segmenter(ensemble, g.resolution)


def as_pixel_mlp(l: torch.nn.Sequential) -> PixelMLP:
    d = lambda t: t.detach().clone()
    return PixelMLP(weights=(d(l[0].weight), d(l[3].weight), d(l[6].weight)),
                    biases=(d(l[0].bias), d(l[3].bias), d(l[6].bias)),
                    bn_mean=(d(l[2].running_mean), d(l[5].running_mean)),
                    bn_var=(d(l[2].running_var), d(l[5].running_var)),
                    bn_weight=(d(l[2].weight), d(l[5].weight)), bn_bias=(d(l[2].bias), d(l[5].bias)),
                    bn_eps=l[2].eps)


def mean_iou(pred, labels, num_classes=len(toyfaces.CLASSES)):
    """Mean over classes of intersection / union, pooled over all samples (classes absent everywhere skipped)."""
    ious = []
    for c in range(num_classes):
        inter = ((pred == c) & (labels == c)).sum().item()
        union = ((pred == c) | (labels == c)).sum().item()
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious)


def measure_miou(g, segmenter, n=64, seed=HELD_OUT_SEED):
    """mIoU of the segmenter against the renderer on n held-out latents."""
    z = toyfaces.sample_z(n, g.style_dim, seed=seed)
    _, labels = toyfaces.render(z, g.resolution)
    preds = []
    for chunk in z.split(16):
        _, features = generator_features(g, chunk)
        preds.append(segmenter.predict(features))
    return mean_iou(torch.cat(preds), labels)


def write_manifest(out: Path, miou: float | None = None):
    files = [GENERATOR_FILE, *CLASSIFIER_FILES]
    path = out / MANIFEST.name
    old = json.loads(path.read_text()) if path.exists() else {}
    manifest = {
        "description": "toy-face StyleGAN2 generator (rosinality format) and DatasetGAN segmenter "
                       "(EditGAN classifier format), trained by python -m editgan_fast.train",
        "classes": list(toyfaces.CLASSES),
        "arch": {k: (v if k != "channels" else {str(r): c for r, c in v.items()}) for k, v in ARCH.items()},
        "generator": GENERATOR_FILE,
        "sha256": {name: sha256(out / name) for name in files},
        "segmenter_miou": miou if miou is not None else old.get("segmenter_miou"),
        "miou_eval": {"samples": 64, "seed": HELD_OUT_SEED},
    }
    with io.atomic_write(path, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m editgan_fast.train", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("generator", "segmenter", "manifest", "all"))
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--minutes", type=float, default=45.0, help="generator training wall time")
    parser.add_argument("--steps", type=int, default=None,
                        help="train the generator for exactly this many steps (cosine schedule over them; "
                             "reproducible on any machine) instead of a wall-clock budget")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    parser.add_argument("--resume", action="store_true", help="continue from the generator in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    gpath = args.out / GENERATOR_FILE
    with training_ops():
        if args.what in ("generator", "all"):
            g = build_generator(args.seed)
            if args.resume:
                g.load_state_dict(torch.load(gpath, weights_only=True)["g_ema"])
            minutes = math.inf if args.steps else args.minutes
            g = train_generator(minutes, batch=args.batch, seed=args.seed, generator=g, log_every=200,
                                max_steps=args.steps,
                                snapshot=lambda g: save_generator(g, gpath))
            save_generator(g, gpath)
        miou = None
        if args.what in ("segmenter", "all"):
            from .models.loaders import load_generator
            g = load_generator(gpath)
            segmenter = train_segmenter(g, seed=args.seed)
            segmenter.save(args.out, CLASSIFIER_NAME)
            miou = measure_miou(g, segmenter)
            print(f"segmenter mIoU on held-out samples: {miou:.4f}")
    if args.what != "generator":
        print(json.dumps(write_manifest(args.out, miou)["sha256"], indent=2))


if __name__ == "__main__":
    main()
