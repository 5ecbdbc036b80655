"""vit_core.analysis: invariants, loop-based references on random inputs, and known bugs.

Grids are deliberately non-square and prefix counts vary (class only; class + distillation;
class + 3 registers; none with average pooling) so that nothing can assume 14x14 or one CLS.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import _analysis_refs as ref
from vit_core import VisionTransformer
from vit_core import analysis as A

CONFIGS = {
    # 4x4 grid, class token only
    "square_cls": dict(img_size=(16, 16), patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=7),
    # 3x5 grid, class + distillation token (k = 2)
    "wide_distill": dict(
        img_size=(24, 40), patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10, distill_token=True
    ),
    # 5x3 grid, class + 3 registers (k = 4), position embeddings on patches only
    "tall_registers": dict(
        img_size=(20, 12), patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=5, reg_tokens=3,
        no_embed_class=True,
    ),
    # 2x3 grid, no prefix token, average pooling (k = 0)
    "avgpool": dict(
        img_size=(8, 12), patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=4, class_token=False,
        global_pool="avg",
    ),
}  # fmt: skip
WITH_CLS = ["square_cls", "wide_distill", "tall_registers"]
TOL = dict(rtol=1e-4, atol=1e-5)


WEIGHT_STD = 0.4  # every parameter redrawn at a scale that makes attention peaked


@pytest.fixture(scope="module")
def models(make_vit) -> dict[str, VisionTransformer]:
    return {name: make_vit(weight_std=WEIGHT_STD, **CONFIGS[name]) for name in CONFIGS}


def image_for(model: VisionTransformer, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.cfg.img_size, generator=g)


def random_attentions(B: int, L: int, H: int, N: int, seed: int = 0, sharp: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (sharp * torch.randn(B, L, H, N, N, generator=g)).softmax(-1)


def close(actual, expected, **kw) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), **(kw or TOL)
    )


# ----------------------------------------------------------------------------- patches


@pytest.mark.parametrize("name", list(CONFIGS))
def test_patchify_matches_loops_and_roundtrips(models, name):
    model = models[name]
    x = image_for(model)
    P, (gh, gw) = model.patch_size, model.cfg.grid_size
    got = A.patchify(x, P)
    assert got.shape == (2, gh * gw, 3 * P * P)
    close(got, ref.patchify(x.tolist(), P), rtol=0, atol=0)
    assert torch.equal(A.unpatchify(got, (gh, gw), P, 3), x)


def test_patch_boxes_tile_the_image():
    grid, P = (3, 5), 8
    boxes = A.patch_boxes(grid, P)
    assert boxes.shape == (15, 4)
    for t in range(15):
        i, j = divmod(t, 5)
        assert boxes[t].tolist() == [j * P, i * P, j * P + P, i * P + P]
    assert boxes[:, 2].max() == 40 and boxes[:, 3].max() == 24  # width 40, height 24


def test_patchify_rejects_a_partial_patch():
    with pytest.raises(ValueError, match="multiple"):
        A.patchify(torch.zeros(1, 3, 20, 16), 8)


@pytest.mark.parametrize("name", ["wide_distill", "tall_registers"])
def test_conv_vs_linear_agree_and_match_loops(models, name):
    model = models[name]
    x = image_for(model, batch=1)
    out = A.conv_vs_linear(model, x)
    assert out["conv"].shape == out["linear"].shape == (1, math.prod(model.cfg.grid_size), model.cfg.embed_dim)
    assert out["max_abs_diff"] < 1e-4
    w = model.patch_embed.proj.weight.reshape(model.cfg.embed_dim, -1).tolist()
    b = model.patch_embed.proj.bias.tolist()
    patches = ref.patchify(x.tolist(), model.patch_size)[0]
    expected = [ref.linear(w, b, p) for p in patches]
    close(out["linear"][0], expected, rtol=1e-4, atol=1e-4)
    close(out["conv"][0], expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("name", ["square_cls", "tall_registers"])
def test_embedding_pca_matches_loops_and_is_orthonormal(models, name):
    model = models[name]
    k = 5
    comps, ratio = A.embedding_pca_components(model, k)
    f = 3 * model.patch_size**2
    assert comps.shape == (k, f) and ratio.shape == (k,)
    close(comps @ comps.T, np.eye(k), atol=1e-5)
    assert torch.all(ratio[:-1] >= ratio[1:]) and float(ratio.sum()) <= 1 + 1e-6
    w = model.patch_embed.proj.weight.reshape(model.cfg.embed_dim, -1).tolist()
    ref_comps, _, ref_ratio = ref.pca(w, k)
    close(ratio, ref_ratio, rtol=1e-4, atol=1e-6)
    close(comps, ref_comps, atol=1e-3)
    # Display form: (k, P, P, C), each scaled to [0, 1] with both ends reached.
    P = model.patch_size
    imgs = A.embedding_filters_pca(model, k)
    assert imgs.shape == (k, P, P, 3)
    for c in range(k):
        flat_ref = ref.minmax(ref_comps[c])  # (c p1 p2) order
        for ch in range(3):
            for p1 in range(P):
                for p2 in range(P):
                    assert abs(float(imgs[c, p1, p2, ch]) - flat_ref[ch * P * P + p1 * P + p2]) < 2e-3


def test_embedding_pca_default_k_is_28_and_capped(models):
    assert A.embedding_filters_pca(models["wide_distill"]).shape == (28, 8, 8, 3)  # D = 32, C*P*P = 192
    assert A.embedding_filters_pca(models["avgpool"]).shape[0] == 16  # only D = 16 filters exist
    comps, ratio = A.embedding_pca_components(models["avgpool"], 28)  # the 16th has zero variance
    close(comps @ comps.T, np.eye(16), atol=1e-5)
    assert float(ratio[-1]) < 1e-6


def test_embedding_pca_follows_the_weights(make_vit):
    """No process-wide cache: the components always describe the weights as they are now."""
    model = make_vit(3, weight_std=WEIGHT_STD, **CONFIGS["square_cls"])
    first, _ = A.embedding_pca_components(model, 4)
    assert torch.equal(A.embedding_pca_components(model, 4)[0], first)  # deterministic
    with torch.no_grad():
        model.patch_embed.proj.weight.mul_(torch.linspace(0.5, 2.0, 16 * 3)[None].reshape(1, 3, 4, 4))
    changed, _ = A.embedding_pca_components(model, 4)
    assert not torch.allclose(changed, first, atol=1e-3)
    model.patch_embed.proj.weight.data[0, 0, 0, 0] += 5.0  # .data bypasses the version counter
    after, _ = A.embedding_pca_components(model, 4)
    w = model.patch_embed.proj.weight.detach().double().flatten(1)
    vh = torch.linalg.svd(w - w.mean(0), full_matrices=False).Vh[:4]  # independent: SVD of the centred filters
    close(torch.abs((after.double() * vh).sum(-1)), np.ones(4), atol=1e-5)


def test_filters_pca_and_variance_come_from_one_pca(make_vit):
    model = make_vit(5, weight_std=WEIGHT_STD, **CONFIGS["square_cls"])
    imgs, ratio = A.embedding_filters_pca_and_variance(model, 6)
    assert torch.equal(imgs, A.embedding_filters_pca(model, 6))
    assert torch.equal(ratio, A.embedding_pca_components(model, 6)[1])


def test_raw_embedding_filters(models):
    model = models["wide_distill"]
    filt = A.embedding_filters(model)
    assert filt.shape == (32, 8, 8, 3)
    w = model.patch_embed.proj.weight
    for d in (0, 17, 31):
        vals = w[d].permute(1, 2, 0).reshape(-1).tolist()  # (p1, p2, c)
        close(filt[d].reshape(-1), ref.minmax(vals), atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_position_similarity_matches_loops(models, name):
    model = models[name]
    gh, gw = model.cfg.grid_size
    sim = A.position_similarity(model)
    assert sim.shape == (gh, gw, gh, gw)
    pos = model.pos_embed[0]
    k = 0 if model.cfg.no_embed_class else model.num_prefix_tokens
    cos = ref.cosine_matrix(pos[k:].tolist())
    for i in range(gh):
        for j in range(gw):
            close(sim[i, j].reshape(-1), cos[i * gw + j], atol=1e-5)
            assert abs(float(sim[i, j, i, j]) - 1.0) < 1e-5


def test_position_similarity_on_a_resampled_grid(models):
    model = models["wide_distill"]  # learned for 3x5
    sim = A.position_similarity(model, grid=(4, 2))
    assert sim.shape == (4, 2, 4, 2)
    diag = torch.stack([sim[i, j, i, j] for i in range(4) for j in range(2)])
    close(diag, np.ones(8), atol=1e-5)


# ----------------------------------------------------------------------------- attention


CASES = [  # (B, L, H, grid, k, patch_size)
    (2, 3, 4, (3, 5), 2, 8),  # non-square, class + distillation
    (1, 2, 2, (5, 3), 4, 4),  # non-square, class + 3 registers
    (2, 2, 3, (4, 4), 1, 16),
]


@pytest.mark.parametrize("B,L,H,grid,k,P", CASES)
def test_mean_attention_distance_matches_loops(B, L, H, grid, k, P):
    att = random_attentions(B, L, H, k + grid[0] * grid[1])
    got = A.mean_attention_distance(att, grid, P, k)
    assert got.shape == (L, H)
    close(got, ref.mean_attention_distance(att.tolist(), grid, P, k))


def test_mean_attention_distance_extremes():
    grid, k, P = (3, 5), 2, 8
    N = k + 15
    eye = torch.eye(N).expand(1, 2, 3, N, N)
    assert float(A.mean_attention_distance(eye, grid, P, k).abs().max()) == 0.0
    uniform = torch.full((1, 1, 1, N, N), 1.0 / N)
    d = A.grid_distances(grid)
    close(A.mean_attention_distance(uniform, grid, P, k)[0, 0], float(d.mean()) * P)


@pytest.mark.parametrize("B,L,H,grid,k,P", CASES)
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.4, 0.8])  # 0.8: the keep-the-largest path
def test_rollout_matches_loops_and_rows_sum_to_one(B, L, H, grid, k, P, fusion, discard):
    att = random_attentions(B, L, H, k + grid[0] * grid[1], seed=3)
    start = 1 if L > 2 else 0
    got = A.attention_rollout(att, fusion, discard, start, num_prefix_tokens=k)
    expected = ref.rollout(att.tolist(), fusion, discard, start, k)
    close(got, expected)
    close(got.sum(-1), np.ones(got.shape[:2]), atol=1e-5)
    cls_map = A.rollout_cls_map(att, grid, k, fusion, discard, start)
    assert cls_map.shape == (B, *grid)
    close(cls_map, ref.cls_row_map(expected, grid, k))


def test_rollout_keepdim_bug_is_not_reproduced():
    """Column-broadcast renormalisation (vit-explain issue 16) gives a different answer."""
    att = random_attentions(1, 3, 4, 2 + 15, seed=5)
    ours = A.attention_rollout(att, "max", 0.3, num_prefix_tokens=2)
    buggy = torch.tensor(ref.rollout(att.tolist(), "max", 0.3, 0, 2, keepdim=False))
    assert float((ours - buggy).abs().max()) > 1e-2
    close(ours.sum(-1), np.ones((1, 17)), atol=1e-5)
    assert float((buggy.sum(-1) - 1).abs().max()) > 1e-3  # the bug breaks row sums


def test_rollout_discard_never_touches_prefix_keys():
    k, n = 3, 8
    N = k + n
    att = random_attentions(1, 1, 1, N, seed=7)
    full = A.attention_rollout(att, discard_ratio=0.0, num_prefix_tokens=k)
    cut = A.attention_rollout(att, discard_ratio=0.9, num_prefix_tokens=k)  # drops 7 of 8 patch keys
    # With one layer, Ahat = (0.5 A' + 0.5 I) / rowsum: prefix columns shrink only by the renormalisation.
    ratio = cut[0, :, :k] / full[0, :, :k]
    assert torch.all(ratio >= 1 - 1e-6)  # nothing removed from them, only mass gained
    assert int((cut[0, :, k:] == 0).sum(-1).min()) >= n - 2  # 7 dropped (one may be the diagonal)


def test_rollout_identity_and_uniform():
    grid, k = (3, 5), 2
    N = k + 15
    eye = torch.eye(N).expand(2, 4, 3, N, N)
    for fusion in ("mean", "max", "min"):
        assert torch.allclose(A.attention_rollout(eye, fusion, num_prefix_tokens=k), torch.eye(N).expand(2, N, N))
    uniform = torch.full((2, 4, 3, N, N), 1.0 / N)
    cls_map = A.rollout_cls_map(uniform, grid, k)
    close(cls_map, torch.full_like(cls_map, float(cls_map[0, 0, 0])), atol=1e-7)
    close(A.attention_entropy(uniform), np.full((4, 3), math.log(N)))


def test_rollout_rejects_a_grid_that_does_not_fit():
    att = random_attentions(1, 2, 2, 1 + 196)
    with pytest.raises(ValueError, match="prefix"):
        A.rollout_cls_map(att, (14, 13), 1)
    with pytest.raises(ValueError):
        A.attention_rollout(att, head_fusion="median")


@pytest.mark.parametrize("B,L,H,grid,k,P", CASES)
def test_chefer_matches_loops_and_pairs_layers(B, L, H, grid, k, P):
    N = k + grid[0] * grid[1]
    att = random_attentions(B, L, H, N, seed=11)
    grads = torch.randn(B, L, H, N, N, generator=torch.Generator().manual_seed(12))
    got = A.chefer_relevance(att, grads, k)
    close(got, ref.chefer(att.tolist(), grads.tolist()))
    reverse = torch.tensor(ref.chefer(att.tolist(), grads.tolist(), reverse_pairing=True))
    assert float((got - reverse).abs().max()) > 1e-3  # the vit-explain issue 6 pairing differs
    assert torch.equal(A.chefer_relevance(att, torch.zeros_like(att), k), torch.eye(N).expand(B, N, N))


@pytest.mark.parametrize("name", WITH_CLS)
def test_class_attention_map_from_a_real_trace(models, name):
    model = models[name]
    x = image_for(model)
    target = 3
    trace = model.trace(x, target=target)
    k, grid = trace.num_prefix_tokens, trace.grid
    expected = ref.cls_row_map(ref.chefer(trace.attentions.tolist(), trace.attention_grads.tolist()), grid, k)
    got = A.class_attention_map(model, x, target)
    assert got.shape == (2, *grid)
    close(got, expected, rtol=1e-4, atol=1e-5)
    close(A.class_attention_map_from_trace(trace), expected, rtol=1e-4, atol=1e-5)
    # The same-layer pairing differs from the reversed one on a real model too.
    reverse = ref.cls_row_map(
        ref.chefer(trace.attentions.tolist(), trace.attention_grads.tolist(), reverse_pairing=True), grid, k
    )
    assert not np.allclose(np.array(expected), np.array(reverse), rtol=1e-3, atol=1e-6)
    # Another target gives another map (the gradients are class-specific).
    assert not torch.allclose(A.class_attention_map(model, x, 0), got)


def test_class_attention_map_needs_gradients(models):
    model = models["square_cls"]
    with pytest.raises(ValueError, match="target"):
        A.class_attention_map_from_trace(model.trace(image_for(model)))


@pytest.mark.parametrize("B,L,H,grid,k,P", CASES)
@pytest.mark.parametrize("mass", [None, 0.6, 1.0, 0.0])
def test_last_layer_heads_matches_loops(B, L, H, grid, k, P, mass):
    att = random_attentions(B, L, H, k + grid[0] * grid[1], seed=13)
    got = A.last_layer_heads(att, grid, k, mass)
    assert got.shape == (B, H, *grid)
    close(got, ref.last_layer_heads(att.tolist(), grid, k, mass), rtol=0, atol=1e-7)


def test_last_layer_heads_mass_is_the_smallest_set():
    grid, k = (3, 5), 2
    att = random_attentions(2, 2, 3, k + 15, seed=17)
    row = att[:, -1, :, 0, k:]
    kept = A.last_layer_heads(att, grid, k, mass=0.7).reshape(2, 3, 15)
    share = kept.sum(-1) / row.sum(-1)
    assert torch.all(share >= 0.7 - 1e-6)
    smallest_kept = torch.where(kept > 0, kept, torch.full_like(kept, float("inf"))).amin(-1)
    assert torch.all((kept.sum(-1) - smallest_kept) / row.sum(-1) < 0.7)  # one fewer is not enough


@pytest.mark.parametrize("B,L,H,grid,k,P", CASES)
def test_attention_entropy_matches_loops(B, L, H, grid, k, P):
    att = random_attentions(B, L, H, k + grid[0] * grid[1], seed=19)
    att[0, 0, 0, 0] = 0.0
    att[0, 0, 0, 0, 0] = 1.0  # a one-hot row: 0 log 0 must count as 0
    got = A.attention_entropy(att)
    assert got.shape == (L, H) and torch.isfinite(got).all()
    close(got, ref.entropy(att.tolist()))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_head_computation_matches_loops_and_trace(models, name):
    model = models[name]
    trace = model.trace(image_for(model, batch=1))
    layer, head = model.cfg.depth - 1, model.cfg.num_heads - 1
    N = trace.attentions.shape[-1]
    query = N - 2
    out = A.head_computation(model, trace, layer, head, query)
    d = model.cfg.head_dim
    assert out["q"].shape == (d,) and out["k"].shape == (N, d) and out["v"].shape == (N, d)
    assert out["scores"].shape == out["weights"].shape == (N,) and out["output"].shape == (d,)
    close(out["weights"], trace.attentions[0, layer, head, query], rtol=1e-4, atol=1e-6)
    # Loop reference from the hidden state through norm1 and qkv.
    blk = model.blocks[layer]
    D = model.cfg.embed_dim
    w, b = blk.attn.qkv.weight.tolist(), blk.attn.qkv.bias.tolist()
    rows = []
    for tok in trace.hidden_states[0, layer].tolist():
        normed = ref.layer_norm(tok, blk.norm1.weight.tolist(), blk.norm1.bias.tolist(), blk.norm1.eps)
        rows.append(ref.linear(w, b, normed))
    q = rows[query][head * d : head * d + d]
    keys = [r[D + head * d : D + head * d + d] for r in rows]
    vals = [r[2 * D + head * d : 2 * D + head * d + d] for r in rows]
    scores = [sum(q[i] * kk[i] for i in range(d)) / math.sqrt(d) for kk in keys]
    weights = ref.softmax(scores)
    output = [sum(weights[t] * vals[t][i] for t in range(N)) for i in range(d)]
    close(out["q"], q, rtol=1e-4, atol=1e-4)
    close(out["k"], keys, rtol=1e-4, atol=1e-4)
    close(out["scores"], scores, rtol=1e-4, atol=1e-4)
    close(out["weights"], weights, rtol=1e-4, atol=1e-6)
    close(out["output"], output, rtol=1e-4, atol=1e-4)


def test_map_to_image_scales_to_unit_max():
    m = torch.rand(2, 3, 5)
    up = A.map_to_image(m, (24, 40), mode="nearest")
    assert up.shape == (2, 24, 40)
    close(up.flatten(1).amax(1), [1.0, 1.0])
    close(up[:, ::8, ::8], m / m.flatten(1).amax(1)[:, None, None])


# ----------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logit_lens_matches_loops(models, name):
    model = models[name]
    trace = model.trace(image_for(model))
    probs = A.logit_lens(model, trace)
    L, C = model.cfg.depth, model.cfg.num_classes
    assert probs.shape == (2, L + 1, C)
    close(probs[:, -1], trace.probs, rtol=1e-4, atol=1e-6)
    close(probs.sum(-1), np.ones((2, L + 1)), atol=1e-5)
    k = model.num_prefix_tokens
    for b in range(2):
        for depth in range(L + 1):
            hid = trace.hidden_states[b, depth]
            if model.cfg.global_pool == "avg":
                pooled = [sum(col) / (hid.shape[0] - k) for col in zip(*hid[k:].tolist())]
                fc = model.fc_norm
                feats = [ref.layer_norm(pooled, fc.weight.tolist(), fc.bias.tolist(), fc.eps)]
                heads = [model.head]
            else:
                nrm = model.norm
                feats = [
                    ref.layer_norm(hid[t].tolist(), nrm.weight.tolist(), nrm.bias.tolist(), nrm.eps) for t in (0, 1)
                ]
                heads = [model.head, model.head_dist] if model.cfg.distill_token else [model.head]
            outs = [ref.linear(h.weight.tolist(), h.bias.tolist(), f) for h, f in zip(heads, feats)]
            logits = [sum(o[c] for o in outs) / len(outs) for c in range(C)]
            close(probs[b, depth], ref.softmax(logits), rtol=1e-4, atol=1e-6)


def planted_hidden_states(B: int, L: int, N: int, D: int, seed: int = 0) -> torch.Tensor:
    """Random tokens with well-separated variances per direction (a clean PCA spectrum)."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    scales = torch.tensor([4.0, 2.5, 1.5] + [0.3] * (D - 3))
    return torch.randn(B, L + 1, N, D, generator=g) * scales @ basis.T + torch.randn(D, generator=g)


@pytest.mark.parametrize("grid,k", [((3, 5), 2), ((5, 3), 4), ((4, 4), 1), ((2, 3), 0)])
def test_token_pca_matches_loops(grid, k):
    n = grid[0] * grid[1]
    hs = planted_hidden_states(2, 2, k + n, 12)
    layer = 1
    rgb = A.token_pca_rgb(hs, layer, grid, k)
    coords = A.token_pca(hs, layer, k, k=2)
    assert rgb.shape == (2, *grid, 3) and coords.shape == (2, n, 2)
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    for b in range(2):
        _, ref_coords, _ = ref.pca(hs[b, layer, k:].tolist(), 3)
        close(coords[b], [c[:2] for c in ref_coords], rtol=1e-3, atol=1e-3)
        for c in range(3):
            scaled = ref.minmax([ref_coords[t][c] for t in range(n)])
            close(rgb[b, ..., c].reshape(-1), scaled, rtol=1e-3, atol=1e-3)


def test_token_pca_pads_components_that_cannot_exist():
    hs = planted_hidden_states(1, 1, 1 + 2, 8)  # two patches: one non-zero component at most
    coords = A.token_pca(hs, 0, 1, k=3)
    assert coords.shape == (1, 2, 3)
    assert float(coords[..., 1:].abs().max()) < 1e-5  # centred, two points span one direction
    assert float(coords[..., 0].abs().min()) > 1e-3


# ----------------------------------------------------------------------------- what-ifs


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_occlusion_paints_the_patches(models, name, mode):
    model = models[name]
    x = image_for(model)
    patches = [0, 2, math.prod(model.cfg.grid_size) - 1]
    painted = A.occlude_image(x, patches, model.patch_size, mode)
    close(painted, ref.occlude_image(x.tolist(), patches, model.patch_size, mode), atol=1e-6)
    with torch.no_grad():
        close(A.occlude_patches(model, x, patches, mode), model(painted), **TOL)
        close(A.occlude_patches(model, x, [], mode), model(x), **TOL)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_occlusion_drop_removes_tokens_and_keeps_positions(models, name):
    model = models[name]
    x = image_for(model)
    k = model.num_prefix_tokens
    dropped = [1, 3]
    got = A.occlude_patches(model, x, dropped, "drop")
    with torch.no_grad():
        tokens, _, _ = model.embed(x)  # positions already added
        keep = [t for t in range(tokens.shape[1]) if t < k or t - k not in dropped]
        h = tokens[:, keep]
        for blk in model.blocks:
            h, _ = blk(h)
        close(got, model.forward_head(model.norm(h)), **TOL)
        close(A.occlude_patches(model, x, [], "drop"), model(x), **TOL)
        assert not torch.allclose(got, model(x), atol=1e-4)
    with pytest.raises(ValueError):
        A.occlude_patches(model, x, [10_000], "drop")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shuffle_definitions(models, name):
    model = models[name]
    x = image_for(model)
    P = model.patch_size
    with torch.no_grad():
        base = model(x)
        # keep_positions=True: tokens only reordered -> same prediction.
        moved, perm = A.shuffle_patches(model, x, seed=3, keep_positions=True)
        assert sorted(perm.tolist()) == list(range(math.prod(model.cfg.grid_size)))
        close(moved, base, rtol=1e-4, atol=1e-4)
        # keep_positions=False: same as feeding the shuffled image.
        wrong_place, _ = A.shuffle_patches(model, x, perm, keep_positions=False)
        shuffled = torch.tensor(ref.shuffle_image(x.tolist(), perm.tolist(), P))
        close(A.shuffle_image(x, perm, P), shuffled, rtol=0, atol=0)
        close(wrong_place, model(shuffled), **TOL)
        assert not torch.allclose(wrong_place, base, atol=1e-3)
        # Identity permutation with fixed positions is the plain forward.
        ident, _ = A.shuffle_patches(model, x, torch.arange(len(perm)), keep_positions=False)
        close(ident, base, **TOL)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vit_without_position_embeddings_is_permutation_invariant(models, name, make_vit):
    model = models[name]
    x = image_for(model)
    n = math.prod(model.cfg.grid_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    # The option in shuffle_patches: any permutation, any keep_positions, same logits.
    a, _ = A.shuffle_patches(model, x, perm, use_pos_embed=False)
    b, _ = A.shuffle_patches(model, x, torch.arange(n), use_pos_embed=False)
    c, _ = A.shuffle_patches(model, x, perm.flip(0), keep_positions=False, use_pos_embed=False)
    close(a, b, rtol=1e-4, atol=1e-4)
    close(c, b, rtol=1e-4, atol=1e-4)
    # A model whose position embeddings are zeroed, fed the shuffled image.
    zeroed = make_vit(weight_std=WEIGHT_STD, **CONFIGS[name])
    with torch.no_grad():
        zeroed.pos_embed.zero_()
        close(zeroed(A.shuffle_image(x, perm, model.patch_size)), zeroed(x), rtol=1e-4, atol=1e-4)
        close(zeroed(x), b, rtol=1e-4, atol=1e-4)  # same thing as dropping positions
        assert not torch.allclose(model(A.shuffle_image(x, perm, model.patch_size)), model(x), atol=1e-3)


def test_shuffle_rejects_a_non_permutation(models):
    model = models["wide_distill"]
    with pytest.raises(ValueError, match="permutation"):
        A.shuffle_patches(model, image_for(model), torch.zeros(15, dtype=torch.long))


# ----------------------------------------------------------------------------- grids


def test_no_hard_coded_imagenet_grid_in_the_library():
    """14x14 = 196 patches (197 tokens) must come from the inputs, never from a literal."""
    src = Path(__file__).resolve().parents[1] / "vit_core" / "analysis"
    for path in src.glob("*.py"):
        text = path.read_text()
        for literal in ("14", "196", "197", "224"):
            assert f" {literal}" not in text and f"({literal}" not in text, f"{literal} in {path.name}"


def test_maps_without_prefix_tokens_use_the_patch_row_mean(models):
    """With no class token (average pooling) the maps average the patch rows."""
    model = models["avgpool"]
    x = image_for(model)
    trace = model.trace(x, target=1)
    grid, att = trace.grid, trace.attentions
    joint = torch.tensor(ref.rollout(att.tolist(), k=0))
    close(A.rollout_cls_map(att, grid, 0), joint.mean(1).reshape(2, *grid))
    rel = torch.tensor(ref.chefer(att.tolist(), trace.attention_grads.tolist()))
    close(A.class_attention_map_from_trace(trace), rel.mean(1).reshape(2, *grid), rtol=1e-4, atol=1e-5)
    close(A.last_layer_heads(att, grid, 0), att[:, -1].mean(2).reshape(2, -1, *grid))


def test_views_work_under_inference_mode(make_vit):
    """The app may call everything inside torch.inference_mode(), model loaded there too."""
    with torch.inference_mode():
        model = make_vit(weight_std=WEIGHT_STD, **CONFIGS["wide_distill"])
        x = image_for(model)
        trace = model.trace(x)
        grid, k = trace.grid, trace.num_prefix_tokens
        assert A.embedding_filters_pca(model, 4).shape == (4, 8, 8, 3)
        assert A.position_similarity(model).shape == (*grid, *grid)
        assert A.rollout_cls_map(trace.attentions, grid, k, discard_ratio=0.5).shape == (2, *grid)
        assert A.logit_lens(model, trace).shape == (2, 4, 10)
        assert A.head_computation(model, trace, 0, 0, 0)["weights"].shape == (k + 15,)
        assert A.occlude_patches(model, x, [0], "drop").shape == (2, 10)
        assert A.shuffle_patches(model, x)[0].shape == (2, 10)


@pytest.mark.parametrize("placement", ["pre", "post", "stream"])
def test_head_computation_matches_the_trace_for_every_norm_placement(placement: str) -> None:
    from vit_core import VisionTransformer, ViTConfig
    from vit_core.analysis.attention import head_computation

    torch.manual_seed(1)
    cfg = ViTConfig(
        img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3, norm_placement=placement
    )
    model = VisionTransformer(cfg).eval()
    trace = model.trace(torch.randn(1, 3, 8, 8))
    for layer in range(2):
        for head in range(2):
            for query in range(trace.attentions.shape[-1]):
                got = head_computation(model, trace, layer, head, query)["weights"]
                want = trace.attentions[0, layer, head, query].numpy()
                assert np.allclose(got, want, atol=1e-5), (placement, layer, head, query)


def test_conv_vs_linear_agrees_for_a_patch_embedding_with_layernorms() -> None:
    """vit-pytorch's LN -> Linear -> LN patch embedding: the Conv2d on the normalised patches equals
    the Linear, and after the token norm it is what the model feeds the encoder."""
    from vit_core import VisionTransformer, ViTConfig

    torch.manual_seed(2)
    cfg = ViTConfig(img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3, patch_norm=True)
    model = VisionTransformer(cfg).eval()
    with torch.no_grad():
        model.patch_embed.pixel_norm.weight.uniform_(0.5, 1.5)
        model.patch_embed.pixel_norm.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = A.conv_vs_linear(model, x)
        tokens, _ = model.patch_embed(x)
    assert out["max_abs_diff"] < 1e-5
    assert torch.allclose(model.patch_embed.norm(out["linear"]), tokens, atol=1e-5)
