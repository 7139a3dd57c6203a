"""`editgan-fast` (or `python -m editgan_fast.cli`): the editing engine on the command line.

Without --checkpoint every command uses the embedded default model (editgan_fast.default_editor()).
Bad input (a missing file, a wrong size, an unknown class id, a vector for another generator) prints one line,
`editgan-fast: error: ...`, and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from . import io
from .backend import set_backend
from .errors import BackendUnavailable, InputValueError


class UsageError(InputValueError):
    """A combination of command-line options that does not make sense."""


# ---------------------------------------------------------------------------------------------- model options
def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the embedded default model)")
    g.add_argument("--checkpoint", help="generator: rosinality .pt ({'g_ema': ...}) or StyleGAN2-ADA .pkl")
    g.add_argument("--segmenter", nargs="+", metavar="PATH",
                   help="EditGAN pixel-classifier files (model_*.pth), or a directory of them")
    g.add_argument("--crop", nargs=4, type=int, metavar=("Y0", "Y1", "X0", "X1"),
                   help="segmenter output crop, e.g. 64 448 0 512 for EditGAN's car model")
    g.add_argument("--encoder", help="EditGAN encoder checkpoint ({'model_state_dict': ...})")
    g.add_argument("--lpips", nargs=2, metavar=("VGG", "LIN"),
                   help="LPIPS weights: torchvision VGG16 state dict and lpips' v0.1 vgg.pth (else MSE only)")
    g.add_argument("--backend", default="auto", choices=("auto", "reference", "cpu", "triton", "cuda"))
    g.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    g.add_argument("--dtype", default="fp32", choices=tuple(_DTYPES),
                   help="compute precision of the fast backends: fp32, or bf16 (bf16 storage, fp32 accumulation)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _device(name: str) -> torch.device:
    """--device checked before anything moves there: a CUDA device needs a torch with CUDA and a visible GPU."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise BackendUnavailable(f"--device {name}: {why} (torch {torch.__version__}); use --device cpu")
    return device


def _configure(args) -> torch.device:
    """--backend and --dtype for the whole run; returns the checked --device."""
    device = _device(args.device)
    if args.backend != "auto" or args.dtype != "fp32":
        set_backend(args.backend, dtype=_DTYPES[args.dtype])
    return device


def build_editor(args):
    from .editor import Editor, default_editor
    device = _configure(args)
    progress = not args.quiet
    if args.checkpoint is None:
        if args.segmenter or args.encoder:
            raise UsageError("--segmenter/--encoder need the --checkpoint of the generator they belong to")
        return default_editor(progress=progress, lpips=_load_lpips(args.lpips).to(device) if args.lpips else None,
                              device=device)
    from .models.loaders import load_generator
    from .models.segmenter import load_segmenter
    if not args.segmenter:
        raise UsageError("--checkpoint needs --segmenter (the pixel classifiers trained for that generator)")
    generator = load_generator(args.checkpoint).to(args.device)
    segmenter = load_segmenter(args.segmenter if len(args.segmenter) > 1 else args.segmenter[0], generator,
                               crop=args.crop).to(args.device)
    encoder = None
    if args.encoder:
        from .models.encoder import load_encoder
        encoder = load_encoder(args.encoder, generator).to(args.device)
    lpips = _load_lpips(args.lpips).to(args.device) if args.lpips else None
    return Editor(generator, segmenter, encoder=encoder, lpips=lpips, progress=progress)


def _load_lpips(paths):
    from .models.lpips import LPIPS
    return LPIPS.from_files(*paths)


def _latent(editor, args):
    if getattr(args, "latent", None):
        return editor.latent(io.load_latent(args.latent, editor.generator.num_ws, editor.generator.style_dim))
    return editor.sample(args.seed, truncation=args.truncation)


def _add_latent_options(p):
    p.add_argument("--latent", help="w+ latent .npy (from generate/embed/refine); else --seed")
    p.add_argument("--seed", type=int, default=0, help="sample the latent from this seed (default 0)")
    p.add_argument("--truncation", type=float, default=0.7)


def _load_vector(editor, path, classes):
    from .editor import EditVector
    if Path(path).suffix == ".npy":  # EditGAN's own format: no metadata, the user says which classes
        return EditVector.from_editgan_npy(path, editor.generator, classes=classes or ())
    return EditVector.load(path, editor.generator)


def _vectors_and_scales(editor, args, batch_ok: bool) -> dict:
    vectors = [_load_vector(editor, p, args.classes) for p in args.vector]
    scales = args.scales or ["1"]
    if len(scales) not in (1, len(vectors)):
        raise UsageError(f"give one --scales list for all vectors or one per vector ({len(vectors)}), "
                         f"got {len(scales)}")
    scales = scales * len(vectors) if len(scales) == 1 else scales
    parsed = []
    for s in scales:
        try:
            values = [float(v) for v in s.split(",")]
        except ValueError:
            raise UsageError(f"--scales takes comma-separated numbers, got {s!r}") from None
        if len(values) > 1 and not batch_ok:
            raise UsageError("this command takes one scale per vector")
        parsed.append(values if len(values) > 1 else values[0])
    return dict(zip(vectors, parsed))


# ---------------------------------------------------------------------------------------------- commands
def cmd_generate(args):
    editor = build_editor(args)
    latent = editor.sample(args.seed, truncation=args.truncation)
    result = editor.render(latent)
    out = {"image": str(io.save_image(args.out, result.image))}
    if args.latent_out:
        out["latent"] = str(io.save_latent(args.latent_out, latent.wplus))
    if args.labels_out:
        out["labels"] = str(io.save_labels(args.labels_out, result.labels))
    return out


def cmd_segment(args):
    editor = build_editor(args)
    labels, _ = editor.segment(_latent(editor, args))
    counts = torch.bincount(labels.flatten(), minlength=editor.num_classes)
    return {"labels": str(io.save_labels(args.out, labels)),
            "class_pixels": {str(c): int(n) for c, n in enumerate(counts) if n}}


def cmd_embed(args):
    editor = build_editor(args)
    losses = []
    latent = editor.embed(args.image, steps=args.steps, callback=lambda step, terms, image: losses.append(terms))
    out = {"latent": str(io.save_latent(args.out, latent.wplus)), "final_loss": losses[-1] if losses else None}
    if args.image_out:
        out["image"] = str(io.save_image(args.image_out, editor.render(latent).image))
    return out


def cmd_learn(args):
    editor = build_editor(args)
    latent = _latent(editor, args)
    edited = io.load_labels(args.labels, editor.num_classes, editor.segmenter.label_size)
    history = []
    vector = editor.learn_vector(latent, edited, steps=args.steps, classes=args.classes, region=args.region,
                                 name=args.name, callback=lambda step, terms, image: history.append(terms))
    vector.save(args.out)
    return {"vector": args.out, "name": vector.name, "classes": list(vector.classes),
            "first_loss": history[0], "last_loss": history[-1]}


def cmd_apply(args):
    editor = build_editor(args)
    latent = _latent(editor, args)
    vectors = _vectors_and_scales(editor, args, batch_ok=True)
    result = editor.apply(latent, vectors)
    images = result.image if result.image.ndim == 4 else result.image[None]
    labels = result.labels if result.labels.ndim == 3 else result.labels[None]
    out = {"image": str(io.save_image(args.out, io.image_grid(images, images.shape[0]))), "count": images.shape[0]}
    if args.labels_out:
        grid = io.image_grid(labels[:, None].float(), labels.shape[0])[0].long()
        out["labels"] = str(io.save_labels(args.labels_out, grid))
    return out


def cmd_refine(args):
    editor = build_editor(args)
    latent = _latent(editor, args)
    vectors = _vectors_and_scales(editor, args, batch_ok=False)
    history = []
    refined = editor.refine(latent, vectors, steps=args.steps,
                            callback=lambda step, terms, image: history.append(terms))
    out = {"latent": str(io.save_latent(args.out, refined.wplus)), "first_loss": history[0],
           "last_loss": history[-1]}
    if args.image_out:
        out["image"] = str(io.save_image(args.image_out, editor.render(refined).image))
    return out


def cmd_bench(args):
    from .editor.demo import latency_table
    editor = build_editor(args)
    rows = latency_table(editor, repeats=args.repeats)
    return {"latency_ms": rows}


def cmd_demo(args):
    from .editor.demo import run_demo
    if args.checkpoint is not None:
        raise UsageError("demo runs on the embedded default model; use the other commands with --checkpoint")
    device = _configure(args)
    return run_demo(Path(args.out), steps=args.steps, refine_steps=args.refine_steps, repeats=args.repeats,
                    progress=not args.quiet, device=device)


def cmd_info(args):
    """Version, torch/triton versions, the backend `auto` picks per device, CPU features, branches that run."""
    from . import __version__, backend
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = {"version": __version__, "torch": torch.__version__, "triton": triton_version,
           "cuda_available": torch.cuda.is_available(),
           "auto_backend": {d: backend.backend_name_for(torch.empty(0, device=d)) for d in devices},
           "unavailable": {n: backend.unavailable_reason(n) for n in backend.BACKENDS[1:]
                           if not backend.available(n)}}
    if backend.available("cpu"):
        from .ops import _cpu_isa
        out["cpu_backend"] = _cpu_isa.describe()
    return out


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="editgan-fast", description="EditGAN-style semantic image editing")
    parser.add_argument("--version", action="version", version=f"editgan-fast {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        _add_model_options(p)
        p.set_defaults(fn=fn)
        return p

    p = command("demo", cmd_demo, "the whole loop on the embedded model, written to --out")
    p.add_argument("--out", default="out")
    p.add_argument("--steps", type=int, default=40, help="optimization steps to learn the vector")
    p.add_argument("--refine-steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per stage of the latency table")

    p = command("generate", cmd_generate, "sample an image (and its latent and labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--out", required=True, help="image file (.png)")
    p.add_argument("--latent-out", help="save the w+ latent (.npy)")
    p.add_argument("--labels-out", help="save the label map (palette .png)")

    p = command("segment", cmd_segment, "segment a latent into a label map (palette PNG)")
    _add_latent_options(p)
    p.add_argument("--out", required=True, help="label map (.png)")

    p = command("embed", cmd_embed, "project a real image into w+")
    p.add_argument("image")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", required=True, help="latent (.npy)")
    p.add_argument("--image-out", help="save the reconstruction")

    p = command("learn", cmd_learn, "learn an editing vector from an edited label map")
    _add_latent_options(p)
    p.add_argument("--labels", required=True, help="the edited label map (palette/gray/RGB-palette PNG)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--region", choices=("changed", "classes"), default="changed")
    p.add_argument("--classes", type=int, nargs="+", help="edited class ids (default: the ones painted)")
    p.add_argument("--name", default="edit")
    p.add_argument("--out", required=True, help="vector file (.npz)")

    for name, fn, help_ in (("apply", cmd_apply, "apply editing vectors (several scales: one batch)"),
                            ("refine", cmd_refine, "apply vectors, then refine the latent")):
        p = command(name, fn, help_)
        _add_latent_options(p)
        p.add_argument("--vector", action="append", required=True,
                       help="vector file (.npz, or EditGAN's .npy); repeat for several")
        p.add_argument("--scales", action="append",
                       help="comma-separated scales, once for all vectors or once per vector (default 1)")
        p.add_argument("--classes", type=int, nargs="+", help="classes of an EditGAN .npy vector")
        p.add_argument("--out", required=True, help="image (.png)" if name == "apply" else "latent (.npy)")
        if name == "apply":
            p.add_argument("--labels-out", help="label maps (palette .png)")
        else:
            p.add_argument("--steps", type=int, default=30)
            p.add_argument("--image-out", help="save the refined image")

    p = command("bench", cmd_bench, "latency per stage (median of --repeats runs)")
    p.add_argument("--repeats", type=int, default=5)

    p = sub.add_parser("info", help="versions, backends auto picks, CPU features and the branches that run")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_info)
    return parser


def _print_human(result: dict) -> None:
    for key, value in result.items():
        if key == "latency_ms":
            from .editor.demo import format_table
            print(format_table(value))
        elif isinstance(value, dict) and key != "latency_ms":  # e.g. info's sections: one line per entry
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if args.quiet else "default")
            result = args.fn(args)
    except (ValueError, FileNotFoundError, OSError, KeyError, BackendUnavailable) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"editgan-fast: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
