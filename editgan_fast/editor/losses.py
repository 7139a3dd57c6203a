"""The editing objective and its regions, as EditGAN (github:nv-tlabs/editGAN_release) computes them.

Region of interest (ROI), in label-map pixels:
- "changed" (EditGAN's tool): the pixels whose label the user changed, dilated with a 3x3 square `iterations`
  times (cv2.dilate(roi, ones(3, 3), iterations=3));
- "classes" (the paper; EditGAN's refinement): every pixel labelled with one of the edited classes in the
  original or in the edited map, dilated the same way (the dilation is the margin).
Loss, on images mapped to [0, 1] as EditGAN does, with keep = 1 outside the ROI and 0 inside:
    15 * (10 * LPIPS(x*keep, x0*keep) + 5 * MSE(x*keep, x0*keep))          the image outside the ROI stays
  + 1  * CE(mean ensemble logits inside the ROI (nearest upsampling), target labels inside the ROI)
  + 1  * MSE(w+, E(G(w+)))                                                   only with an encoder (learning)
Without LPIPS weights the LPIPS term is dropped (MSE only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

RGB_WEIGHT = 15.0
LPIPS_WEIGHT = 10.0
MSE_WEIGHT = 5.0
CE_WEIGHT = 1.0
ENCODER_WEIGHT = 1.0
DILATION_ITERATIONS = 3


def dilate(mask: torch.Tensor, iterations: int = DILATION_ITERATIONS) -> torch.Tensor:
    """Binary dilation of a bool mask [h, w] with a 3x3 square, like cv2.dilate (the border does not grow it)."""
    x = mask.float()[None, None]
    for _ in range(iterations):
        x = F.max_pool2d(x, 3, stride=1, padding=1)
    return x[0, 0] > 0


def changed_region(original: torch.Tensor, edited: torch.Tensor, iterations: int = DILATION_ITERATIONS):
    """The pixels whose label changed, dilated (EditGAN's tool)."""
    return dilate(original != edited, iterations)


def class_region(original: torch.Tensor, edited: torch.Tensor, classes, iterations: int = DILATION_ITERATIONS):
    """Every pixel of one of `classes` in either map, dilated (the paper's ROI, EditGAN's refinement)."""
    classes = torch.as_tensor(list(classes), dtype=original.dtype, device=original.device)
    return dilate(torch.isin(original, classes) | torch.isin(edited, classes), iterations)


def edited_classes(original: torch.Tensor, edited: torch.Tensor) -> tuple[int, ...]:
    """The classes an edit paints in (e.g. the eye class when the user enlarges the eyes). The classes painted
    over are not included: they are usually the surroundings (skin, background), whose whole area would then
    become the refinement region."""
    return tuple(sorted({int(c) for c in edited[original != edited].unique()}))


def image_keep_mask(region: torch.Tensor, segmenter, resolution: int) -> torch.Tensor:
    """1 outside the ROI, 0 inside, as a [1, 1, R, R] image mask (the ROI lives in the segmenter's possibly
    cropped output grid, which may differ from the image's resolution)."""
    full = torch.zeros(segmenter.out_size, dtype=torch.bool, device=region.device)
    y0, y1, x0, x1 = segmenter.crop or (0, segmenter.out_size[0], 0, segmenter.out_size[1])
    full[y0:y1, x0:x1] = region
    inside = full.float()[None, None]
    if tuple(full.shape) != (resolution, resolution):
        inside = F.interpolate(inside, size=(resolution, resolution), mode="nearest")
    return 1.0 - inside


def encoder_term(encoder, image, wplus):
    """MSE(w+, E(G(w+))): keeps w+ where the encoder can reach it (EditGAN's regularizer). The encoder's output
    is a target, so no gradient flows through it."""
    with torch.no_grad():
        encoded = encoder(image.clamp(-1, 1))[0]
    return F.mse_loss(wplus, encoded)


def detached(terms: dict) -> dict:
    """The loss terms as detached 0-d tensors: reading them as floats is the caller's (synchronizing) choice."""
    return {k: v.detach() for k, v in terms.items()}


@dataclass
class EditObjective:
    """The loss of a w+ for one edit: keep `reference` (an image [1, 3, R, R] in [-1, 1]) outside `region` and
    make the segmentation inside it `target` (labels [h, w]). `__call__(wplus [num_ws, D])` returns
    (total loss, {term: detached 0-d tensor}, image [1, 3, R, R])."""
    generator: object
    segmenter: object
    reference: torch.Tensor
    target: torch.Tensor
    region: torch.Tensor
    lpips: object = None
    encoder: object = None
    noise_mode: str = "const"

    def __post_init__(self):
        if not self.region.any():
            raise ValueError("the edit's region of interest is empty: nothing to optimize")
        self.keep = image_keep_mask(self.region, self.segmenter, self.generator.resolution)
        self.reference01 = (self.reference + 1) / 2 * self.keep
        self.target_in_region = self.target[self.region]
        # The region's pixels as indices, found once: a mask would need a data-dependent nonzero in every call,
        # which torch.compile cannot trace without a graph break.
        self.region_pixels = self.region.flatten().nonzero()[:, 0]

    def __call__(self, wplus: torch.Tensor):
        image, features = self.generator.synthesis(wplus[None], noise_mode=self.noise_mode, return_features=True)
        image = image.float()
        x01 = (image + 1) / 2 * self.keep
        mse = F.mse_loss(x01, self.reference01)
        rgb = MSE_WEIGHT * mse
        terms = {"mse": mse}
        if self.lpips is not None:
            perceptual = self.lpips(x01 * 2 - 1, self.reference01 * 2 - 1).mean()
            rgb = rgb + LPIPS_WEIGHT * perceptual
            terms["lpips"] = perceptual
        logits = self.segmenter.logits(features, region=self.region_pixels, mode="nearest")  # [1, C, P]
        ce = F.cross_entropy(logits.float(), self.target_in_region[None])
        total = RGB_WEIGHT * rgb + CE_WEIGHT * ce
        terms["ce"] = ce
        if self.encoder is not None:
            enc = encoder_term(self.encoder, image, wplus)
            total = total + ENCODER_WEIGHT * enc
            terms["encoder"] = enc
        terms["total"] = total
        return total, detached(terms), image.detach()
