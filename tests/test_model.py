"""The model: fast and observed paths agree, match an independent implementation, and the
class-specific gradients are right."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.vit_reference import reference_forward
from vit_core import VisionTransformer, ViTConfig, describe, resample_pos_embed

# Small configs covering what real ViTs carry (tokens, pooling, LayerScale, biases, sizes).
CONFIGS = {
    "plain": {},
    "dist_token": {"distill_token": True},
    "registers": {"reg_tokens": 4},
    "registers_no_embed_class": {"reg_tokens": 2, "no_embed_class": True},
    "avg_pool_fc_norm": {"class_token": False, "global_pool": "avg"},
    "cls_avg_pool_fc_norm": {"global_pool": "avg", "fc_norm": True},
    "layer_scale": {"init_values": 0.1},
    "no_qkv_bias": {"qkv_bias": False},
    "non_square": {"img_size": (24, 40)},
    "features_only": {"num_classes": 0},
    # the options of students' ViTs (vit_core.families)
    "post_norm_relu": {"norm_placement": "post", "activation": "relu", "final_norm": False},
    "stream_norm": {"norm_placement": "stream"},
    "dim_head": {"dim_head": 20, "qkv_bias": False},
    "patch_norm_mean_all": {"patch_norm": True, "global_pool": "avg_all", "fc_norm": False},
    "sincos": {"pos_embed_type": "sincos", "class_token": False, "global_pool": "avg"},
    "across_batch": {"attention_axis": "batch", "norm_placement": "post", "fc_norm": True, "final_norm": False},
}


# The tiny ViT (tests/conftest.py) made a little larger, with every parameter random (the default
# init leaves biases and tokens ~0): 4x4 grid of 8-pixel patches.
SMALL = dict(embed_dim=48, depth=3, num_heads=4, num_classes=7, mlp_ratio=2.0, weight_std=0.3)


def test_default_init_is_timm_like(make_vit) -> None:
    model = make_vit(embed_dim=32, num_classes=3)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.5)
    assert model.blocks[0].attn.qkv.bias.abs().max().item() == 0.0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_and_trace_agree(name: str, make_vit) -> None:
    model = make_vit(**SMALL | CONFIGS[name])
    cfg = model.cfg
    H, W = cfg.img_size
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = model(x)
    tr = model.trace(x)
    gh, gw = H // 8, W // 8
    N = cfg.num_prefix_tokens + gh * gw
    out_dim = cfg.num_classes or cfg.embed_dim
    assert fast.shape == tr.logits.shape == (2, out_dim)
    torch.testing.assert_close(tr.logits, fast, atol=1e-5, rtol=0)
    assert tr.attentions.shape == (2, cfg.depth, cfg.num_heads, N, N)
    assert tr.hidden_states.shape == (2, cfg.depth + 1, N, cfg.embed_dim)
    assert tr.grid == (gh, gw) and tr.num_prefix_tokens == cfg.num_prefix_tokens
    torch.testing.assert_close(tr.attentions.sum(-1), torch.ones(2, cfg.depth, cfg.num_heads, N), atol=1e-5, rtol=0)
    with torch.no_grad():
        features = model.forward_features(x)
    # Un-normed (fc_norm) residual streams grow large with random weights: compare relative to scale.
    err = (model.norm(tr.hidden_states[:, -1]) - features).abs().max()
    assert err <= 1e-5 * features.abs().max().clamp(min=1.0)


@pytest.mark.parametrize("name", ["plain", "dist_token", "registers_no_embed_class", "avg_pool_fc_norm", "layer_scale"])
def test_matches_independent_implementation(name: str, make_vit) -> None:
    """Our model against a functional ViT written from the paper, in float64."""
    model = make_vit(dtype=torch.float64, **SMALL | CONFIGS[name])
    cfg = model.cfg
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    record: list[torch.Tensor] = []
    ref = reference_forward(
        model.state_dict(),
        x,
        num_heads=cfg.num_heads,
        global_pool=cfg.global_pool,
        no_embed_class=cfg.no_embed_class,
        eps=cfg.layer_norm_eps,
        record=record,
    )
    tr = model.trace(x)
    torch.testing.assert_close(tr.logits, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(tr.attentions, torch.stack(record, 1), atol=1e-10, rtol=0)


@pytest.mark.parametrize("size", [(48, 24), (16, 16), (40, 56)])
def test_other_input_sizes_resample_positions(size: tuple[int, int], make_vit) -> None:
    model = make_vit(reg_tokens=1, dtype=torch.float64, **SMALL)
    H, W = size
    x = torch.randn(1, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = model(x)
    tr = model.trace(x)
    torch.testing.assert_close(tr.logits, fast, atol=1e-10, rtol=0)
    assert tr.grid == (H // 8, W // 8)
    # Independently: the patch rows of pos_embed as a 4x4 image, resized bicubic with antialias
    # (timm's resample_abs_pos_embed); the two prefix rows (class, register) are kept as they are.
    pe = model.pos_embed.detach()
    grid_img = pe[0, 2:].T.reshape(1, -1, 4, 4)
    patches = F.interpolate(grid_img, size=(H // 8, W // 8), mode="bicubic", antialias=True, align_corners=False)
    expected = torch.cat([pe[:, :2], patches.reshape(1, pe.shape[-1], -1).transpose(1, 2)], dim=1)
    torch.testing.assert_close(model.pos_embed_for((H // 8, W // 8)).detach(), expected)
    ref = reference_forward(model.state_dict(), x, num_heads=4, pos_embed=expected)
    torch.testing.assert_close(tr.logits, ref, atol=1e-10, rtol=0)


def test_resample_pos_embed_invariants() -> None:
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pe, (4, 4), (4, 4), 1) is pe
    const = torch.cat([torch.randn(1, 1, 8), torch.ones(1, 16, 8) * 3.0], dim=1)
    out = resample_pos_embed(const, (6, 3), (4, 4), 1)
    assert out.shape == (1, 1 + 18, 8)
    torch.testing.assert_close(out[:, 0], const[:, 0])
    torch.testing.assert_close(out[:, 1:], torch.full((1, 18, 8), 3.0))
    with pytest.raises(ValueError):
        resample_pos_embed(pe, (2, 2), (5, 5), 1)


def test_input_not_multiple_of_patch_is_refused(make_vit) -> None:
    model = make_vit(**SMALL)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("name", ["plain", "dist_token", "avg_pool_fc_norm"])
def test_attention_gradients_match_independent_autograd(name: str, make_vit) -> None:
    """d logit[c] / d A[l] from trace(target=c) against the reference forward, where a zero
    offset added after each softmax carries the same gradient, plus a finite difference."""
    model = make_vit(dtype=torch.float64, **SMALL | CONFIGS[name])
    cfg = model.cfg
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([3, 5])
    tr = model.trace(x, target=target)
    N = tr.attentions.shape[-1]
    kwargs = dict(num_heads=cfg.num_heads, global_pool=cfg.global_pool, no_embed_class=cfg.no_embed_class)
    sd = model.state_dict()

    def score(offsets: list[torch.Tensor]) -> torch.Tensor:
        logits = reference_forward(sd, x, attn_offsets=offsets, **kwargs)
        return logits.gather(1, target[:, None]).sum()

    offsets = [torch.zeros(2, cfg.num_heads, N, N, dtype=torch.float64, requires_grad=True) for _ in range(cfg.depth)]
    grads = torch.autograd.grad(score(offsets), offsets)
    assert tr.attention_grads is not None and tr.attention_grads.shape == tr.attentions.shape
    torch.testing.assert_close(tr.attention_grads, torch.stack(grads, 1), atol=1e-10, rtol=1e-8)
    assert tr.target.tolist() == [3, 5]
    # Central finite differences on a few entries, for a check that involves no autograd at all.
    h = 1e-6
    for layer, b, head, q, k in [(0, 0, 1, 0, 2), (cfg.depth - 1, 1, 3, 0, 5), (1, 0, 0, 7, 0)]:
        plus = [torch.zeros(2, cfg.num_heads, N, N, dtype=torch.float64) for _ in range(cfg.depth)]
        minus = [p.clone() for p in plus]
        plus[layer][b, head, q, k] = h
        minus[layer][b, head, q, k] = -h
        with torch.no_grad():
            fd = (score(plus) - score(minus)) / (2 * h)
        assert tr.attention_grads[b, layer, head, q, k].item() == pytest.approx(fd.item(), abs=1e-6, rel=1e-5)


def test_trace_target_int_and_inference_mode(make_vit) -> None:
    model = make_vit(**SMALL)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    a = model.trace(x, target=2)
    assert a.target.tolist() == [2, 2, 2]
    with torch.inference_mode():
        b = model.trace(x, target=2)
    torch.testing.assert_close(a.attention_grads, b.attention_grads)
    plain = model.trace(x)
    assert plain.attention_grads is None and not plain.attentions.requires_grad
    assert not any(p.grad is not None for p in model.parameters())
    # one observed loop: asking for gradients changes nothing else the trace holds
    for field in ("logits", "attentions", "hidden_states", "patch_embeddings"):
        assert torch.equal(getattr(a, field), getattr(plain, field)), field


def test_class_names_travel_with_the_model(make_config) -> None:
    cfg = make_config(img_size=16, num_classes=3)
    assert VisionTransformer(cfg, ["a", "b", "c"]).class_names == ["a", "b", "c"]
    assert VisionTransformer(cfg).class_names == ["class 0", "class 1", "class 2"]
    with pytest.raises(ValueError):
        VisionTransformer(cfg, ["a", "b"])


def test_describe_counts_tokens_and_parameters(make_vit) -> None:
    model = make_vit(distill_token=True, **SMALL)
    d = describe(model)
    assert d["tokens"] == 2 + 16 and d["grid"] == (4, 4)
    assert d["params"] == sum(p.numel() for p in model.parameters())
    assert 0 < d["attention_flops_share"] < 1


def test_config_round_trip_and_validation() -> None:
    cfg = ViTConfig(img_size=(32, 48), patch_size=8, embed_dim=16, num_heads=2, crop_mode="squash", reg_tokens=2)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (
        {"embed_dim": 30, "num_heads": 4},
        {"img_size": 30},
        {"crop_pct": 1.5},
        {"crop_mode": "zoom"},
        {"interpolation": "cubic"},
        {"class_token": False},
    ):
        with pytest.raises(ValueError):
            ViTConfig(**{"img_size": 32, "patch_size": 8, **bad})


def test_students_options_leave_timm_defaults_alone(make_vit) -> None:
    """A config written before the options existed reads the same, and builds the same keys."""
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=16, num_heads=2, num_classes=3)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("norm_placement", "activation", "dim_head",
           "patch_norm", "pos_embed_type", "final_norm", "attention_axis")}  # fmt: skip
    assert ViTConfig.from_dict(old) == cfg
    keys = set(make_vit().state_dict())
    assert not any("pixel_norm" in k or k.startswith("patch_embed.norm") for k in keys)
    assert {"pos_embed", "norm.weight", "blocks.0.attn.qkv.weight"} <= keys
    assert (cfg.head_dim, cfg.inner_dim) == (8, 16)
    for bad in (
        {"norm_placement": "sandwich"},
        {"activation": "swish"},
        {"pos_embed_type": "rope"},
        {"attention_axis": "images"},
        {"dim_head": 0},
        {"pos_embed_type": "sincos", "class_token": False, "global_pool": "avg", "embed_dim": 18, "num_heads": 2},
        {"pos_embed_type": "sincos"},  # with a class token
        {"global_pool": "max"},
    ):
        with pytest.raises(ValueError):
            ViTConfig(**{"img_size": 32, "patch_size": 8, "embed_dim": 16, "num_heads": 2, **bad})


def test_dim_head_sets_the_projection_shapes(make_vit) -> None:
    model = make_vit(**SMALL | {"dim_head": 20})
    attn = model.blocks[0].attn
    assert attn.qkv.weight.shape == (3 * 4 * 20, 48) and attn.proj.weight.shape == (48, 80)
    assert model.cfg.inner_dim == 80 and model.cfg.head_dim == 20


def test_patch_norm_normalises_each_flattened_patch(make_vit) -> None:
    """pixel_norm over a patch flattened (c p1 p2), the conv weight as a Linear, then norm."""
    model = make_vit(dtype=torch.float64, **SMALL | {"patch_norm": True})
    pe = model.patch_embed
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    patches = x.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 3 * 64)
    mu, var = patches.mean(-1, keepdim=True), patches.var(-1, unbiased=False, keepdim=True)
    normed = (patches - mu) / (var + pe.pixel_norm.eps).sqrt() * pe.pixel_norm.weight + pe.pixel_norm.bias
    tokens = normed @ pe.proj.weight.reshape(48, -1).T + pe.proj.bias
    expected = F.layer_norm(tokens, (48,), pe.norm.weight, pe.norm.bias, pe.norm.eps)
    out, grid = pe(x)
    assert grid == (4, 4)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_sincos_positions_are_fixed_and_follow_the_grid(make_vit) -> None:
    model = make_vit(**SMALL | CONFIGS["sincos"])
    assert "pos_embed" not in model.state_dict() and "pos_embed" not in dict(model.named_parameters())
    pe = model.pos_embed_for((2, 3))[0]  # (6, 48): D/4 = 12 frequencies from 1 down to 1e-4
    q = 12
    assert pe.shape == (6, 48)
    torch.testing.assert_close(pe[4, :q], torch.sin(1 * torch.logspace(0, -4, q)))  # column 1 of row 1
    torch.testing.assert_close(pe[4, 3 * q :], torch.cos(1 * torch.logspace(0, -4, q)))
    torch.testing.assert_close(pe[2, 2 * q : 3 * q], torch.zeros(q))  # row 0: sin(0)
    torch.testing.assert_close(model.pos_embed, model.pos_embed_for((4, 4)))


@pytest.mark.parametrize("placement", ["pre", "post", "stream"])
def test_norm_placements_compute_their_formulas(placement: str, make_vit) -> None:
    model = make_vit(dtype=torch.float64, **SMALL | {"norm_placement": placement, "activation": "relu"})
    blk = model.blocks[0]
    x = torch.randn(2, 17, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def mlp(t: torch.Tensor) -> torch.Tensor:
        return blk.mlp.fc2(torch.relu(blk.mlp.fc1(t)))

    def attn(t: torch.Tensor) -> torch.Tensor:
        return blk.attn(t)[0]

    with torch.no_grad():
        if placement == "pre":
            y = x + attn(blk.norm1(x))
            y = y + mlp(blk.norm2(y))
        elif placement == "post":
            y = blk.norm1(x + attn(x))
            y = blk.norm2(y + mlp(y))
        else:
            y = blk.norm1(x)
            y = y + attn(y)
            y = blk.norm2(y)
            y = y + mlp(y)
        out, _ = blk(x)
        torch.testing.assert_close(out, y, atol=1e-12, rtol=0)
        a_in = blk.attention_input(x)
        torch.testing.assert_close(a_in, x if placement == "post" else blk.norm1(x))


def test_attention_across_batch_leaves_each_token_its_own_value(make_vit) -> None:
    model = make_vit(**SMALL | {"attention_axis": "batch"})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    tr = model.trace(x)
    assert model.attends_across_batch
    assert torch.equal(tr.attentions, torch.eye(17).expand(2, 3, 4, 17, 17))
    with torch.no_grad():  # each image computes as if alone in its batch
        alone = torch.cat([model(x[:1]), model(x[1:])])
        torch.testing.assert_close(model(x), alone)


def test_trace_target_is_validated(make_vit) -> None:
    model = make_vit(**SMALL)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="outside the 7 classes"):
        model.trace(x, target=7)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        model.trace(x, target=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no classifier head"):
        make_vit(**SMALL | {"num_classes": 0}).trace(x, target=0)


def test_trace_outputs_are_plain_tensors(make_vit) -> None:
    model = make_vit(**SMALL)
    tr = model.trace(torch.randn(1, 3, 32, 32))
    for t in (tr.logits, tr.attentions, tr.hidden_states, tr.patch_embeddings):
        assert not t.requires_grad and t.is_contiguous()


def test_stochastic_depth_drops_whole_samples_and_keeps_the_expectation(make_vit) -> None:
    block = make_vit(img_size=8, patch_size=4, depth=2, num_classes=3).blocks[0]
    branch = torch.ones(4000, 5, 16)
    assert torch.equal(block.drop_path(branch), branch)  # rate 0: untouched
    block.drop_path.drop_prob = 0.25
    block.train()
    out = block.drop_path(branch)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # one decision per sample
    values = set(per_sample[:, 0].tolist())
    assert values <= {0.0, torch.tensor(1.0 / 0.75).item()}  # dropped, or scaled by 1 / (1 - p) in float32
    dropped = (per_sample[:, 0] == 0).float().mean().item()
    assert abs(dropped - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    assert abs(out.mean().item() - 1.0) < 0.05  # kept branches are scaled up: same expectation
    # evaluation ignores it: the block computes exactly what it did without stochastic depth
    x = torch.randn(3, 5, 16)
    block.eval()
    with_rate = block(x)[0]
    block.drop_path.drop_prob = 0.0
    assert torch.equal(with_rate, block(x)[0])


def test_drop_path_rate_builds_a_linear_schedule_and_leaves_the_state_dict_alone(make_vit) -> None:
    model = make_vit(img_size=8, patch_size=4, depth=3, num_classes=3, drop_path_rate=0.3)
    cfg = model.cfg
    assert [b.drop_path.drop_prob for b in model.blocks] == pytest.approx([0.0, 0.15, 0.3])
    plain = make_vit(img_size=8, patch_size=4, depth=3, num_classes=3)
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert ViTConfig.from_dict(cfg.to_dict()).drop_path_rate == 0.3
