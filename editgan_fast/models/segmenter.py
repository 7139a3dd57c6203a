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

import dataclasses
import os
from pathlib import Path

import torch

from ..ops.seg_head import MODES, PixelMLP, seg_head
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


class Segmenter(torch.nn.Module):
    """Frozen ensemble of PixelMLPs; `logits` runs the `seg_head` op on the active backend."""

    def __init__(self, members: list[PixelMLP], out_size, crop=None, mode: str = "bilinear"):
        super().__init__()
        if not members:
            raise ValueError("a Segmenter needs at least one classifier")
        if mode not in MODES:
            raise ValueError(f"upsample mode must be one of {MODES}, got {mode!r}")
        self.members = list(members)
        self.num_classes = members[0].num_classes
        self.out_size = (int(out_size), int(out_size)) if isinstance(out_size, int) else tuple(map(int, out_size))
        h, w = self.out_size
        if crop is not None:
            crop = tuple(int(c) for c in crop)
            if len(crop) != 4 or not (0 <= crop[0] < crop[1] <= h and 0 <= crop[2] < crop[3] <= w):
                raise ValueError(f"crop must be (y0, y1, x0, x1) inside the output size {h}x{w}, got {crop}")
        self.crop = crop
        self.mode = mode

    @property
    def in_features(self) -> int:
        return self.members[0].in_features

    @property
    def label_size(self) -> tuple[int, int]:
        if self.crop is None:
            return self.out_size
        y0, y1, x0, x1 = self.crop
        return (y1 - y0, x1 - x0)

    def logits(self, features, region=None, mode=None):
        """Mean ensemble logits [N, C, h, w], or [N, C, P] for the pixels of a bool `region` [h, w]."""
        return seg_head(list(features), self.members, self.out_size, crop=self.crop, mode=mode or self.mode,
                        region=region)

    forward = logits

    def predict(self, features) -> torch.Tensor:
        """Labels [N, h, w] (int64): the argmax of the mean logits, as EditGAN segments."""
        with torch.no_grad():
            return self.logits(features).argmax(1)

    def _apply(self, fn, recurse=True):
        # The members are plain tensors in frozen dataclasses, not parameters: move/cast them here so that
        # .to(), .double(), .cuda() reach them like any module state.
        self.members = [_map_tensors(m, fn) for m in self.members]
        return super()._apply(fn, recurse)

    def save(self, directory, name="model_{}.pth") -> list[Path]:
        """Write every member in EditGAN's format as directory/name.format(i); returns the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / name.format(i) for i in range(len(self.members))]
        for m, p in zip(self.members, paths):
            save_classifier(m, p)
        return paths


def _map_tensors(m: PixelMLP, fn) -> PixelMLP:
    return dataclasses.replace(m, **{f.name: tuple(fn(t) for t in getattr(m, f.name))
                                     for f in dataclasses.fields(m) if f.name != "bn_eps"})


def classifier_state_dict(m: PixelMLP) -> dict[str, torch.Tensor]:
    """The member as EditGAN's `pixel_classifier.state_dict()` (no `module.` prefix)."""
    sd = {}
    for i, w, b in zip(_LINEAR, m.weights, m.biases):
        sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"] = w, b
    for j, i in enumerate(_BATCHNORM):
        sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"] = m.bn_weight[j], m.bn_bias[j]
        sd[f"layers.{i}.running_mean"], sd[f"layers.{i}.running_var"] = m.bn_mean[j], m.bn_var[j]
        sd[f"layers.{i}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_classifier(m: PixelMLP, path, data_parallel: bool = True) -> None:
    """Save one member as EditGAN does: {'model_state_dict': ...}, keys prefixed `module.` (DataParallel)."""
    if m.bn_eps != _BN_EPS:
        raise ValueError(f"EditGAN's format cannot record BatchNorm eps={m.bn_eps} (it is always {_BN_EPS})")
    prefix = "module." if data_parallel else ""
    torch.save({"model_state_dict": {prefix + k: v for k, v in classifier_state_dict(m).items()}}, path)


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


def classifier_from_state_dict(sd: dict[str, torch.Tensor], path="<state dict>") -> PixelMLP:
    """Check every key and shape of one EditGAN pixel classifier and build its PixelMLP (float32)."""
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
    return PixelMLP(weights=tuple(t[f"layers.{i}.weight"] for i in _LINEAR),
                    biases=tuple(t[f"layers.{i}.bias"] for i in _LINEAR),
                    bn_mean=tuple(t[f"layers.{i}.running_mean"] for i in _BATCHNORM),
                    bn_var=tuple(t[f"layers.{i}.running_var"] for i in _BATCHNORM),
                    bn_weight=tuple(t[f"layers.{i}.weight"] for i in _BATCHNORM),
                    bn_bias=tuple(t[f"layers.{i}.bias"] for i in _BATCHNORM),
                    bn_eps=_BN_EPS)


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
    return Segmenter(members, out_size if out_size is not None else generator.resolution, crop=crop,
                     mode=upsample)
