"""Edit-quality benchmark on the bundled toy-face model (in the spirit of EditGAN's smile benchmark).

    python bench/edit_quality.py                 # 100 held-out samples, 0/10/30 refinement steps
    python bench/edit_quality.py --reduced       # a few samples and steps (CI)

For each programmatic mask edit (enlarge the mouth, shrink the pupils, shorten the hair) an editing vector is
learned on 2 training samples (averaged), then applied at scale 1 to held-out samples, with 0, 10 and 30 steps
of refinement. Per edit and setting it reports:
- success: the targeted part's area changes in the intended direction by at least SUCCESS_CHANGE, both in the
  segmenter's predicted label map and in the renderer's ground truth (pixels closest to the part's colour,
  which the renderer knows for each sample; the toy faces are flat-coloured), measured against the unedited
  image of the same sample;
- PSNR of the edited image against the original outside the edited region (the pixels whose predicted label
  changed or that belong to the edited classes, dilated by 2 px), in dB on images scaled to [0, 1];
and, once, the segmenter's mIoU against the renderer on the held-out samples.
A grid image (per edit a row; per sample the original, the edited image, their label maps) goes to
out/edit_quality.png, and the renderer's faces above the generator's for the same latents to
out/generator_vs_renderer.png.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from editgan_fast import toyfaces
from editgan_fast.train import mean_iou

SUCCESS_CHANGE = 0.10   # relative change of the target part's area that counts as an edit
TRAIN_SEED = 3000       # latents the vectors are learned on
HELD_OUT_SEED = 4000    # latents the vectors are applied to (disjoint from the segmenter's and the tests')


def _dilate(mask, radius):
    """bool [N, H, W] -> dilated with a (2r+1)^2 square."""
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def _erode(mask, radius):
    return ~_dilate(~mask, radius)


def enlarge_mouth(labels):
    """The mouth grows by 2 px into the surrounding skin."""
    grown = _dilate(labels == toyfaces.MOUTH, 2) & (labels == toyfaces.SKIN)
    return labels.masked_fill(grown, toyfaces.MOUTH)


def shrink_pupils(labels):
    """The pupils' outer ring (1 px) becomes eye white."""
    pupil = labels == toyfaces.PUPIL
    return labels.masked_fill(pupil & ~_erode(pupil, 1), toyfaces.EYE_WHITE)


def shorten_hair(labels):
    """Hair below the eyes (outside the face) becomes background."""
    rows = torch.arange(labels.shape[-2])[None, :, None]
    eyes = (labels == toyfaces.EYE_WHITE) | (labels == toyfaces.PUPIL)
    eye_row = torch.stack([r.nonzero()[:, 0].float().mean() if r.any() else torch.tensor(labels.shape[-2] / 2.)
                           for r in eyes]).round().long()[:, None, None]
    cut = (labels == toyfaces.HAIR) & (rows > eye_row)
    return labels.masked_fill(cut, toyfaces.BACKGROUND)


@dataclass(frozen=True)
class MaskEdit:
    name: str
    paint: object        # labels [N, H, W] -> edited labels
    target: int          # the class whose area the edit changes
    direction: int       # +1 grow, -1 shrink


EDITS = (MaskEdit("enlarge_mouth", enlarge_mouth, toyfaces.MOUTH, +1),
         MaskEdit("shrink_pupils", shrink_pupils, toyfaces.PUPIL, -1),
         MaskEdit("shorten_hair", shorten_hair, toyfaces.HAIR, -1))


def area(labels, cls):
    return (labels == cls).flatten(1).sum(1).float()


def colour_labels(image, colours):
    """Ground-truth reading of a (generated) image: each pixel's nearest class colour of its sample."""
    d = (image.permute(0, 2, 3, 1)[:, :, :, None, :] - colours[:, None, None].to(image.dtype)).square().sum(-1)
    return d.argmin(-1)


def changed(before, after, direction):
    """bool [N]: the area moved in `direction` by at least SUCCESS_CHANGE (relative)."""
    rel = (after - before) / before.clamp(min=1)
    return rel * direction >= SUCCESS_CHANGE


def psnr_outside(a, b, region):
    """PSNR (dB, images mapped to [0, 1]) over pixels outside `region` [N, H, W], per sample."""
    keep = (~region)[:, None].float()
    mse = (((a - b) / 2).square() * keep).sum([1, 2, 3]) / (keep.sum([1, 2, 3]) * a.shape[1]).clamp(min=1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def learn_vectors(editor, learn_steps, train_samples=2, candidates=16):
    """One vector per edit: the mean of the vectors learned on the first `train_samples` training latents
    whose predicted label map the edit changes by at least 8 pixels (short hair cannot be shortened)."""
    from editgan_fast.editor import EditVector
    g = editor.generator
    z = toyfaces.sample_z(candidates, g.style_dim, seed=TRAIN_SEED)
    vectors = {}
    for edit in EDITS:
        learned = []
        for zi in z:
            latent = editor.sample(zi, truncation=1.0)
            labels, _ = editor.segment(latent)
            edited = edit.paint(labels[None])[0]
            if (edited != labels).sum() < 8:
                continue
            learned.append(editor.learn_vector(latent, edited, steps=learn_steps, name=edit.name))
            if len(learned) == train_samples:
                break
        if not learned:
            raise RuntimeError(f"no training sample of {candidates} allows the edit {edit.name}")
        classes = sorted({c for v in learned for c in v.classes})
        delta = torch.stack([v.delta for v in learned]).mean(0)
        vectors[edit.name] = EditVector(delta, classes, edit.name, editor.fingerprint)
    return vectors


def run(editor, samples=100, refine_steps=(0, 10, 30), learn_steps=100, out=Path("out"), grid_samples=3,
        train_samples=2):
    """The benchmark; returns {"miou": float, "edits": {name: {steps: {"success", "success_pred",
    "success_truth", "psnr"}}}} and writes out/edit_quality.{json,png} and out/generator_vs_renderer.png."""
    from editgan_fast import io
    g = editor.generator
    z = toyfaces.sample_z(samples, g.style_dim, seed=HELD_OUT_SEED)
    _, truth = toyfaces.render(z, g.resolution)
    colours = toyfaces.class_colours(toyfaces.face_params(z)).float()
    latents = [editor.sample(zi, truncation=1.0) for zi in z]
    originals = [editor.render(latent) for latent in latents]
    image0 = torch.stack([r.image for r in originals])
    labels0 = torch.stack([r.labels for r in originals])
    report = {"samples": samples, "miou": mean_iou(labels0, truth), "edits": {}}
    vectors = learn_vectors(editor, learn_steps, train_samples)
    palette = torch.tensor(io.PALETTE, dtype=torch.float32) / 127.5 - 1
    grid_rows = []
    for edit in EDITS:
        vector = vectors[edit.name]
        per_setting = {}
        for steps in refine_steps:
            results = []
            for latent in latents:
                if steps == 0:
                    results.append(editor.apply(latent, {vector: 1.0}))
                else:
                    results.append(editor.render(editor.refine(latent, {vector: 1.0}, steps=steps)))
            image1 = torch.stack([r.image for r in results])
            labels1 = torch.stack([r.labels for r in results])
            ok_pred = changed(area(labels0, edit.target), area(labels1, edit.target), edit.direction)
            truth0, truth1 = colour_labels(image0, colours), colour_labels(image1, colours)
            ok_truth = changed(area(truth0, edit.target), area(truth1, edit.target), edit.direction)
            classes = torch.tensor(vector.classes, dtype=torch.int64)
            region = (labels0 != labels1) | torch.isin(labels0, classes) | torch.isin(labels1, classes)
            psnr = psnr_outside(image0, image1, _dilate(region, 2))
            per_setting[steps] = {"success": (ok_pred & ok_truth).float().mean().item(),
                                  "success_pred": ok_pred.float().mean().item(),
                                  "success_truth": ok_truth.float().mean().item(),
                                  "psnr": psnr.mean().item()}
        report["edits"][edit.name] = per_setting
        k = min(grid_samples, samples)
        for i in range(k):  # original | edited (most refined) | their label maps
            grid_rows += [image0[i], image1[i], palette[labels0[i]].permute(2, 0, 1),
                          palette[labels1[i]].permute(2, 0, 1)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _save_grid(torch.stack(grid_rows), 4 * min(grid_samples, samples), out / "edit_quality.png")
    k = min(8, samples)  # how close the generator comes to the renderer: truth above, generated below
    real, _ = toyfaces.render(z[:k], g.resolution)
    _save_grid(torch.cat([real, image0[:k]]), k, out / "generator_vs_renderer.png")
    (out / "edit_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _save_grid(images, columns, path):
    from editgan_fast import io
    grid = io.image_grid(images, columns=columns)
    io.tensor_to_pil(grid).resize((grid.shape[2] * 2, grid.shape[1] * 2), 0).save(path)


def format_report(report) -> str:
    lines = [f"segmenter mIoU vs renderer ({report['samples']} held-out samples): {report['miou']:.3f}",
             f"{'edit':<16}{'refine':>7}{'success':>9}{'(pred':>7}{'truth)':>8}{'PSNR out':>10}"]
    for name, settings in report["edits"].items():
        for steps, r in settings.items():
            lines.append(f"{name:<16}{steps:>7}{r['success']:>9.2f}{r['success_pred']:>7.2f}"
                         f"{r['success_truth']:>8.2f}{r['psnr']:>9.1f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reduced", action="store_true", help="a few samples and steps (CI)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--learn-steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args(argv)
    from editgan_fast.assets import bundled_editor
    editor = bundled_editor(progress=False)
    if args.reduced:
        report = run(editor, samples=2, refine_steps=(0, 2), learn_steps=5, out=args.out, train_samples=1)
    else:
        report = run(editor, samples=args.samples, learn_steps=args.learn_steps, out=args.out)
    print(format_report(report))
    print(f"grid: {args.out / 'edit_quality.png'}")


if __name__ == "__main__":
    main()
