"""DatasetGAN/EditGAN pixel-classifier ensemble over the generator's feature maps.

What EditGAN (github:nv-tlabs/editGAN_release) does, and what we do:
- Each ensemble member is its `pixel_classifier`: Linear(D,H1) ReLU BatchNorm1d(H1) Linear(H1,H2) ReLU
  BatchNorm1d(H2) Linear(H2,C), with (H1, H2) = (256, 128) when C >= 32 and (128, 32) when C < 32, saved as
  `{'model_state_dict': state_dict}` of an `nn.DataParallel` wrapper (keys `module.layers.0.weight`, ...).
  We read any consistent widths (reduced toy models too) and save back in exactly that format.
- Features: every generator feature map is upsampled to the output resolution with `nn.Upsample(scale_factor=
  out_res / r)`, bilinear (align_corners=False) to segment and nearest inside the editing loss. All ratios are
  powers of two, so a scale factor and a target size sample identically; we pass the size. The car model crops
  output rows 64:448 of 512 (`crop=(64, 448, 0, 512)`). For 1024 px face models EditGAN segments at 512
  (`out_size=512`): the 1024 px maps are resized down to it, which `seg_head` does the same way.
- Ensemble: EditGAN averages the members' raw logits (`torch.mean` over members), then takes the argmax to
  segment and feeds the mean logits to cross-entropy in the editing loss. We do the same (mean of logits, no
  softmax), in `editgan_fast.ops.seg_head`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..ops.seg_head import MODES, PixelMLP, crop_box, seg_head, upsample_feature
from ..errors import InputValueError
from ..io import atomic_write
from .checks import check_classifier, torch_load
from .errors import CheckpointError

_LINEAR = (0, 3, 6)   # indices of the Linear layers in `layers`
_BATCHNORM = (2, 5)   # indices of the BatchNorm1d layers
_BN_EPS = 1e-5        # torch.nn.BatchNorm1d's default, which EditGAN uses (eps is not in the state dict)
_OPTIONAL = {f"layers.{i}.num_batches_tracked" for i in _BATCHNORM}  # a training counter, unused in eval


def _expected_keys() -> set[str]:
    keys = {f"layers.{i}.{p}" for i in _LINEAR for p in ("weight", "bias")}
    keys |= {f"layers.{i}.{p}" for i in _BATCHNORM for p in ("weight", "bias", "running_mean", "running_var")}
    return keys


class PixelClassifier(torch.nn.Module):
    """EditGAN's `pixel_classifier`, layer for layer (its state dict has exactly EditGAN's `layers.{0..6}.*` keys):
    Linear(D,H1) ReLU BatchNorm1d(H1) Linear(H1,H2) ReLU BatchNorm1d(H2) Linear(H2,C)."""

    def __init__(self, in_features: int, num_classes: int, hidden=(128, 32), eps: float = _BN_EPS,
                 device=None, dtype=None):
        super().__init__()
        h1, h2 = hidden
        kw = {"device": device, "dtype": dtype}
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(in_features, h1, **kw), torch.nn.ReLU(), torch.nn.BatchNorm1d(h1, eps=eps, **kw),
            torch.nn.Linear(h1, h2, **kw), torch.nn.ReLU(), torch.nn.BatchNorm1d(h2, eps=eps, **kw),
            torch.nn.Linear(h2, num_classes, **kw))

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def num_classes(self) -> int:
        return self.layers[6].out_features

    def forward(self, pixels):
        """pixels [P, D] -> logits [P, C]."""
        return self.layers(pixels)

    def pixel_mlp(self, detach: bool = True) -> PixelMLP:
        """The frozen view the `seg_head` op reads (detached tensors sharing this module's storage; inside
        torch.compile the parameters themselves, see Segmenter.members)."""
        view = (lambda t: t.detach()) if detach else (lambda t: t)
        lin = [self.layers[i] for i in _LINEAR]
        bns = [self.layers[i] for i in _BATCHNORM]
        if bns[0].eps != bns[1].eps:
            raise InputValueError(f"the seg_head op needs one BatchNorm eps per classifier, got {bns[0].eps} and "
                             f"{bns[1].eps}")
        return PixelMLP(weights=tuple(view(m.weight) for m in lin), biases=tuple(view(m.bias) for m in lin),
                        bn_mean=tuple(view(b.running_mean) for b in bns), bn_var=tuple(view(b.running_var) for b in bns),
                        bn_weight=tuple(view(b.weight) for b in bns), bn_bias=tuple(view(b.bias) for b in bns),
                        bn_eps=bns[0].eps)

    @classmethod
    def from_pixel_mlp(cls, m: PixelMLP) -> "PixelClassifier":
        w = m.weights[0]
        module = cls(m.in_features, m.num_classes, hidden=(m.weights[0].shape[0], m.weights[1].shape[0]),
                     eps=m.bn_eps, device=w.device, dtype=w.dtype)
        module.load_state_dict(_pixel_mlp_state_dict(m), strict=False)  # num_batches_tracked stays 0
        return module


def _pixel_mlp_state_dict(m: PixelMLP) -> dict[str, torch.Tensor]:
    sd = {}
    for i, w, b in zip(_LINEAR, m.weights, m.biases):
        sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"] = w, b
    for j, i in enumerate(_BATCHNORM):
        sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"] = m.bn_weight[j], m.bn_bias[j]
        sd[f"layers.{i}.running_mean"], sd[f"layers.{i}.running_var"] = m.bn_mean[j], m.bn_var[j]
    return sd


def _as_classifier(m) -> PixelClassifier:
    if isinstance(m, PixelClassifier):
        return m
    if isinstance(m, PixelMLP):
        return PixelClassifier.from_pixel_mlp(m)
    raise InputValueError(f"a segmenter member must be a PixelClassifier or a PixelMLP, got {type(m).__name__}")


class _Views:
    """The classifiers' PixelMLP views and the tensors they were made from. A deep copy keeps these same views
    when its tensors share the storage (the editor's frozen copies), so that editors over one segmenter share
    the backends' packed weights (cached by the views' identity); any other copy, or a pickle, rebuilds its own
    instead of duplicating the weights."""

    def __init__(self, classifiers: torch.nn.Module):
        self.members = [c.pixel_mlp() for c in classifiers]
        self.sources = [*classifiers.parameters(), *classifiers.buffers()]

    def __deepcopy__(self, memo):
        copies = [memo.get(id(t)) for t in self.sources]  # the module's tensors are copied before this
        shared = all(c is not None and c.data_ptr() == t.data_ptr() for c, t in zip(copies, self.sources))
        return self if shared else None

    def __reduce__(self):
        return (_no_views, ())


def _no_views():
    return None


def _refresh_after_load(segmenter, incompatible_keys):
    segmenter._refresh_views()  # a module-level function, so that a Segmenter pickles


class Segmenter(torch.nn.Module):
    """Ensemble of EditGAN pixel classifiers (registered submodules `classifiers.{i}.layers.*`).

    Built in eval mode. In eval mode (how the editor uses it) `logits` runs the `seg_head` op on the active backend with the
    classifiers frozen (gradients reach the features only). In train mode it runs the modules themselves
    (BatchNorm on batch statistics, gradients to the classifiers' parameters), so the ensemble can be trained.
    The op reads `members`, frozen views of the classifiers rebuilt after `.to()`, `train()`/`eval()` and
    `load_state_dict`; after changing weights in place by other means, call `eval()` again.
    """

    def __init__(self, members, out_size, crop=None, mode: str = "bilinear"):
        super().__init__()
        classifiers = [_as_classifier(m) for m in members]
        if not classifiers:
            raise ValueError("a Segmenter needs at least one classifier")
        for i, c in enumerate(classifiers):
            if (c.in_features, c.num_classes) != (classifiers[0].in_features, classifiers[0].num_classes):
                raise InputValueError(f"classifier {i} maps {c.in_features} features to {c.num_classes} classes, "
                                 f"classifier 0 maps {classifiers[0].in_features} to {classifiers[0].num_classes}")
        if mode not in MODES:
            raise ValueError(f"upsample mode must be one of {MODES}, got {mode!r}")
        self.classifiers = torch.nn.ModuleList(classifiers)
        self.out_size = (int(out_size), int(out_size)) if isinstance(out_size, int) else tuple(map(int, out_size))
        h, w = self.out_size
        if crop is not None:
            crop = tuple(int(c) for c in crop)
            if len(crop) != 4 or not (0 <= crop[0] < crop[1] <= h and 0 <= crop[2] < crop[3] <= w):
                raise ValueError(f"crop must be (y0, y1, x0, x1) inside the output size {h}x{w}, got {crop}")
        self.crop = crop
        self.mode = mode
        self._views = None
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.eval()  # classifiers arrive trained (files, PixelMLPs): inference is the default

    @property
    def members(self) -> list[PixelMLP]:
        """Frozen views of the classifiers, as the `seg_head` op takes them."""
        if torch.compiler.is_compiling():
            # Views made inside a graph are new tensors every call, which the backends' packed-weight caches
            # (keyed by identity) would miss; the parameters and buffers themselves are the same each call.
            return [c.pixel_mlp(detach=False) for c in self.classifiers]
        if self._views is None:  # a copy with storage of its own
            self._refresh_views()
        return self._views.members

    def _refresh_views(self):
        # New view objects: the backends' packed-weight caches are keyed by the members' identity.
        self._views = _Views(self.classifiers)

    @property
    def num_classes(self) -> int:
        return self.classifiers[0].num_classes

    @property
    def in_features(self) -> int:
        return self.classifiers[0].in_features

    @property
    def label_size(self) -> tuple[int, int]:
        if self.crop is None:
            return self.out_size
        y0, y1, x0, x1 = self.crop
        return (y1 - y0, x1 - x0)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, crop={self.crop}, mode={self.mode!r}, num_classes={self.num_classes}"

    def logits(self, features, region=None, mode=None):
        """Mean ensemble logits [N, C, h, w], or [N, C, P] for the pixels of a bool `region` [h, w]."""
        mode = mode or self.mode
        if self.training:
            return self._module_logits(list(features), region, mode)
        return seg_head(list(features), self.members, self.out_size, crop=self.crop, mode=mode, region=region)

    forward = logits

    def _module_logits(self, features, region, mode):
        """The classifiers as modules over the materialized feature stack (training: no fast path needed)."""
        dim = sum(f.shape[1] for f in features)
        if dim != self.in_features:
            raise InputValueError(f"the classifiers expect {self.in_features} feature channels, the generator's "
                             f"feature maps have {dim}")
        y0, y1, x0, x1 = crop_box(self.out_size, self.crop)
        stack = torch.cat([upsample_feature(f, self.out_size, mode)[:, :, y0:y1, x0:x1] for f in features], 1)
        pixels = stack.permute(0, 2, 3, 1)                      # [N, h, w, D]
        if region is not None:  # a bool mask [h, w] or flat row-major pixel indices, as seg_head takes it
            region = region.to(stack.device)
            pixels = pixels[:, region] if region.dtype == torch.bool else pixels.flatten(1, 2)[:, region]  # [N,P,D]
        flat = pixels.reshape(-1, dim)
        logits = sum(c(flat) for c in self.classifiers) / len(self.classifiers)
        return logits.reshape(*pixels.shape[:-1], self.num_classes).movedim(-1, 1)

    def predict(self, features) -> torch.Tensor:
        """Labels [N, h, w] (int64): the argmax of the mean logits, as EditGAN segments."""
        with torch.no_grad():
            return self.logits(features).argmax(1)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self._refresh_views()
        return module

    def train(self, mode: bool = True):
        module = super().train(mode)
        self._refresh_views()
        return module

    def save(self, directory, name="model_{}.pth") -> list[Path]:
        """Write every member in EditGAN's format as directory/name.format(i); returns the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / name.format(i) for i in range(len(self.classifiers))]
        for m, p in zip(self.classifiers, paths):
            save_classifier(m, p)
        return paths


def classifier_state_dict(m) -> dict[str, torch.Tensor]:
    """A member (PixelClassifier or PixelMLP) as EditGAN's `pixel_classifier.state_dict()` (no `module.`)."""
    return {k: v.detach().cpu().contiguous() for k, v in _as_classifier(m).state_dict().items()}


def save_classifier(m, path, data_parallel: bool = True) -> None:
    """Save one member as EditGAN does: {'model_state_dict': ...}, keys prefixed `module.` (DataParallel)."""
    m = _as_classifier(m)
    eps = {m.layers[i].eps for i in _BATCHNORM}
    if eps != {_BN_EPS}:
        raise ValueError(f"EditGAN's format cannot record BatchNorm eps={sorted(eps)} (it is always {_BN_EPS})")
    prefix = "module." if data_parallel else ""
    with atomic_write(path) as f:
        torch.save({"model_state_dict": {prefix + k: v for k, v in classifier_state_dict(m).items()}}, f)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = torch_load(path, "classifier file")
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise CheckpointError(f"classifier file {path} holds no state dict (expected EditGAN's "
                              f"{{'model_state_dict': {{'module.layers.0.weight': ...}}}})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _shape_error(path, key, got, want):
    return CheckpointError(f"classifier file {path}: {key} has shape {tuple(got)}, expected {tuple(want)}")


def classifier_from_state_dict(sd: dict[str, torch.Tensor], path="<state dict>") -> PixelClassifier:
    """Check every key and shape of one EditGAN pixel classifier and build it (float32)."""
    expected = _expected_keys()
    missing = sorted(expected - sd.keys())
    unexpected = sorted(sd.keys() - expected - _OPTIONAL)
    if missing or unexpected:
        parts = ([f"missing keys {missing}"] if missing else []) + \
                ([f"unexpected keys {unexpected}"] if unexpected else [])
        raise CheckpointError(f"classifier file {path} is not an EditGAN pixel classifier: {'; '.join(parts)}")
    t = {k: sd[k].detach().to(torch.float32) for k in expected}
    for k in expected:
        if not torch.isfinite(t[k]).all():
            raise CheckpointError(f"classifier file {path}: {k} contains NaN or Inf")
    widths = []
    for i in _LINEAR:
        w = t[f"layers.{i}.weight"]
        if w.ndim != 2:
            raise CheckpointError(f"classifier file {path}: layers.{i}.weight must be 2-D, got {tuple(w.shape)}")
        if widths and w.shape[1] != widths[-1]:
            raise _shape_error(path, f"layers.{i}.weight", w.shape, (w.shape[0], widths[-1]))
        widths.append(w.shape[0])
        if t[f"layers.{i}.bias"].shape != (w.shape[0],):
            raise _shape_error(path, f"layers.{i}.bias", t[f"layers.{i}.bias"].shape, (w.shape[0],))
    for j, i in enumerate(_BATCHNORM):
        for p in ("weight", "bias", "running_mean", "running_var"):
            if t[f"layers.{i}.{p}"].shape != (widths[j],):
                raise _shape_error(path, f"layers.{i}.{p}", t[f"layers.{i}.{p}"].shape, (widths[j],))
        if (t[f"layers.{i}.running_var"] < 0).any():
            raise CheckpointError(f"classifier file {path}: layers.{i}.running_var has negative entries")
    module = PixelClassifier(t["layers.0.weight"].shape[1], widths[2], hidden=(widths[0], widths[1]))
    # The training counters are kept when present, so that saving writes back what was read.
    counters = {k: sd[k].to(torch.long) for k in _OPTIONAL & sd.keys() if sd[k].ndim == 0}
    module.load_state_dict({**t, **counters}, strict=False)
    return module


def _classifier_paths(paths) -> list[Path]:
    """A list of files, one file, or a directory (its *.pth files, sorted)."""
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        if p.is_dir():
            found = sorted(p.glob("*.pth"))
            if not found:
                raise CheckpointError(f"directory {p} holds no classifier files (*.pth)")
            return found
        return [p]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("load_segmenter needs at least one classifier file")
    return out


def load_segmenter(paths, generator, out_size=None, crop=None, upsample="bilinear") -> Segmenter:
    """Load EditGAN classifier files (a list, one file or a directory) as a Segmenter for `generator`.

    Every file must classify sum(generator.feature_channels) features, and all must agree on the classes.
    `out_size` defaults to the generator's resolution; `crop` = (y0, y1, x0, x1), e.g. (64, 448, 0, 512) for
    EditGAN's car model; `upsample` is "bilinear" (segmentation) or "nearest" (EditGAN's editing loss).
    """
    dim = sum(int(c) for c in generator.feature_channels)
    members, first = [], None
    for path in _classifier_paths(paths):
        m = classifier_from_state_dict(_read_state_dict(path), path)
        check_classifier(m, path)
        if m.in_features != dim:
            raise CheckpointError(
                f"classifier file {path} takes {m.in_features} input features, but the generator's feature "
                f"maps have {dim} channels in all ({len(generator.feature_channels)} maps): wrong generator or "
                f"classifier")
        if first is not None and m.num_classes != members[0].num_classes:
            raise CheckpointError(f"classifier file {path} has {m.num_classes} classes, but {first} has "
                                  f"{members[0].num_classes}: all ensemble members must agree")
        first = first or path
        members.append(m)
    segmenter = Segmenter(members, out_size if out_size is not None else generator.resolution, crop=crop,
                          mode=upsample)
    return segmenter.requires_grad_(False)
