"""Error of the cpu backend's bf16 mode against its fp32 mode: image PSNR and label agreement (README table).

    python bench/bf16_error.py [--samples N] [--skip-car] [--products auto|native|fp32]

- bundled: the embedded 64 px faces model, N samples (seeds 0..N-1) rendered and segmented in both modes;
- car: EditGAN's car configuration (512 px config-f generator, 10-member head over the 384x512 crop, 32
  classes; random weights as in bench/cases_pipeline.py), one sample.
PSNR is over images in [-1, 1] (peak-to-peak 2); label agreement is the fraction of pixels whose argmax class is
the same in both modes. The bf16 products branch is the one EDITGAN_FAST_BF16_PRODUCTS / --products selects.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

import editgan_fast
from editgan_fast.editor import default_editor
from editgan_fast.editor import Editor
from editgan_fast.ops import _cpu_isa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _render(editor, latents, dtype):
    with torch.no_grad(), editgan_fast.use_backend("cpu", dtype=dtype):
        results = [editor.render(editor.latent(w)) for w in latents]
    return torch.stack([r.image.float() for r in results]), torch.stack([r.labels for r in results])


def compare(editor, latents):
    """(PSNR dB, label agreement) of the bf16 mode against the fp32 mode."""
    img32, lab32 = _render(editor, latents, None)
    img16, lab16 = _render(editor, latents, torch.bfloat16)
    mse = (img16 - img32).square().mean().item()
    psnr = math.inf if mse == 0 else 10 * math.log10(4.0 / mse)
    return psnr, (lab16 == lab32).float().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--skip-car", action="store_true")
    p.add_argument("--products", default=None, choices=_cpu_isa.BF16_PRODUCTS)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    editgan_fast.backend.available("cpu")  # loads the cpu backend and its switches
    if args.products:
        _cpu_isa.set_bf16_products(args.products)
    print(f"bf16 products: {_cpu_isa.bf16_products()}; cpu: {_cpu_isa.cpu_model()}")
    editor = default_editor(progress=False)
    latents = [editor.sample(seed).wplus for seed in range(args.samples)]
    psnr, agree = compare(editor, latents)
    print(f"| bundled 64 px model, {args.samples} samples | {psnr:.1f} dB | {100 * agree:.2f} % |")
    if not args.skip_car:
        from cases_pipeline import _latent, generator, segmenter
        car = Editor(generator(), segmenter(), progress=False)
        psnr, agree = compare(car, [_latent(car.generator)])
        print(f"| car configuration (512 px, 10 members, 32 classes), 1 sample | {psnr:.1f} dB | {100 * agree:.2f} % |")


if __name__ == "__main__":
    main()
