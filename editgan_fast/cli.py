"""`editgan-fast` (or `python -m editgan_fast.cli`): the editing engine on the command line.

Without --checkpoint every command uses the bundled trained model (--random-model: the untrained random one).
Every error (bad input: a missing or corrupt file, a wrong size, an unknown class id, a vector for another
generator, a limit exceeded; and any unexpected exception, naming the file being read) prints one line,
`editgan-fast: error: ...`, and exits with status 2. Ctrl-C exits with 130, after saving the best result so far
of an optimizing command (embed, learn, refine) to its --out.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

from . import io
from .backend import set_backend
from .errors import EditGANFastError, FileFormatError, InputValueError, OptimizationInterrupted


class UsageError(InputValueError):
    """A combination of command-line options that does not make sense."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the command saved what it had (the message says where)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are the CLI's one line and status 2, like every other error."""

    def error(self, message):
        command = self.prog.removeprefix("editgan-fast").strip()
        print(f"editgan-fast: error: {command + ': ' if command else ''}{message}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def _reading(path, what: str):
    """Turn an unexpected exception while reading `path` into a FileFormatError naming the file."""
    try:
        yield
    except EditGANFastError:
        raise
    except Exception as e:
        raise FileFormatError(f"{what} {path}: {type(e).__name__}: {e}") from e


def _device(spec: str) -> torch.device:
    """--device, checked before any model is built: a torch device this machine has."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {spec!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec}: only cpu and cuda devices are supported")
    return device


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
    g.add_argument("--random-model", action="store_true",
                   help="use the untrained random default model instead of the bundled trained one")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars, and warnings only")
    p.add_argument("--progress", action="store_true",
                   help="progress bars even when stderr is not a terminal (a log file, a pipe)")


def _progress(args) -> bool | None:
    """False (--quiet), True (--progress), or None: bars only when stderr is a terminal (editor.progress.enabled)."""
    return False if args.quiet else (True if args.progress else None)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (it may be replaced after the handler is made)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("editgan-fast: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _configure_logging(quiet: bool) -> None:
    """The package's messages (logger "editgan_fast") as `editgan-fast: ...` lines on stderr."""
    logger = logging.getLogger("editgan_fast")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _configure(args) -> torch.device:
    """--backend and --dtype for the whole run; returns the checked --device."""
    device = _device(args.device)
    if args.backend != "auto" or args.dtype != "fp32":
        set_backend(args.backend, dtype=_DTYPES[args.dtype])
    return device


def build_editor(args):
    from .editor import Editor, default_editor
    device = _configure(args)
    progress = _progress(args)
    if args.checkpoint is None:
        if args.segmenter or args.encoder:
            raise UsageError("--segmenter/--encoder need the --checkpoint of the generator they belong to")
        return default_editor(trained=not args.random_model, progress=progress,
                              lpips=_load_lpips(args.lpips).to(device) if args.lpips else None, device=device)
    from .models.loaders import load_generator
    from .models.segmenter import load_segmenter
    if not args.segmenter:
        raise UsageError("--checkpoint needs --segmenter (the pixel classifiers trained for that generator)")
    if args.random_model:
        raise UsageError("--random-model and --checkpoint exclude each other")
    with _reading(args.checkpoint, "generator checkpoint"):
        generator = load_generator(args.checkpoint).to(device)
    with _reading(" ".join(args.segmenter), "segmenter"):
        segmenter = load_segmenter(args.segmenter if len(args.segmenter) > 1 else args.segmenter[0], generator,
                                   crop=args.crop).to(device)
    encoder = None
    if args.encoder:
        from .models.encoder import load_encoder
        with _reading(args.encoder, "encoder file"):
            encoder = load_encoder(args.encoder, generator).to(device)
    lpips = _load_lpips(args.lpips).to(device) if args.lpips else None
    return Editor(generator, segmenter, encoder=encoder, lpips=lpips, progress=progress)


def _load_lpips(paths):
    from .models.lpips import LPIPS
    with _reading(" ".join(paths), "LPIPS files"):
        return LPIPS.from_files(*paths)


def _sample(editor, args):
    from .editor.seeds import DEFAULT_TRUNCATION, seed_z
    truncation = DEFAULT_TRUNCATION[args.seed_style] if args.truncation is None else args.truncation
    return editor.sample(seed_z(args.seed, editor.generator.style_dim, args.seed_style), truncation=truncation)


def _latent(editor, args):
    if getattr(args, "latent", None):
        with _reading(args.latent, "latent file"):
            wplus = io.load_latent(args.latent, editor.generator.num_ws, editor.generator.style_dim)
        return editor.latent(wplus)
    return _sample(editor, args)


def _add_seed_options(p):
    from .editor.seeds import STYLES
    p.add_argument("--seed", type=int, default=0, help="sample the latent from this seed (default 0)")
    p.add_argument("--seed-style", choices=STYLES, default="torch",
                   help="how a seed becomes z: torch (ours) or ada (stylegan2-ada's generate.py: "
                        "np.random.RandomState(seed).randn(1, z_dim), truncation 1.0 unless given)")
    p.add_argument("--truncation", type=float, help="truncation psi (default 0.7; 1.0 with --seed-style ada)")


def _add_latent_options(p):
    p.add_argument("--latent", help="w+ latent: .npy (ours, EditGAN's) or stylegan2-ada's projected_w.npz; "
                                    "else --seed")
    _add_seed_options(p)


def _load_vector(editor, path, classes):
    from .editor import EditVector
    with _reading(path, "vector file"):
        if Path(path).suffix == ".npy":  # EditGAN's own format: no metadata, the user says which classes
            return EditVector.from_editgan_npy(path, editor.generator, classes=classes or ())
        return EditVector.load(path, editor.generator)


@contextlib.contextmanager
def _saving_best_on_interrupt(save, out):
    """Ctrl-C during an optimization: save its best w+ so far with `save(best)`, then exit 130."""
    try:
        yield
    except OptimizationInterrupted as e:
        save(e.best.cpu())
        raise Interrupted(f"interrupted at step {e.step}; the best result so far is saved in {out}") from None


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
    latent = _sample(editor, args)
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
    with _reading(args.image, "image"):
        image = io.image_to_tensor(args.image)
    with _saving_best_on_interrupt(lambda best: io.save_latent(args.out, best), args.out):
        latent = editor.embed(image, steps=args.steps, callback=lambda step, terms, image: losses.append(terms))
    out = {"latent": str(io.save_latent(args.out, latent.wplus)), "final_loss": losses[-1] if losses else None}
    if args.image_out:
        out["image"] = str(io.save_image(args.image_out, editor.render(latent).image))
    return out


def cmd_learn(args):
    editor = build_editor(args)
    latent = _latent(editor, args)
    with _reading(args.labels, "label map"):
        edited = io.load_labels(args.labels, editor.num_classes, editor.segmenter.label_size)
    history = []

    def save(best):
        from .editor import EditVector
        from .editor.losses import edited_classes
        classes = args.classes or edited_classes(editor.segment(latent)[0].cpu(), edited)
        EditVector(best - latent.wplus, classes, args.name, editor.fingerprint).save(args.out)
    with _saving_best_on_interrupt(save, args.out):
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
    with _saving_best_on_interrupt(lambda best: io.save_latent(args.out, best), args.out):
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
                    progress=_progress(args), device=device)


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


def cmd_serve(args):
    if args.ray is not None:
        return _serve_on_ray(args)
    import uvicorn
    from .serve import create_app
    editor = build_editor(args)
    editor.progress = False  # jobs report progress through the API, not on the server's stderr
    app = create_app(editor, library_dir=args.library, class_names=_bundled_class_names(args))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio",
                ws_max_size=app.state.service.limits.max_ws_message_bytes)
    return {}


def _bundled_class_names(args):
    """The bundled model's class names (for the page's brushes), or None with other weights."""
    from . import assets
    return assets.manifest()["classes"] if args.checkpoint is None and assets.available() else None


def _add_serve_parser(command) -> None:
    p = command("serve", cmd_serve, "the editing service and its page (http://HOST:PORT/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--library", default="editgan-vectors", help="directory of the vector library (created)")
    _add_serve_ray_options(p)


def _add_serve_ray_options(p) -> None:
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="deploy on Ray Serve: a new local Ray, or the cluster at ADDRESS (auto, ray://head:10001)")
    p.add_argument("--replicas", type=int, default=1,
                   help="with --ray: model-holding replicas (sessions live in a replica: >1 needs session affinity)")
    p.add_argument("--gpus-per-replica", type=float, default=0)


def _serve_on_ray(args):
    import threading
    from .serve import ray_serve
    url = ray_serve.run(functools.partial(build_editor, args), host=args.host, port=args.port,
                        address=None if args.ray == "local" else args.ray, num_replicas=args.replicas,
                        num_gpus=args.gpus_per_replica,
                        app_options={"library_dir": args.library, "class_names": _bundled_class_names(args)})
    print(f"editgan-fast: serving {url} on Ray Serve (Ctrl-C stops)", file=sys.stderr)
    threading.Event().wait()


def cmd_batch(args):
    from . import batch
    items = (batch.seed_items(args.seeds) if args.seeds is not None else
             batch.latent_items(args.latents) if args.latents is not None else batch.photo_items(args.photos))
    scales = []
    for text in args.scales or ["1"]:
        try:
            scales.append([float(v) for v in text.split(",")])
        except ValueError:
            raise UsageError(f"--scales takes comma-separated numbers, got {text!r}") from None
    job = batch.BatchJob.create(items, args.vectors, scales, shard_size=args.shard_size,
                                batch_size=args.batch_size, embed_steps=args.embed_steps,
                                truncation=args.truncation, format=args.format)
    if args.ray is None and (args.actors or args.gpus_per_actor):
        raise UsageError("--actors and --gpus-per-actor need --ray")
    from .editor.progress import enabled
    if args.ray is not None:
        from .batch.on_ray import run_ray
        return run_ray(functools.partial(build_editor, args), job, args.out,
                       address=None if args.ray == "local" else args.ray, actors=args.actors,
                       num_gpus=args.gpus_per_actor, progress=enabled(_progress(args)))
    return batch.run_local(build_editor(args), job, args.out, progress=enabled(_progress(args)))


def _add_batch_command(command) -> None:
    p = command("batch", cmd_batch, "edit many latents with a vector library into resumable WebDataset shards")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--seeds", help="seed ranges, e.g. 0-999 or 0-9,20")
    source.add_argument("--latents", help="folder of w+ latents (.npy / .npz)")
    source.add_argument("--photos", help="folder of images, embedded first (--embed-steps)")
    p.add_argument("--vectors", required=True, help="vector library (.npz, one or many vectors)")
    p.add_argument("--scales", action="append",
                   help="comma-separated scales: once (each vector alone at each scale) or once per vector "
                        "(the grid of all combinations); default 1")
    p.add_argument("--out", required=True, help="output folder (shards + manifest.json); a rerun resumes")
    p.add_argument("--format", choices=("webdataset", "parquet"), default="webdataset",
                   help="shard files: WebDataset tars, or Parquet with PNG bytes columns (needs pyarrow)")
    p.add_argument("--shard-size", type=int, default=64, help="items per shard (each with all its settings)")
    p.add_argument("--batch-size", type=int, default=8, help="latents per synthesis (each with all settings)")
    p.add_argument("--embed-steps", type=int, default=100)
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run as a Ray Data pipeline: on a new local Ray instance, or on the cluster at ADDRESS "
                        "(e.g. auto or ray://head:10001)")
    p.add_argument("--actors", type=int, help="with --ray: concurrent model-holding workers (default: one per "
                                                 "CPU/GPU, at most one per shard)")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="with --ray: GPUs per worker (e.g. 1 or 0.5)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="editgan-fast", description="EditGAN-style semantic image editing")
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
    _add_seed_options(p)
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
    p.add_argument("--out", required=True, help="vector file (.safetensors, or .npz)")

    for name, fn, help_ in (("apply", cmd_apply, "apply editing vectors (several scales: one batch)"),
                            ("refine", cmd_refine, "apply vectors, then refine the latent")):
        p = command(name, fn, help_)
        _add_latent_options(p)
        p.add_argument("--vector", action="append", required=True,
                       help="vector file (.safetensors, .npz, or EditGAN's .npy); repeat for several")
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

    _add_serve_parser(command)
    _add_batch_command(command)

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


def _error(message) -> int:
    print(f"editgan-fast: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "quiet", False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if args.quiet else "default")
            result = args.fn(args)
        # Strict JSON: a NaN or Infinity (which strict parsers reject) is an error, never printed.
        text = json.dumps(result, default=str, allow_nan=False) if args.json else None
    except KeyboardInterrupt as e:
        print(f"editgan-fast: {e if isinstance(e, Interrupted) else 'interrupted'}", file=sys.stderr)
        return 130
    except (EditGANFastError, ValueError, OSError) as e:
        return _error(e)
    except KeyError as e:
        return _error(e.args[0] if e.args else e)
    except Exception as e:  # anything else is a bug of ours: still one line, naming what went wrong
        return _error(f"internal error ({type(e).__name__}): {e}")
    if args.json:
        print(text)
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
