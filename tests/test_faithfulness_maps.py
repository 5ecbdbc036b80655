"""The lab's maps and batched curves (vit_core.analysis.faithfulness additions), each against an
independent computation: explicit loops over patches and pixels, per-map curve calls."""

from __future__ import annotations

import math

import pytest
import torch

from vit_core.analysis import faithfulness as F


@pytest.fixture(scope="module")
def vit(make_vit):
    """A tiny peaked ViT on a non-square 2x3 grid with 4 classes, and one input."""
    model = make_vit(img_size=(8, 12), patch_size=4, num_classes=4, depth=2, weight_std=0.3, embed_dim=16)
    x = torch.randn(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    return model, x


def paint_mean(x: torch.Tensor, patch: int, P: int, gw: int) -> torch.Tensor:
    """x with one patch painted in the image's per-channel mean colour, by hand."""
    y = x.clone()
    r, c = divmod(patch, gw)
    for ch in range(x.shape[1]):
        y[0, ch, r * P : (r + 1) * P, c * P : (c + 1) * P] = x[0, ch].mean()
    return y


def test_occlusion_sensitivity_is_the_drop_when_each_patch_alone_is_hidden(vit):
    model, x = vit
    target = 2
    got = F.occlusion_sensitivity(model, x, target, batch_size=4)  # batches of 4: 6 patches in 2 forwards
    assert got.shape == (2, 3) and got.dtype == torch.float64
    with torch.no_grad():
        p0 = float(model(x).double().softmax(-1)[0, target])
        for i in range(6):
            p = float(model(paint_mean(x, i, 4, 3)).double().softmax(-1)[0, target])
            assert got.reshape(-1)[i].item() == pytest.approx(p0 - p, abs=1e-6)


def test_input_x_gradient_sums_each_patch_of_x_times_the_logit_gradient(vit):
    model, x = vit
    target = 1
    got = F.input_x_gradient(model, x, target)
    assert got.shape == (2, 3)
    # finite differences of the logit per pixel and channel, summed by hand per patch
    eps = 1e-3
    xd = x.double()
    m = model.double()
    want = torch.zeros(2, 3, dtype=torch.float64)
    with torch.no_grad():
        for ch in range(3):
            for r in range(8):
                for c in range(12):
                    up, down = xd.clone(), xd.clone()
                    up[0, ch, r, c] += eps
                    down[0, ch, r, c] -= eps
                    g = (m(up)[0, target] - m(down)[0, target]) / (2 * eps)
                    want[r // 4, c // 4] += float(g) * float(xd[0, ch, r, c])
    model.float()
    assert torch.allclose(got, want, atol=2e-3, rtol=1e-3), (got, want)
    assert all(p.grad is None for p in model.parameters())  # the model's own gradients untouched


def test_saliency_maps_match_the_trace_and_the_library_maps(vit):
    from vit_core.analysis import class_attention_map, rollout_cls_map

    model, x = vit
    maps = F.saliency_maps(model, x, 3, head_fusion="max", discard_ratio=0.5, start_layer=1)
    assert list(maps) == list(F.SALIENCY_METHODS)
    tr = model.trace(x)
    raw = torch.stack([tr.attentions[0, -1, h, 0, 1:] for h in range(model.cfg.num_heads)]).double().mean(0)
    assert torch.allclose(maps["raw attention"].reshape(-1), raw, atol=1e-6)
    roll = rollout_cls_map(tr.attentions, tr.grid, 1, "max", 0.5, 1)[0].double()
    assert torch.allclose(maps["rollout"], roll, atol=1e-6)
    assert torch.allclose(maps["class-specific"], class_attention_map(model, x, 3)[0].double(), atol=1e-6)
    assert torch.equal(maps["occlusion"], F.occlusion_sensitivity(model, x, 3))
    assert torch.allclose(maps["input x gradient"], F.input_x_gradient(model, x, 3))
    only = F.saliency_maps(model, x, 3, methods=("occlusion", "raw attention"))
    assert list(only) == ["occlusion", "raw attention"]
    with pytest.raises(ValueError, match="unknown saliency methods"):
        F.saliency_maps(model, x, 3, methods=("grad-cam",))


def test_lab_curves_are_each_maps_own_curves_and_random_rankings(vit):
    model, x = vit
    maps = F.saliency_maps(model, x, 0)
    c = F.lab_curves(model, x, maps, 0, random_seeds=3, k=2, seed=5, batch_size=7)
    assert c.names == list(maps) and c.fractions.tolist() == [0, 1 / 3, 2 / 3, 1]
    for row, m in enumerate(maps.values()):
        assert torch.allclose(c.deletion[row], F.deletion_curve(model, x, m, 0, k=2), atol=1e-6)
        assert torch.allclose(c.insertion[row], F.insertion_curve(model, x, m, 0, k=2), atol=1e-6)
    rand = F.random_saliencies(6, 3, seed=5)
    for r in range(3):
        assert torch.allclose(c.random_deletion[r], F.deletion_curve(model, x, rand[r], 0, k=2), atol=1e-6)
    areas = c.areas()
    d_rand = [F.curve_area(c.random_deletion[r], c.fractions) for r in range(3)]
    assert areas["random"][0] == pytest.approx(sum(d_rand) / 3)
    assert areas["occlusion"][1] == pytest.approx(F.curve_area(c.insertion[3], c.fractions))
    spread_d, spread_i = c.random_area_spread()
    assert spread_d.tolist() == pytest.approx(d_rand)
    assert spread_i.shape == (3,)


def test_lab_summary_collects_each_images_areas_and_agreement(vit):
    model, x = vit
    xs = torch.cat([x, x.flip(-1)])
    targets = torch.tensor([1, 2])
    done = []
    s = F.lab_summary(model, xs, targets, random_seeds=2, k=3, progress=lambda d, t: done.append((d, t)))
    assert done == [(0, 2), (1, 2), (2, 2)]
    assert s.names == [*F.SALIENCY_METHODS, F.RANDOM] and s.deletion.shape == (2, 6)
    for b in range(2):
        maps = F.saliency_maps(model, xs[b : b + 1], int(targets[b]))
        c = F.lab_curves(model, xs[b : b + 1], maps, int(targets[b]), random_seeds=2, k=3)
        a = c.areas()
        assert s.deletion[b].tolist() == pytest.approx([a[m][0] for m in s.names])
        assert s.insertion[b].tolist() == pytest.approx([a[m][1] for m in s.names])
        rho, over = F.agreement_matrix(torch.stack([m.reshape(-1) for m in maps.values()]))
        assert torch.allclose(s.spearman[b], rho, equal_nan=True) and torch.equal(s.top_overlap[b], over)
    assert s.mean_deletion.shape == (6, math.ceil(6 / 3) + 1)
    with pytest.raises(ValueError, match="one target each"):
        F.lab_summary(model, xs, torch.tensor([1]))
