"""The effective receptive field against answers known by construction, and the Figure 7
measures by depth (analysis.emergence) against explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vit_core.analysis.attention import attention_entropy, mean_attention_distance
from vit_core.analysis.embeddings import position_similarity
from vit_core.analysis.emergence import (
    attention_entropy_by_depth,
    emergence_measures,
    logit_lens_accuracy_by_depth,
    mean_attention_distance_by_depth,
    model_position_structure_score,
    neighbour_pairs,
    position_structure_score,
)
from vit_core.analysis.receptive_field import centre_units, effective_receptive_field
from vit_core.cnn import CNNConfig, ResNet
from vit_core.config import ViTConfig
from vit_core.model import VisionTransformer

# ---------------------------------------------------------------- receptive field: references


class OnesConvStack(nn.Module):
    """3x3 convolutions with all-ones weights, zero padding 1, no bias, no nonlinearity: a linear
    map whose centre unit's input gradient is known by construction. No `feature_geometry`: the
    analysis falls back on its tiling rule (stride H / h, units on their cells' centres)."""

    def __init__(self, strides: list[int], width: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        chans = [in_chans] + [width] * len(strides)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=s, padding=1, bias=False) for a, b, s in zip(chans, chans[1:], strides)
        )
        for conv in self.convs:
            nn.init.ones_(conv.weight)
        self.strides = strides

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for conv in self.convs:
            x = conv(x)
            maps.append(x)
        return maps


class StridedOnesConvStack(OnesConvStack):
    """The same with its geometry stated: a 3x3 conv with padding 1 centres output unit i on
    input position stride * i, so map l's units sit on pixels (product of strides) * i."""

    def feature_geometry(self) -> list[tuple[int, float]]:
        return [(math.prod(self.strides[: k + 1]), 0.0) for k in range(len(self.strides))]


def box_self_convolution(k: int) -> np.ndarray:
    """The k-fold full convolution of a 3x3 box of ones, by loops: (2k+1, 2k+1)."""
    out = np.ones((1, 1))
    for _ in range(k):
        n = out.shape[0]
        nxt = np.zeros((n + 2, n + 2))
        for a in range(n):
            for b in range(n):
                for u in range(3):
                    for v in range(3):
                        nxt[a + u, b + v] += out[a, b]
        out = nxt
    return out


def backprop_by_loops(strides: list[int], width: int, in_chans: int, size: int, unit: tuple[int, int]) -> np.ndarray:
    """d (sum over channels of the last map at `unit`) / d input, |.| summed over colour channels,
    walked back through the all-ones convolutions one position at a time.

    All weights are 1, so the gradient is the same for every channel of a map: `g` holds it per
    channel. Going down one layer, each input position receives g from every window that covers
    it (zero padding: a window position outside the map is no input), once per output channel.
    """
    sizes = [size]
    for s in strides:
        sizes.append((sizes[-1] + 2 - 3) // s + 1)
    g = np.zeros((sizes[-1], sizes[-1]))
    g[unit] = 1.0
    for layer in range(len(strides) - 1, -1, -1):
        s, n_in = strides[layer], sizes[layer]
        below = np.zeros((n_in, n_in))
        for a in range(g.shape[0]):
            for b in range(g.shape[1]):
                for u in range(3):
                    for v in range(3):
                        y, x = s * a + u - 1, s * b + v - 1
                        if 0 <= y < n_in and 0 <= x < n_in:
                            below[y, x] += g[a, b]
        g = below * width  # every layer has `width` output channels
    return g * in_chans


def weighted_distance_by_loops(weights: np.ndarray, cy: float, cx: float) -> float:
    num = den = 0.0
    for y in range(weights.shape[0]):
        for x in range(weights.shape[1]):
            num += weights[y, x] * math.hypot(y - cy, x - cx)
            den += weights[y, x]
    return num / den


# ---------------------------------------------------------------- receptive field: tests


def test_stacked_ones_convs_give_the_self_convolved_box():
    """Depth k: the centre unit's gradient is the k-fold self-convolution of the 3x3 box, times
    width^k (channel paths) times 3 (colour channels), centred on the unit; the distance is the
    box's weighted mean distance from its centre."""
    depth, width, size = 4, 2, 21  # the field (radius 4) stays inside: padding never matters
    model = OnesConvStack([1] * depth, width=width)
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    weights, distances = effective_receptive_field(model, images)
    assert weights.shape == (depth, size, size) and distances.shape == (depth,)
    c = size // 2
    for k in range(1, depth + 1):
        box = box_self_convolution(k)
        expected = np.zeros((size, size))
        expected[c - k : c + k + 1, c - k : c + k + 1] = box * width**k * 3
        np.testing.assert_allclose(weights[k - 1].numpy(), expected, rtol=1e-6)
        assert distances[k - 1].item() == pytest.approx(weighted_distance_by_loops(box, k, k), rel=1e-6)
    # the known values: one 3x3 box has mean distance (4 * 1 + 4 * sqrt 2) / 9 from its centre
    assert distances[0].item() == pytest.approx((4 + 4 * math.sqrt(2)) / 9, rel=1e-6)


def test_even_size_with_zero_padding_against_the_loop():
    """An even input whose field reaches the border: the followed unit is 16 of 32 (nearest the
    centre 15.5, the tie to the higher index) and padding truncates the field as the loop does."""
    strides, width, size = [1] * 18, 2, 32
    model = OnesConvStack(strides, width=width)  # the tiling rule: stride 1, offset 0
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    layers = [0, 9, 17]
    weights, distances = effective_receptive_field(model, images, layers=layers)
    for n, layer in enumerate(layers):
        ref = backprop_by_loops(strides[: layer + 1], width, 3, size, (16, 16))
        np.testing.assert_allclose(weights[n].numpy() / ref.max(), ref / ref.max(), rtol=1e-5, atol=1e-7)
        assert distances[n].item() == pytest.approx(weighted_distance_by_loops(ref, 16, 16), rel=1e-5)
    assert [u for u in centre_units(model, (size, size))][0] == ((16, 16), (16.0, 16.0))


def test_strided_stack_against_the_loop():
    """Stride 2, 1, 2 on a 30-pixel input (centre 14.5): maps of 15, 15 and 8 units on pixels 2i,
    2i and 4i; the nearest to the centre are unit 7 (pixel 14) and unit 4 (pixel 16)."""
    strides, width, size = [2, 1, 2], 3, 30
    model = StridedOnesConvStack(strides, width=width)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    weights, distances = effective_receptive_field(model, images)
    units = centre_units(model, (size, size))
    assert units == [((7, 7), (14.0, 14.0)), ((7, 7), (14.0, 14.0)), ((4, 4), (16.0, 16.0))]
    for layer, ((i, j), (cy, cx)) in enumerate(units):
        ref = backprop_by_loops(strides[: layer + 1], width, 3, size, (i, j))
        np.testing.assert_allclose(weights[layer].numpy(), ref, rtol=1e-5)
        assert distances[layer].item() == pytest.approx(weighted_distance_by_loops(ref, cy, cx), rel=1e-5)
    # the last layer's field is not symmetric about the image centre but is about pixel 16
    w = weights[2].numpy()
    np.testing.assert_allclose(w[16 - 5 : 16 + 6, 16 - 5 : 16 + 6], w[16 + 5 : 16 - 6 : -1, 16 + 5 : 16 - 6 : -1])


def test_patchify_stem_without_geometry_uses_the_cell_centre():
    """A conv with kernel = stride = 4 tiles the input: unit i's cell centre is 4 i + 1.5, and its
    gradient is flat over that 4x4 cell."""
    model = nn.Module()
    model.proj = nn.Conv2d(3, 5, kernel_size=4, stride=4)
    model.feature_maps = lambda x: [model.proj(x)]
    images = torch.randn(4, 3, 16, 16)
    weights, distances = effective_receptive_field(model, images)
    assert centre_units(model, (16, 16)) == [((2, 2), (9.5, 9.5))]
    support = torch.zeros(16, 16, dtype=torch.bool)
    support[8:12, 8:12] = True
    assert torch.all(weights[0][~support] == 0) and torch.all(weights[0][support] > 0)
    expected = weights[0].numpy()[8:12, 8:12]
    assert distances[0].item() == pytest.approx(weighted_distance_by_loops(expected, 1.5, 1.5), rel=1e-6)


def test_receptive_field_batching_modes_and_gradients():
    torch.manual_seed(0)
    model = ResNet(CNNConfig(img_size=16, num_classes=3, stem_width=4, widths=(4, 8), blocks=(1, 1)))
    images = torch.randn(7, 3, 16, 16)
    model.train()
    model.stages[0].eval()  # a mixed mode must come back as it was
    w_all, d_all = effective_receptive_field(model, images, batch_size=64)
    w_bat, d_bat = effective_receptive_field(model, images, batch_size=3)  # uneven batches
    torch.testing.assert_close(w_bat, w_all, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(d_bat, d_all)
    assert model.training and not model.stages[0].training and model.stem_bn.training
    assert all(p.grad is None for p in model.parameters())
    # a subset of layers (negative indices too) is the same rows
    w_sel, d_sel = effective_receptive_field(model, images, layers=[2, -3])
    torch.testing.assert_close(w_sel, w_all[[2, 0]])
    torch.testing.assert_close(d_sel, d_all[[2, 0]])
    # the mean over images: one image at a time, averaged
    singles = torch.stack([effective_receptive_field(model, images[i : i + 1])[0] for i in range(7)])
    torch.testing.assert_close(singles.mean(0), w_all, rtol=1e-5, atol=1e-8)
    # callable from inference mode (the pages run analyses under it)
    with torch.inference_mode():
        w_inf, _ = effective_receptive_field(model, images)
    torch.testing.assert_close(w_inf, w_all)
    # depth widens the field
    assert torch.all(d_all[1:] > d_all[:-1])
    with pytest.raises(ValueError, match="outside"):
        effective_receptive_field(model, images, layers=[3])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        effective_receptive_field(model, images[0])


# ---------------------------------------------------------------- position structure score


def score_by_loops(s: np.ndarray, gh: int, gw: int) -> float:
    n = gh * gw
    neigh, every = [], []
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            every.append(s[a, b])
            (ya, xa), (yb, xb) = divmod(a, gw), divmod(b, gw)
            if abs(ya - yb) + abs(xa - xb) == 1:
                neigh.append(s[a, b])
    return float(np.mean(neigh) - np.mean(every))


def sincos_2d(gh: int, gw: int, dim: int) -> torch.Tensor:
    """A fixed 2-D sine-cosine embedding (n, dim): perfect 2-D structure."""
    ys, xs = torch.meshgrid(torch.arange(gh).float(), torch.arange(gw).float(), indexing="ij")
    freqs = 1.0 / (10.0 ** (torch.arange(dim // 4).float() / (dim // 4)))
    parts = [f(c.reshape(-1, 1) * freqs) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


def cosine(e: torch.Tensor) -> torch.Tensor:
    e = torch.nn.functional.normalize(e, dim=-1)
    return e @ e.T


def test_neighbour_pairs():
    nb = neighbour_pairs((2, 3))
    assert nb.sum().item() == 2 * 7  # 7 edges in a 2x3 grid, both directions
    assert nb[0, 1] and nb[0, 3] and not nb[0, 4] and not nb[0, 0] and torch.equal(nb, nb.T)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_position_structure_score_against_the_loop(grid):
    gh, gw = grid
    structured = cosine(sincos_2d(gh, gw, 32))
    rand = cosine(torch.randn(gh * gw, 512, generator=torch.Generator().manual_seed(0)))
    for s in (structured, rand):
        assert position_structure_score(s, grid) == pytest.approx(score_by_loops(s.numpy(), gh, gw), abs=1e-6)
    assert position_structure_score(structured, grid) > 0.2
    assert abs(position_structure_score(rand, grid)) < 0.03
    # a similarity that falls off with grid distance exactly: neighbours at exp(-1)
    ys, xs = np.divmod(np.arange(gh * gw), gw)
    d2 = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    gauss = torch.from_numpy(np.exp(-d2.astype(float)))
    assert position_structure_score(gauss, grid) == pytest.approx(score_by_loops(gauss.numpy(), gh, gw), abs=1e-9)
    assert position_structure_score(gauss, grid) > 0.25


def test_position_structure_score_of_models():
    cfg = ViTConfig(img_size=(16, 20), patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    torch.manual_seed(0)
    model = VisionTransformer(cfg)
    sim = position_similarity(model)  # (gh, gw, gh, gw) tiles are accepted as they are
    assert model_position_structure_score(model) == pytest.approx(
        score_by_loops(sim.reshape(20, 20).numpy(), 4, 5), abs=1e-6
    )
    assert abs(model_position_structure_score(model)) < 0.1  # random init: no structure yet
    with torch.no_grad():
        model.pos_embed[0, 1:] = sincos_2d(4, 5, 32)
    assert model_position_structure_score(model) > 0.2
    with torch.no_grad():
        model.pos_embed.zero_()  # no position information at all
    assert model_position_structure_score(model) == 0.0
    with pytest.raises(ValueError, match="does not fit"):
        position_structure_score(torch.zeros(6, 6), (2, 2))


# ---------------------------------------------------------------- measures by depth


VITS = {
    "cls": dict(img_size=(12, 16), patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=4),
    "registers": dict(img_size=(12, 8), patch_size=4, embed_dim=16, depth=2, num_heads=4, num_classes=3, reg_tokens=2),
    "avgpool": dict(
        img_size=(8, 12), patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=4, class_token=False,
        global_pool="avg",
    ),
}  # fmt: skip


def tiny_vit(name: str, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(ViTConfig(**VITS[name]))
    with torch.no_grad():  # larger random weights than the init, so attention is not uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(VITS))
def test_attention_measures_by_depth_match_one_trace(name):
    model = tiny_vit(name)
    cfg = model.cfg
    images = torch.randn(5, 3, *cfg.img_size, generator=torch.Generator().manual_seed(1))
    t = model.eval().trace(images)
    mad = mean_attention_distance(t.attentions, t.grid, t.patch_size, t.num_prefix_tokens)  # all 5 at once
    ent = attention_entropy(t.attentions)
    model.train()
    got_mad = mean_attention_distance_by_depth(model, images, batch_size=2)  # batches of 2, 2, 1
    torch.testing.assert_close(got_mad, mad.mean(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean_attention_distance_by_depth(model, images, 2, reduce_heads=False), mad)
    torch.testing.assert_close(attention_entropy_by_depth(model, images, batch_size=3), ent.mean(-1))
    assert got_mad.shape == (cfg.depth,) and model.training


@pytest.mark.parametrize("name", list(VITS))
def test_logit_lens_accuracy_against_a_loop(name):
    model = tiny_vit(name).eval()
    cfg = model.cfg
    g = torch.Generator().manual_seed(2)
    images = torch.randn(9, 3, *cfg.img_size, generator=g)
    labels = torch.randint(0, cfg.num_classes, (9,), generator=g)
    acc = logit_lens_accuracy_by_depth(model, images, labels, batch_size=4)
    assert acc.shape == (cfg.depth + 1,)
    with torch.no_grad():
        expected = []
        for depth in range(cfg.depth + 1):
            hits = 0
            for b in range(9):
                tokens, _, _ = model.embed(images[b : b + 1])
                for blk in model.blocks[:depth]:
                    tokens, _ = blk(tokens)
                hits += int(model.logits_from_hidden(tokens).argmax().item() == labels[b].item())
            expected.append(hits / 9)
        final = (model(images).argmax(-1) == labels).float().mean().item()
    np.testing.assert_allclose(acc.numpy(), expected, atol=1e-7)
    assert acc[-1].item() == pytest.approx(final)


def test_measures_with_drop_path_use_eval_mode():
    cfg = ViTConfig(**VITS["cls"], drop_path_rate=0.5)
    torch.manual_seed(0)
    model = VisionTransformer(cfg).train()
    images = torch.randn(4, 3, 12, 16)
    a = mean_attention_distance_by_depth(model, images)
    b = mean_attention_distance_by_depth(model, images)
    torch.testing.assert_close(a, b)
    assert model.training and model.blocks[2].drop_path.training


def test_emergence_measures_is_the_functions_together():
    model = tiny_vit("registers")
    g = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 12, 8, generator=g)
    labels = torch.randint(0, 3, (6,), generator=g)
    out = emergence_measures(model, images, labels, batch_size=4)
    assert set(out) == {
        "mean_attention_distance",
        "attention_entropy",
        "position_structure_score",
        "logit_lens_accuracy",
    }
    np.testing.assert_allclose(
        out["mean_attention_distance"], mean_attention_distance_by_depth(model, images), rtol=1e-5
    )
    np.testing.assert_allclose(out["attention_entropy"], attention_entropy_by_depth(model, images), rtol=1e-5)
    np.testing.assert_allclose(out["logit_lens_accuracy"], logit_lens_accuracy_by_depth(model, images, labels))
    assert out["position_structure_score"] == model_position_structure_score(model)
    assert "logit_lens_accuracy" not in emergence_measures(model, images)
    with pytest.raises(ValueError, match="5 labels for 6 images"):
        logit_lens_accuracy_by_depth(model, images, labels[:5])
