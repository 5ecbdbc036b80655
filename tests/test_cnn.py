"""vit_core.cnn (the ResNet baseline) and vit_core.subsets (class-balanced data budgets)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_core.analysis.receptive_field import centre_units, effective_receptive_field
from vit_core.cnn import CNN_PRESETS, CNNConfig, ResNet, build_model, config_from_dict, is_cnn
from vit_core.config import ViTConfig
from vit_core.model import VisionTransformer
from vit_core.subsets import balanced_subset

TINY = dict(img_size=16, num_classes=3, stem_width=4, widths=(4, 8, 8), blocks=(1, 2, 1))

# The ViT presets' parameter counts (vit_core.train.PRESETS "quick" and "bundled", 10 classes).
QUICK_VIT = dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10)
BUNDLED_VIT = dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=4, mlp_ratio=2.0, num_classes=10)


def tiny_resnet(seed: int = 0, **changes) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(CNNConfig(**{**TINY, **changes}))


# ---------------------------------------------------------------- model


def test_shapes_of_logits_and_feature_maps():
    model = tiny_resnet().eval()  # BatchNorm on running statistics: maps and logits agree
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 3)
    maps = model.feature_maps(x)
    assert len(maps) == model.cfg.depth == 1 + 4 == len(model.layer_names())
    assert [tuple(m.shape) for m in maps] == [(2, 4, 16, 16), (2, 4, 16, 16), (2, 8, 8, 8), (2, 8, 8, 8), (2, 8, 4, 4)]
    assert model.layer_names() == ["stem", "stage 1 block 1", "stage 2 block 1", "stage 2 block 2", "stage 3 block 1"]
    # the last map, pooled and through the head, is the forward pass
    torch.testing.assert_close(model.head(maps[-1].mean(dim=(-2, -1))), model(x))
    assert model.stem.weight.shape == (4, 3, 3, 3)
    assert model.class_names == ["class 0", "class 1", "class 2"]
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_projection_shortcut_only_where_the_shape_changes():
    model = tiny_resnet()
    blocks = [blk for stage in model.stages for blk in stage]
    # stem 4 -> stage 1 (4, stride 1): identity; stage 2 first block (8, stride 2): projection
    assert [blk.downsample is not None for blk in blocks] == [False, True, False, True]
    assert blocks[1].downsample[0].weight.shape == (8, 4, 1, 1)


def test_works_at_other_image_sizes_and_one_channel():
    model = tiny_resnet(in_chans=1, mean=(0.5,), std=(0.25,))
    assert model(torch.randn(3, 1, 24, 40)).shape == (3, 3)
    assert model.stem.weight.shape == (4, 1, 3, 3)


def test_class_names():
    model = ResNet(CNNConfig(**TINY), class_names=["a", "b", "c"])
    assert model.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ResNet(CNNConfig(**TINY), class_names=["a", "b"])


@pytest.mark.parametrize(
    "preset,vit,lo,hi", [("quick", QUICK_VIT, 0.50e6, 0.60e6), ("bundled", BUNDLED_VIT, 1.65e6, 1.95e6)]
)
def test_presets_match_the_vit_presets_in_size(preset, vit, lo, hi):
    cnn = ResNet(CNN_PRESETS[preset]).num_params()
    vit_params = VisionTransformer(ViTConfig(**vit)).num_params()
    assert lo <= cnn <= hi
    assert abs(cnn / vit_params - 1) < 0.05
    # as many residual blocks as the ViT has transformer blocks: feature maps line up with hidden states
    assert CNN_PRESETS[preset].depth == vit["depth"] + 1


def test_preset_counts_stated_in_the_source():
    assert ResNet(CNN_PRESETS["quick"]).num_params() == 545_226
    assert ResNet(CNN_PRESETS["bundled"]).num_params() == 1_835_038


# ---------------------------------------------------------------- config


def test_config_round_trip_through_json():
    cfg = CNNConfig(**TINY, name="tiny", extra={"run": 3})
    back = CNNConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    assert back.widths == (4, 8, 8) and back.img_size == (16, 16)
    assert config_from_dict(cfg.to_dict()) == cfg
    vit = ViTConfig(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3)
    assert config_from_dict(vit.to_dict()) == vit  # ViT configs carry no `arch`


def test_config_errors():
    with pytest.raises(ValueError, match="unknown config fields"):
        CNNConfig.from_dict({**CNNConfig().to_dict(), "patch_size": 4})
    with pytest.raises(ValueError, match="one entry per stage"):
        CNNConfig(widths=(8, 16), blocks=(1,))
    with pytest.raises(ValueError, match="positive integer"):
        CNNConfig(blocks=(1, 0, 1))
    with pytest.raises(ValueError, match="arch"):
        CNNConfig(arch="vit")
    with pytest.raises(ValueError, match="num_classes"):
        CNNConfig(num_classes=-1)


def test_build_model_from_either_config():
    cnn = build_model(CNNConfig(**TINY), ["a", "b", "c"])
    assert isinstance(cnn, ResNet) and is_cnn(cnn) and cnn.class_names == ["a", "b", "c"]
    vit = build_model(ViTConfig(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3))
    assert isinstance(vit, VisionTransformer) and not is_cnn(vit)
    with pytest.raises(TypeError):
        build_model({"img_size": 16})


# ---------------------------------------------------------------- training


def test_a_few_sgd_steps_reduce_the_loss():
    # two classes: the bright blob is on the left or on the right half of a 12x12 image
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 2
    x = 0.3 * torch.randn(32, 3, 12, 12, generator=g)
    x[y == 0, :, 2:10, 1:5] += 1.0
    x[y == 1, :, 2:10, 7:11] += 1.0
    model = tiny_resnet(num_classes=2, img_size=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.no_grad():
        before = F.cross_entropy(model.eval()(x), y).item()
    model.train()
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert before == pytest.approx(math.log(2), abs=0.05)  # an untrained head: chance
    assert after < 0.2 * before
    assert acc == 1.0


# ---------------------------------------------------------------- geometry of the ResNet's units


def test_feature_geometry_strides():
    assert tiny_resnet().feature_geometry() == [(1, 0.0), (1, 0.0), (2, 0.0), (2, 0.0), (4, 0.0)]


def test_receptive_field_support_is_centred_where_feature_geometry_says():
    """On a 64-pixel input (no layer's field reaches the border) the pixels that move the followed
    unit form a square centred on its stated position, of the theoretical radius."""
    model = tiny_resnet()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    weights, _ = effective_receptive_field(model, x)
    units = centre_units(model, (64, 64))
    # radius in pixels: the stem adds 1, each 3x3 conv at input stride s adds s
    radii = [1, 3, 6, 10, 16]
    for w, (_, (cy, cx)), r in zip(weights, units, radii):
        rows = torch.nonzero(w.sum(dim=1) > 0).flatten()
        cols = torch.nonzero(w.sum(dim=0) > 0).flatten()
        assert (rows.min().item(), rows.max().item()) == (cy - r, cy + r)
        assert (cols.min().item(), cols.max().item()) == (cx - r, cx + r)
    assert [u[1] for u in units] == [(32.0, 32.0)] * 5
    assert [u[0] for u in units] == [(32, 32), (32, 32), (16, 16), (16, 16), (8, 8)]


def test_the_followed_unit_is_the_one_nearest_the_image_centre():
    model = tiny_resnet()
    # even input: the centre (H - 1) / 2 = 15.5 is between units 15 and 16 of the full-size maps,
    # the tie goes to 16; the stride-2 map's units sit on even pixels: unit 8 at 16 is nearest
    assert [u[0][0] for u in centre_units(model, (32, 32))] == [16, 16, 8, 8, 4]
    # odd input: the centre is pixel 16; the stride-4 map's unit 4 sits on it
    assert [u for u in centre_units(model, (33, 17))][-1] == ((4, 2), (16.0, 8.0))


# ---------------------------------------------------------------- balanced subsets


def cifar_like_labels(per_class: int = 50, classes: int = 10, seed: int = 0) -> torch.Tensor:
    y = torch.arange(classes).repeat_interleave(per_class)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def test_balanced_subset_is_balanced():
    y = cifar_like_labels()
    for size in (10, 37, 100, 499, 500):
        idx = balanced_subset(y, size, seed=3)
        assert idx.dtype == torch.int64 and idx.shape == (size,)
        assert len(set(idx.tolist())) == size and torch.all(idx[1:] > idx[:-1])  # distinct, sorted
        counts = torch.bincount(y[idx], minlength=10)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size
        assert (counts == size // 10 + 1).sum() == size % 10


def test_balanced_subset_is_deterministic_and_seeded():
    y = cifar_like_labels()
    a = balanced_subset(y, 100, seed=7)
    assert torch.equal(a, balanced_subset(y, 100, seed=7))
    assert torch.equal(a, balanced_subset(y.numpy(), 100, seed=7))  # numpy labels, same answer
    assert not torch.equal(a, balanced_subset(y, 100, seed=8))
    # the remainder goes to different classes for different seeds (some pair of these differ)
    remainders = {tuple(torch.bincount(y[balanced_subset(y, 13, seed=s)], minlength=10).tolist()) for s in range(6)}
    assert len(remainders) > 1


def test_balanced_subsets_of_one_seed_are_nested():
    y = cifar_like_labels()
    sizes = [10, 23, 100, 101, 250, 500]
    subsets = [set(balanced_subset(y, s, seed=2).tolist()) for s in sizes]
    for small, large in zip(subsets, subsets[1:]):
        assert small <= large


def test_balanced_subset_with_unequal_classes():
    y = torch.cat([torch.zeros(30), torch.ones(10), torch.full((20,), 2.0)]).long()
    idx = balanced_subset(y, 30, seed=0)
    assert torch.bincount(y[idx]).tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have fewer"):
        balanced_subset(y, 33, seed=0)
    # the largest size the message names is reachable, one more is not (which depends on the
    # seeded order the remainder follows)
    for seed in range(4):
        with pytest.raises(ValueError, match="largest balanced size here is") as err:
            balanced_subset(y, 60, seed=seed)
        largest = int(str(err.value).rsplit(" ", 1)[-1])
        assert 30 <= largest <= 32
        assert len(balanced_subset(y, largest, seed=seed)) == largest
        with pytest.raises(ValueError):
            balanced_subset(y, largest + 1, seed=seed)


def test_balanced_subset_errors():
    y = cifar_like_labels(per_class=5)
    with pytest.raises(ValueError, match=r"\[1, 50\]"):
        balanced_subset(y, 51, seed=0)
    with pytest.raises(ValueError, match=r"\[1, 50\]"):
        balanced_subset(y, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        balanced_subset(y, 10, seed=-1)
    with pytest.raises(ValueError, match="integer class indices"):
        balanced_subset(np.zeros(4, dtype=np.float32), 2, seed=0)
    # a class named by num_classes that never occurs cannot give its share
    with pytest.raises(ValueError, match=r"\[10\] have fewer"):
        balanced_subset(y, 11, seed=0, num_classes=11)
