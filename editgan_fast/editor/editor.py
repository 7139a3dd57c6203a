"""The editing engine: sample or embed an image, segment it, learn an editing vector from an edited label
map, apply vectors at any scale in real time, refine the result.

Only latents are ever optimized: the editor works on frozen copies of the models it is given (eval mode, no
gradients, sharing the weights' storage), so the caller's modules are never switched to eval or frozen, and
`Editor.to` moves the editor's copies only.
The real-time path (`apply`): the per-layer style coefficients are affine in w+, styles(w + Σ sᵢδᵢ) =
styles(w) + Σ sᵢ styles(δᵢ, bias=False), so the editor caches styles(w) per Latent and styles(δᵢ) per vector;
a new set of scales costs a weighted sum of cached tensors and one synthesis, and a batch of scales is one batch.
On CUDA, `cuda_graphs=True` (or `use_cuda_graphs`) replays that sum and synthesis from captured CUDA graphs
(graphs.py).
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import io, limits
from ..errors import InputValueError, NonFiniteLoss, OptimizationInterrupted
from . import losses
from .progress import ProgressBar, enabled
from .seeds import seed_z
from .vectors import EditVector, wplus_matrix

log = logging.getLogger(__name__)  # under "editgan_fast", which the CLI configures
StepCallback = Callable[[int, dict, torch.Tensor], None]
LEARN_LR = 0.02          # EditGAN's editing optimizer (Adam, constant)
EMBED_PEAK_LR = 0.1      # EditGAN's embedding optimizer (Adam, cosine ramp, get_lr(t, 0.1))
EMBED_LPIPS_WEIGHT = 10.0
EMBED_MSE_WEIGHT = 1.0
EMBED_ENCODER_WEIGHT = 1.0
FINITE_CHECK_EVERY = 10  # steps between the (synchronizing) checks that the loss is still finite


class Latent:
    """A w+ latent [num_ws, style_dim] (float32, detached). Treat it as immutable: the editor caches its styles."""

    def __init__(self, wplus: torch.Tensor):
        self.wplus = wplus_matrix(wplus, "a latent w+").detach().float()

    def __repr__(self):
        return f"Latent({tuple(self.wplus.shape)})"


@dataclass
class Result:
    """image [3, H, W] in [-1, 1] and labels [h, w] (int64); with a batch of scales, [B, 3, H, W] / [B, h, w]."""
    image: torch.Tensor
    labels: torch.Tensor


def embedding_lr(t: float, peak: float = EMBED_PEAK_LR, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """EditGAN's learning-rate schedule (from StyleGAN2's projector): linear warm-up over the first 5% of the
    steps, cosine ramp-down over the last 25%."""
    ramp = min(1.0, (1 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return peak * ramp * min(1.0, t / rampup)


class Editor:
    """`Editor(generator, segmenter, encoder=None, lpips=None)`; see the module docstring.

    `progress`: draw a tqdm progress bar on stderr during optimizing calls (None, the default: only when stderr
    is a terminal; True: always).
    `noise_mode`: the generator's noise during editing ("const", the stored noise, as EditGAN).
    `learn_lr`: Adam's learning rate in `learn_vector` and `refine` (EditGAN's 0.02 for trained generators).
    `compile`: run apply's synthesis + segmentation as one torch.compile(fullgraph=True) graph, compiled at the
    first call per batch size under the backend selected then (True: inductor; or a torch.compile backend name).
    `cuda_graphs`: `apply` captures a CUDA graph per batch shape and replays it (`use_cuda_graphs`).
    """

    def __init__(self, generator, segmenter, encoder=None, lpips=None, progress: bool | None = None,
                 noise_mode: str = "const", learn_lr: float = LEARN_LR, compile: bool | str = False,
                 cuda_graphs: bool | int = False):
        dim = sum(int(c) for c in generator.feature_channels)
        if segmenter.in_features != dim:
            raise ValueError(f"the segmenter classifies {segmenter.in_features} feature channels, the generator's "
                             f"feature maps have {dim}: they do not belong together")
        self.generator = _frozen_copy(generator)
        self.segmenter = _frozen_copy(segmenter)
        self.encoder = _frozen_copy(encoder) if encoder is not None else None
        self.lpips = _frozen_copy(lpips) if lpips is not None else None
        self.progress = enabled(progress)
        self.noise_mode = noise_mode
        self.learn_lr = learn_lr
        self.fingerprint = generator.fingerprint()
        self._latent_styles = weakref.WeakKeyDictionary()   # Latent -> styles(w)
        self._vector_styles = weakref.WeakKeyDictionary()   # EditVector -> styles(δ, bias=False)
        self._cache_lock = threading.Lock()  # the caches are shared by the threads of a server
        self._warned_no_lpips = False
        self._render = self._render_chunk
        if compile:
            self._render = torch.compile(self._render_chunk, fullgraph=True,
                                         backend="inductor" if compile is True else compile)
        self.graphs = None  # the GraphedApply that `apply` goes through, when CUDA graphs are on
        if cuda_graphs:
            self.use_cuda_graphs(cuda_graphs)

    # ----------------------------------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        tensors = itertools.chain(self.generator.parameters(), self.generator.buffers())
        return next(tensors, torch.empty(0)).device

    @property
    def num_classes(self) -> int:
        return self.segmenter.num_classes

    def to(self, *args, **kwargs) -> "Editor":
        """Move or cast the editor's models (`torch.nn.Module.to`'s arguments); the cached styles are dropped.
        The modules given to the constructor stay where they are."""
        for name in ("generator", "segmenter", "encoder", "lpips"):
            module = getattr(self, name)
            if module is not None:
                setattr(self, name, module.to(*args, **kwargs))
        with self._cache_lock:
            self._latent_styles.clear()
            self._vector_styles.clear()
        if self.graphs is not None:
            self.graphs.clear()  # they read the old tensors' memory
        return self

    def use_cuda_graphs(self, capacity: bool | int = True, graph_type=None) -> "Editor":
        """From now on `apply` (and `render`) replay CUDA graphs: one captured per batch shape (number of scales,
        number of vectors), the latent, vectors and scales copied into its static buffers at each call, the
        results returned as copies; `capacity` graphs are kept (True: graphs.DEFAULT_CAPACITY), least recently
        used dropped first. False: eager again. A clear BackendUnavailable when torch has no CUDA device, and at
        the first `apply` when the editor's models are not on one (or the backend cannot be captured).
        `graph_type`: the graph implementation (graphs.CudaGraph; graphs.EagerGraph runs the same bookkeeping
        on any device). See graphs.py for what invalidates a graph."""
        from .graphs import GraphedApply  # graphs.py imports this module
        self.graphs = None if capacity is False else GraphedApply(self, capacity, graph_type)
        return self

    def latent(self, wplus) -> Latent:
        """Wrap and check a w+ tensor for this generator."""
        latent = wplus if isinstance(wplus, Latent) else Latent(_tensor(wplus, "the latent (a Latent or w+ tensor)"))
        want = (self.generator.num_ws, self.generator.style_dim)
        if tuple(latent.wplus.shape) != want:
            raise ValueError(f"this generator's latents are w+ of shape {list(want)}, got "
                             f"{list(latent.wplus.shape)}")
        return latent

    @torch.no_grad()
    def sample(self, seed_or_z, truncation: float = 0.7) -> Latent:
        """A latent from an int seed (z ~ N(0, I) from torch.Generator(seed)) or a z [style_dim] / [1, style_dim]."""
        g = self.generator
        if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not math.isfinite(truncation):
            raise InputValueError(f"truncation must be a finite number, got {truncation!r}")
        if isinstance(seed_or_z, int):
            z = seed_z(seed_or_z, g.style_dim)
        else:
            z = _tensor(seed_or_z, "seed_or_z (an int seed or a z)", torch.float32).reshape(1, -1)
            if z.shape[1] != g.style_dim or not torch.isfinite(z).all():
                raise InputValueError(f"z must have {g.style_dim} finite entries, got {z.shape[1]}"
                                      + ("" if torch.isfinite(z).all() else " with NaN or Inf"))
        w = g.truncate(g.mapping(z.to(self.device)), truncation)
        return Latent(w[:, None, :].expand(1, g.num_ws, g.style_dim)[0].cpu())

    def _wplus(self, latent: Latent) -> torch.Tensor:
        return self.latent(latent).wplus.to(self.device)

    @torch.no_grad()
    def render(self, latent: Latent) -> Result:
        """The latent's image and labels, through the same cached path as `apply`."""
        return self.apply(latent, {})

    @torch.no_grad()
    def segment(self, latent: Latent) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels [h, w] int64, mean ensemble logits [C, h, w])."""
        _, features = self.generator.synthesis(self._wplus(latent)[None], noise_mode=self.noise_mode,
                                               return_features=True)
        logits = self.segmenter.logits(features)[0].float()
        return logits.argmax(0), logits

    # ----------------------------------------------------------------------------------------- apply
    def _styles_of_latent(self, latent: Latent):
        with self._cache_lock:
            styles = self._latent_styles.get(latent)
            if styles is None:
                styles = [s.detach() for s in self.generator.styles(self._wplus(latent)[None])]
                self._latent_styles[latent] = styles
        return styles

    def _styles_of_vector(self, vector: EditVector):
        with self._cache_lock:
            styles = self._vector_styles.get(vector)
            if styles is None:
                vector.check_compatible(self.fingerprint, self.generator.num_ws, self.generator.style_dim)
                styles = [s.detach() for s in self.generator.styles(vector.delta.to(self.device)[None],
                                                                    bias=False)]
                self._vector_styles[vector] = styles
        return styles

    def _style_terms(self, latent: Latent, vectors: dict):
        """(the latent's cached styles, each vector's cached style deltas, scales [B, K] on the host, whether a
        batch was asked for): the terms `combine_styles` sums, eagerly or in a CUDA graph's static buffers."""
        if not isinstance(vectors, dict):
            raise ValueError("vectors must be a dict {EditVector: scale}")
        scales, batched = _scale_matrix(vectors)
        base = self._styles_of_latent(self.latent(latent))
        deltas = []
        for vector in vectors:
            if not isinstance(vector, EditVector):
                raise ValueError(f"vectors must be keyed by EditVector, got {type(vector).__name__}")
            deltas.append(self._styles_of_vector(vector))
        return base, deltas, scales, batched

    def _edited_styles(self, latent: Latent, vectors: dict):
        """Per-layer styles [B, C] of w+ + Σ sᵢ δᵢ from the cached terms, and whether a batch was asked for."""
        base, deltas, scales, batched = self._style_terms(latent, vectors)
        return combine_styles(base, deltas, scales.to(self.device)), batched

    def _render_styles(self, styles, labels: bool = True) -> Result:
        """Image [B, 3, H, W] (float32) and labels [B, h, w] (None if not asked for): one synthesis per
        limits.synthesis_batch rows (at most limits.scales_per_call rows in all), so a long list of scales never
        becomes one huge batch."""
        rows = styles[0].shape[0]
        limits.check("scales_per_call", rows, "results asked of one apply call")
        chunk = limits.get("synthesis_batch")
        images, label_maps = [], []
        for start in range(0, rows, chunk):
            image, label_map = self._render([s[start:start + chunk] for s in styles], labels)
            images.append(image)
            label_maps.append(label_map)
        return Result(torch.cat(images), torch.cat(label_maps) if labels else None)

    def _render_chunk(self, styles, labels: bool):
        """One synthesis (image float32) and, if asked, its segmentation: what `compile` compiles."""
        if not labels:
            return self.generator.synthesis_from_styles(styles, noise_mode=self.noise_mode).float(), None
        image, features = self.generator.synthesis_from_styles(styles, noise_mode=self.noise_mode,
                                                               return_features=True)
        return image.float(), self.segmenter.logits(features).argmax(1)

    @torch.no_grad()
    def apply(self, latent: Latent, vectors: dict) -> Result:
        """Image and labels of w+ + Σ sᵢ δᵢ. Scales are floats (one result) or equal-length sequences (a batch of
        B results, synthesized as one batch: a slider preview). With CUDA graphs on, replayed from a graph."""
        if self.graphs is not None:
            result, batched = self.graphs.apply(latent, vectors)
        else:
            styles, batched = self._edited_styles(latent, vectors)
            result = self._render_styles(styles)
        return result if batched else Result(result.image[0], result.labels[0])

    @torch.no_grad()
    def apply_many(self, items, labels: bool = True) -> Result:
        """Several edits of possibly different latents in ONE synthesis: `items` is a sequence of
        (latent, {vector: scale or [B_i] scales}); the result stacks every item's rows in order (images
        [Σ B_i, 3, H, W], labels [Σ B_i, h, w]), each row equal to what `apply` gives for it alone.
        `labels=False` skips the segmentation (labels None): an image-only preview, e.g. while a slider moves."""
        if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
            raise InputValueError(f"apply_many takes a sequence of (latent, {{vector: scale}}) pairs, got "
                                  f"{type(items).__name__}")
        items = list(items)
        if not items:
            raise ValueError("apply_many needs at least one (latent, vectors) item")
        per_item, rows = [], 0
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"apply_many: item {i} must be a (latent, {{vector: scale}}) pair")
            per_item.append(self._edited_styles(*item)[0])
            rows += per_item[-1][0].shape[0]
            limits.check("scales_per_call", rows, f"results asked of one apply_many call (by item {i})")
        return self._render_styles([torch.cat(layer) for layer in zip(*per_item)], labels)

    # ----------------------------------------------------------------------------------------- optimizing
    def _lpips_or_warn(self):
        if self.lpips is None and not self._warned_no_lpips:
            warnings.warn("no LPIPS weights loaded: the editing and embedding losses use MSE only "
                          "(pass lpips=LPIPS.from_files(vgg, lin) for EditGAN's perceptual loss)", stacklevel=3)
            self._warned_no_lpips = True
        return self.lpips

    def _optimize(self, label: str, start: torch.Tensor, objective, steps: int, lr, callback, best_key="total"):
        """Adam over w+ from `start` (lr: a number or a function of progress t in [0, 1]); returns the w+ with the
        lowest `best_key` seen, the start included (as EditGAN keeps its best latent), so the result never scores
        worse than the start.

        No host synchronization per step unless a callback or progress bar needs the terms as floats: the best
        w+ is tracked on the device, and the loss's finiteness is checked every FINITE_CHECK_EVERY steps and at
        the end (NonFiniteLoss, carrying the best w+ before it). Ctrl-C raises OptimizationInterrupted (a
        KeyboardInterrupt) carrying the best w+ so far."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise InputValueError(f"steps must be an integer >= 0, got {steps!r}")
        wplus = start.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([wplus], lr=lr(0.0) if callable(lr) else lr)
        best = start.detach().clone()
        best_loss = torch.full((), math.inf, device=start.device)
        finite = torch.ones((), dtype=torch.bool, device=start.device)
        bar = ProgressBar(label, steps) if self.progress else None
        step = 0
        try:
            for step in range(steps + 1):  # the last pass only evaluates the final w+
                if callable(lr):
                    optimizer.param_groups[0]["lr"] = lr(step / max(steps, 1))
                last = step == steps
                with torch.set_grad_enabled(not last):
                    total, terms, image = objective(wplus)
                key = terms[best_key].detach()
                finite &= torch.isfinite(total.detach())
                better = key < best_loss  # False for NaN: a non-finite loss never becomes the best
                best = torch.where(better, wplus.detach(), best)
                best_loss = torch.where(better, key, best_loss)
                if callback is not None or bar is not None:
                    values = {k: float(v) for k, v in terms.items()}
                    if callback is not None:
                        callback(step, values, image)
                    if bar is not None:
                        bar.update(step, values)
                if last or (step + 1) % FINITE_CHECK_EVERY == 0:
                    _check_finite(label, finite, best, step)
                if last:
                    break
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
        except KeyboardInterrupt:
            raise OptimizationInterrupted(label, best.detach().clone(), step) from None
        finally:
            if bar is not None:
                bar.close()
        return best

    def edit_objective(self, latent: Latent, edited_labels, region: str = "changed", classes=None,
                       iterations: int = losses.DILATION_ITERATIONS) -> losses.EditObjective:
        """The objective `learn_vector` minimizes (exposed so its terms can be measured at any w+)."""
        return self._edit_setup(latent, edited_labels, region, classes, iterations)[0]

    def _edit_setup(self, latent, edited_labels, region, classes, iterations=losses.DILATION_ITERATIONS):
        """(objective, edited classes) of an edit of `latent` to `edited_labels`."""
        latent = self.latent(latent)
        original, _ = self.segment(latent)
        edited = _tensor(edited_labels, "the edited label map")
        if edited.is_floating_point():
            raise ValueError(f"the edited label map must hold integer class ids, got {edited.dtype}")
        edited = edited.to(torch.int64)
        io.check_labels(edited, self.num_classes, self.segmenter.label_size, "the edited label map")
        edited = edited.to(original.device)
        if torch.equal(original, edited):
            raise ValueError("the edited label map equals the current segmentation: there is no edit to learn")
        if classes is None:
            classes = losses.edited_classes(original, edited)
        classes = tuple(int(c) for c in classes)
        for c in classes:
            if not 0 <= c < self.num_classes:
                raise ValueError(f"unknown class id {c}; the segmenter has classes 0..{self.num_classes - 1}")
        if region == "changed":
            roi = losses.changed_region(original, edited, iterations)
        elif region == "classes":
            roi = losses.class_region(original, edited, classes, iterations)
        else:
            raise ValueError(f"region must be 'changed' or 'classes', got {region!r}")
        with torch.no_grad():
            reference = self.generator.synthesis(self._wplus(latent)[None], noise_mode=self.noise_mode).float()
        objective = losses.EditObjective(self.generator, self.segmenter, reference, edited, roi,
                                         self._lpips_or_warn(), self.encoder, self.noise_mode)
        return objective, classes

    def learn_vector(self, latent: Latent, edited_labels, steps: int = 100, classes=None, region: str = "changed",
                     name: str = "edit", callback: StepCallback | None = None) -> EditVector:
        """Learn δ so that G(w + δ) has `edited_labels` inside the edit's region and the same image outside it.

        region "changed": the pixels whose label changed, dilated 3x3 three times (EditGAN's tool);
        "classes": every pixel of the edited classes in the original or edited map, dilated (the paper).
        `classes` (default: the labels painted in) is recorded in the vector; `refine` takes its region from them."""
        objective, classes = self._edit_setup(latent, edited_labels, region, classes)
        start = self._wplus(latent)
        best = self._optimize(f"learn {name}", start, objective, steps, self.learn_lr, callback)
        return EditVector((best - start).cpu(), classes, name, self.fingerprint)

    def refinement_objective(self, latent: Latent, vectors: dict) -> losses.EditObjective:
        """The objective `refine` minimizes: target = the labels predicted after applying `vectors`, region = the
        vectors' classes in the original or the edited labels (dilated), reference = the original image."""
        latent = self.latent(latent)
        if not vectors:
            raise ValueError("refine needs at least one vector")
        classes = sorted({c for v in vectors for c in v.classes})
        if not classes:
            raise ValueError("the vectors record no classes, so refine has no region; give them classes")
        original, _ = self.segment(latent)
        edited = self.apply(latent, vectors)
        if edited.labels.ndim != 2:
            raise ValueError("refine takes one scale per vector, not a batch")
        roi = losses.class_region(original, edited.labels, classes)
        with torch.no_grad():
            reference = self.generator.synthesis(self._wplus(latent)[None], noise_mode=self.noise_mode).float()
        return losses.EditObjective(self.generator, self.segmenter, reference, edited.labels, roi,
                                    self._lpips_or_warn(), None, self.noise_mode)

    def edited_wplus(self, latent: Latent, vectors: dict) -> torch.Tensor:
        wplus = self._wplus(latent).clone()
        for vector, scale in vectors.items():
            vector.check_compatible(self.fingerprint, self.generator.num_ws, self.generator.style_dim)
            wplus += float(scale) * vector.delta.to(self.device)
        return wplus

    def refine(self, latent: Latent, vectors: dict, steps: int = 30, callback: StepCallback | None = None) -> Latent:
        """Self-supervised refinement of w+ + Σ sᵢδᵢ (EditGAN's test-time optimization); never raises the loss."""
        objective = self.refinement_objective(latent, vectors)
        best = self._optimize("refine", self.edited_wplus(latent, vectors), objective, steps, self.learn_lr, callback)
        return Latent(best.cpu())

    def embed(self, image, steps: int = 100, callback: StepCallback | None = None) -> Latent:
        """Project a real image (path, PIL image, uint8 array, or tensor [3, H, W] in [-1, 1]) into w+."""
        target, note = io.fit_to_resolution(io.image_to_tensor(image), self.generator.resolution)
        if note:
            log.warning("embed: %s to match the generator", note)  # the input was changed: say so even when quiet
        target = target[None].to(self.device)
        target01 = (target + 1) / 2
        g = self.generator
        with torch.no_grad():
            if self.encoder is not None:
                start = self.encoder(target)[0].float()
            else:
                start = g.mean_latent().to(self.device).reshape(1, g.style_dim).expand(g.num_ws, -1).clone()
        lpips = self._lpips_or_warn()

        def objective(wplus):
            image = g.synthesis(wplus[None], noise_mode=self.noise_mode).float()
            x01 = (image + 1) / 2
            mse = F.mse_loss(x01, target01)
            recon = EMBED_MSE_WEIGHT * mse
            terms = {"mse": mse}
            if lpips is not None:
                perceptual = lpips(image, target).mean()
                recon = recon + EMBED_LPIPS_WEIGHT * perceptual
                terms["lpips"] = perceptual
            terms["reconstruction"] = recon
            total = recon
            if self.encoder is not None:
                enc = losses.encoder_term(self.encoder, image, wplus)
                total = total + EMBED_ENCODER_WEIGHT * enc
                terms["encoder"] = enc
            terms["total"] = total
            return total, losses.detached(terms), image.detach()

        # EditGAN keeps the latent with the best reconstruction (the encoder term is a regularizer).
        best = self._optimize("embed", start, objective, steps, embedding_lr, callback, best_key="reconstruction")
        return Latent(best.cpu())


def _check_finite(label: str, finite: torch.Tensor, best: torch.Tensor, step: int) -> None:
    if not bool(finite):
        raise NonFiniteLoss(f"{label}: the loss became NaN or Inf (by step {step}); the inputs (latent, vector "
                            f"scales) are out of range for this generator", best=best.detach().clone(), step=step)


def _tensor(value, what: str, dtype=None) -> torch.Tensor:
    """torch.as_tensor(value), or an InputValueError naming `what` for a value no tensor can hold."""
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise InputValueError(f"{what} must be a tensor or numbers, got {type(value).__name__}") from None


def _frozen_copy(module):
    """The module in eval mode without gradients, leaving the caller's module as it was: a copy whose parameters
    are new Parameter objects over the same storage (no weight is duplicated) and whose buffers are shared until
    moved (`.to()` replaces a copy's tensors, never the original's)."""
    memo = {id(t): t for t in module.buffers()}
    memo.update({id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in module.parameters()})
    frozen = copy.deepcopy(module, memo)
    # eval() only when needed: switching modes lets a module rebuild derived state (the segmenter's views).
    return frozen.eval() if any(m.training for m in frozen.modules()) else frozen


def combine_styles(base, deltas, scales: torch.Tensor):
    """Per-layer styles [B, C] of w+ + Σₖ scales[:, k] δₖ from the cached terms (base: [1, C] per layer; deltas[k]:
    [1, C] per layer; scales [B, K] on their device). Eager `apply` and a captured graph both compute exactly
    this, in this order, so a replay equals the eager result."""
    styles = [s.expand(scales.shape[0], -1) for s in base]
    for k, delta in enumerate(deltas):
        s = scales[:, k:k + 1]
        styles = [a + s.to(d.dtype) * d for a, d in zip(styles, delta)]
    return styles


def _scale_matrix(vectors: dict) -> tuple[torch.Tensor, bool]:
    """{vector: scale or [B] scales} -> ([B, K] float32, whether a batch was asked for)."""
    columns, lengths = [], set()
    for vector, scale in vectors.items():
        s = _tensor(scale, f"the scale of {getattr(vector, 'name', vector)!r}", torch.float32)
        if s.ndim > 1 or not torch.isfinite(s).all():
            raise ValueError(f"the scale of {getattr(vector, 'name', vector)!r} must be a finite number or a 1-D "
                             f"sequence of them")
        if s.ndim == 1:
            lengths.add(s.shape[0])
        columns.append(s)
    if len(lengths) > 1:
        raise ValueError(f"all scale sequences must have the same length, got lengths {sorted(lengths)}")
    batch = lengths.pop() if lengths else 0
    limits.check("scales_per_call", batch, "scales in one call")
    if batch == 0 and any(c.ndim == 1 for c in columns):
        raise ValueError("scale sequences must not be empty")
    rows = max(batch, 1)
    matrix = torch.stack([c.expand(rows) for c in columns], 1) if columns else torch.zeros(rows, 0)
    return matrix, batch > 0
