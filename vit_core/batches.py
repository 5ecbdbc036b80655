"""Batches on the training device: iteration, augmentation, mixing and normalisation of whole batches.

Augmentation (`augment_batch`: random crop with zero padding, horizontal flip), mixing
(`mix_batch`: Mixup or CutMix) and normalisation (`normalize_batch`) work on whole batches of
tensors on the training device, so data loading costs a gather per step instead of a Python
loop over images. Every random draw comes from a generator the caller passes, so a run that
seeds it per step is exactly resumable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .data import ImageDataset


def iterate_batches(
    dataset: ImageDataset, batch_size: int, order: Tensor | None = None, start: int = 0, drop_last: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images uint8 (B, C, H, W), labels (B,)) in `order` (default: as stored), from batch `start`."""
    n = len(dataset)
    idx = order if order is not None else torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for i in range(start * batch_size, stop, batch_size):
        j = idx[i : i + batch_size]
        yield dataset.images[j], dataset.labels[j]


def augment_batch(
    images: Tensor, generator: torch.Generator | None = None, padding: int = 4, flip: bool = True
) -> Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once.

    Each image is padded by `padding` pixels of zeros on every side and cropped back to its
    size at a random offset; with `flip`, half the images are mirrored. Both are done by one
    `gather` over the flattened padded planes, on whatever device `images` is on.

    Args:
        images: (B, C, H, W), any dtype (uint8 keeps the gather cheap).
        generator: a CPU generator for the random offsets and flips (reproducible runs).
        padding: pixels added on each side before cropping; 0 disables the crop.
        flip: mirror a random half of the images left-right.

    Returns:
        (B, C, H, W) of the same dtype and device.
    """
    B, C, H, W = images.shape
    dev = images.device
    P = max(0, padding)
    Hp, Wp = H + 2 * P, W + 2 * P
    x = torch.nn.functional.pad(images, (P, P, P, P)) if P else images
    oy = torch.randint(0, 2 * P + 1, (B, 1, 1), generator=generator)
    ox = torch.randint(0, 2 * P + 1, (B, 1, 1), generator=generator)
    cols = torch.arange(W).view(1, 1, W)
    if flip:
        mirrored = torch.rand(B, 1, 1, generator=generator) < 0.5
        cols = torch.where(mirrored, (W - 1) - cols, cols)  # (B, 1, W)
    # flat index into each padded (Hp, Wp) plane of the pixel that lands at (i, j)
    idx = ((oy + torch.arange(H).view(1, H, 1)) * Wp + ox + cols).to(dev)  # (B, H, W)
    idx = idx.view(B, 1, H * W).expand(B, C, H * W)
    return x.reshape(B, C, Hp * Wp).gather(2, idx).view(B, C, H, W)


def mix_batch(
    images: Tensor,
    generator: torch.Generator | None = None,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
) -> tuple[Tensor, float]:
    """Mixup or CutMix of a batch with the same batch reversed, one draw for the whole batch.

    Image i is mixed with image B-1-i (its partner's label is `labels.flip(0)`). The mixing
    weight lam ~ Beta(alpha, alpha). Mixup: lam * x_i + (1 - lam) * x_partner. CutMix: a box
    of area (1 - lam) * H * W at a uniform random centre, clipped to the image, is pasted
    from the partner, and lam becomes the share of image i's own pixels that is left. The
    matching loss is lam * CE(logits, labels) + (1 - lam) * CE(logits, labels.flip(0)).

    Args:
        images: (B, C, H, W); floating point for Mixup (CutMix only copies pixels).
        generator: CPU generator for every random draw (reproducible, exactly resumable runs).
        mixup_alpha, cutmix_alpha: Beta parameters; 0 turns that kind off.
        switch_prob: with both on, the chance that the batch gets CutMix rather than Mixup.

    Returns:
        (mixed images, lam).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0")
    u = torch.rand(3, generator=generator).tolist()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or u[0] < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    partner = images.flip(0)
    if not use_cutmix:
        if not images.is_floating_point():
            raise TypeError("Mixup needs floating-point images (normalise first)")
        return torch.lerp(partner, images, lam), lam
    H, W = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(H * cut), int(W * cut)
    cy, cx = int(u[1] * H), int(u[2] * W)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, H)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, W)
    out = images.clone()
    out[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


def normalize_batch(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (B, C, H, W) in 0-255 -> float32 (B, C, H, W), (x / 255 - mean) / std per channel."""
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.addcmul(-m / s, images.float(), 1.0 / (255.0 * s))  # one fused pass over the batch
