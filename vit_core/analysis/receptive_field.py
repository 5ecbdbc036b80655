"""Effective receptive field of a CNN's layers, in input pixels (ALGORITHMS.md, last section).

The number to plot by depth next to a ViT's mean attention distance: how far from a unit's own
position the input pixels that move it lie, weighted by how much they move it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor, nn


class FeatureMapModel(Protocol):
    """What the analysis needs: `feature_maps(x)`; `feature_geometry()` is optional."""

    def feature_maps(self, x: Tensor) -> list[Tensor]: ...


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm on running statistics, no DropPath) for the block, then every
    submodule's own mode back, even if the block raises."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _geometry(model: nn.Module, n_maps: int, input_hw: tuple[int, int], map_hws: list[tuple[int, int]]):
    """Per map: ((stride_y, offset_y), (stride_x, offset_x)); unit i sits on pixel offset + stride * i."""
    get = getattr(model, "feature_geometry", None)
    if get is not None:
        geo = list(get())
        if len(geo) != n_maps:
            raise ValueError(f"feature_geometry() gives {len(geo)} entries for {n_maps} feature maps")
        return [((float(s), float(o)), (float(s), float(o))) for s, o in geo]
    out = []
    for h, w in map_hws:  # the map tiles the input: a unit is centred on its cell
        sy, sx = input_hw[0] / h, input_hw[1] / w
        out.append(((sy, (sy - 1) / 2), (sx, (sx - 1) / 2)))
    return out


def _centre_index(size: int, input_size: int, stride: float, offset: float) -> int:
    """The unit whose position is nearest the input's centre (input_size - 1) / 2; a tie (an even
    map that tiles the input) goes to the higher index, size // 2."""
    i = math.floor(((input_size - 1) / 2 - offset) / stride + 0.5)
    return min(max(i, 0), size - 1)


def _centre_units(model: nn.Module, input_hw: tuple[int, int], map_hws: list[tuple[int, int]]):
    """Per map: the centre unit (i, j) and its position (cy, cx) in input pixels."""
    out = []
    for (h, w), ((sy, oy), (sx, ox)) in zip(map_hws, _geometry(model, len(map_hws), input_hw, map_hws)):
        i = _centre_index(h, input_hw[0], sy, oy)
        j = _centre_index(w, input_hw[1], sx, ox)
        out.append(((i, j), (oy + sy * i, ox + sx * j)))
    return out


@torch.no_grad()
def centre_units(
    model: FeatureMapModel, image_size: tuple[int, int]
) -> list[tuple[tuple[int, int], tuple[float, float]]]:
    """Which unit `effective_receptive_field` follows in each feature map, and where it sits.

    Args:
        model: has `feature_maps(x)`.
        image_size: (H, W) of the input.

    Returns:
        Per feature map, `((i, j), (cy, cx))`: the unit's index in the map and its position in
        input pixel-index coordinates (pixel (y, x) is centred on (y, x); the image's centre is
        ((H - 1) / 2, (W - 1) / 2)). See `effective_receptive_field` for the rule.
    """
    H, W = int(image_size[0]), int(image_size[1])
    p = next(model.parameters())
    C = _in_chans(model)
    with evaluating(model):
        maps = model.feature_maps(torch.zeros(1, C, H, W, device=p.device, dtype=p.dtype))
    return _centre_units(model, (H, W), [tuple(m.shape[-2:]) for m in maps])


def _in_chans(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "in_chans"):
        return int(cfg.in_chans)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def effective_receptive_field(
    model: FeatureMapModel, images: Tensor, layers: Sequence[int] | None = None, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Per feature map, the input pixels that move its centre unit, and how far away they lie.

    For map l (B, C_l, h_l, w_l) the followed unit is the sum over channels at the centre unit
    (i, j); its gradient with respect to the input, |.| summed over colour channels and averaged
    over the images, is the weight of each pixel. The distance is the weight-averaged Euclidean
    distance, in input pixels, from the unit's position (cy, cx).

    The unit's position: when the model has `feature_geometry()` (one `(stride, offset)` per
    map, as `ResNet` computes from its convolutions) unit i sits on input pixel
    `offset + stride * i`; otherwise the map is taken to tile the input evenly, stride
    s = H / h_l, and unit i sits on the centre of its cell, `s * i + (s - 1) / 2` (exact for a
    patchify conv and for stride-1 "same" convs). The centre unit is the one whose position is
    nearest the image centre (H - 1) / 2, ties to the higher index: for a 32-pixel input, map
    sizes 32, 16 and 8 with offset 0 follow units 16, 8 and 4, all at pixel 16.

    Computed in eval mode (BatchNorm on running statistics, so images do not interact), one
    backward per layer per batch of `batch_size` images; the model's modes are restored and
    no gradient is left on its parameters.

    Args:
        model: a CNN with `feature_maps(x) -> list of (B, C_l, h_l, w_l)`.
        images: (N, C, H, W) preprocessed.
        layers: indices into `feature_maps` to compute (default: all), in the order returned.
        batch_size: images per forward pass.

    Returns:
        weights (L, H, W) float32, the mean |gradient| per pixel; distances (L,) float32 in
        input pixels (NaN for a layer whose centre unit never responds to the input).
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    N, _, H, W = images.shape
    p = next(model.parameters())
    weights: Tensor | None = None
    units: list | None = None
    chosen: list[int] = []
    with evaluating(model), torch.inference_mode(False), torch.enable_grad():
        for start in range(0, N, batch_size):
            x = images[start : start + batch_size].detach().clone().to(p.device, p.dtype).requires_grad_(True)
            maps = model.feature_maps(x)
            if units is None:
                chosen = list(range(len(maps))) if layers is None else [int(v) for v in layers]
                for v in chosen:
                    if not -len(maps) <= v < len(maps):
                        raise ValueError(f"layer {v} is outside the model's {len(maps)} feature maps")
                chosen = [v % len(maps) for v in chosen]
                units = _centre_units(model, (H, W), [tuple(m.shape[-2:]) for m in maps])
                weights = torch.zeros(len(chosen), H, W, dtype=torch.float64, device=p.device)
            for n, layer in enumerate(chosen):
                (i, j), _ = units[layer]
                unit = maps[layer][:, :, i, j].sum()  # images are independent: one backward for the batch
                (grad,) = torch.autograd.grad(unit, x, retain_graph=n < len(chosen) - 1)
                weights[n] += grad.abs().sum(dim=1).sum(dim=0).double()
            del maps
    weights = weights / N
    yy = torch.arange(H, dtype=torch.float64, device=weights.device)[:, None]
    xx = torch.arange(W, dtype=torch.float64, device=weights.device)[None, :]
    distances = []
    for n, layer in enumerate(chosen):
        _, (cy, cx) = units[layer]
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        total = weights[n].sum()
        distances.append((weights[n] * dist).sum() / total if total > 0 else torch.tensor(float("nan")))
    return weights.float().cpu(), torch.stack([d.cpu() for d in distances]).float()
