"""Checkpoints: our format, timm state dicts, Hugging Face folders, and every way a file can be
wrong. The pretrained catalogue's files are in test_pretrained.py."""

from __future__ import annotations

import argparse
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.vit_reference import make_timm_state_dict, reference_forward
from vit_core import (
    CheckpointError,
    imagenet_class_names,
    infer_num_heads,
    list_pretrained,
    load_checkpoint,
    save_checkpoint,
)
from vit_core.checkpoints import sniff_format

try:
    import transformers
except ImportError:  # only the parity tests need it; the rest of this file (pickle refusal...) must run
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="needs the transformers package")


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Our own format


def test_own_format_round_trip(tmp_path: Path, make_vit) -> None:
    model = make_vit(
        0, ["cat", "dog", "eel"], img_size=(32, 48), embed_dim=32, depth=2, num_heads=4, num_classes=3, reg_tokens=1
    )
    cfg = model.cfg
    path = save_checkpoint(model, tmp_path / "sub" / "m.safetensors")
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_checkpoint(path)
    assert loaded.cfg == cfg and loaded.class_names == ["cat", "dog", "eel"] and not loaded.training
    x = _x(1, 3, 32, 48)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_own_format_with_image_size_that_disagrees(tmp_path: Path, make_vit, make_config) -> None:
    model = make_vit()  # 32x32, 8-pixel patches: 16 patches + the class token
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": "vit-explorer/1",
        "config": make_config(img_size=48).to_json(),
    }
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="48x48 needs 37 position embeddings but the weights have 17"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_save_into_an_unwritable_place(tmp_path: Path, make_vit) -> None:
    model = make_vit(img_size=16)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="Could not write"):
        save_checkpoint(model, tmp_path / "file" / "m.safetensors")


# ----------------------------------------------------------------------------------------------
# timm state dicts


def test_timm_vit_s16_like_state_dict_loads_and_runs(tmp_path: Path) -> None:
    """timm's exact names and shapes for ViT-S/16 at 224 (depth cut to 2 to stay fast)."""
    sd = make_timm_state_dict(embed_dim=384, depth=2, patch_size=16, grid=(14, 14), num_classes=1000)
    assert sd["pos_embed"].shape == (1, 197, 384) and sd["blocks.1.attn.qkv.weight"].shape == (1152, 384)
    save_file(sd, tmp_path / "vit_small_patch16_224.safetensors")
    model = load_checkpoint(tmp_path / "vit_small_patch16_224.safetensors")
    cfg = model.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (384, 2, 6, 16, (224, 224))
    assert cfg.mlp_ratio == 4.0 and cfg.qkv_bias and cfg.global_pool == "token" and cfg.layer_norm_eps == 1e-6
    assert (cfg.mean, cfg.std, cfg.crop_pct, cfg.interpolation) == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        0.9,
        "bicubic",
    )
    assert model.class_names[:2] == ["tench", "goldfish"] and len(model.class_names) == 1000
    x = _x(1, 3, 224, 224)
    ref = reference_forward(sd, x.double(), num_heads=6)
    tr = model.trace(x)
    torch.testing.assert_close(tr.logits.double(), ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(model(x), tr.logits, atol=1e-5, rtol=0)
    assert tr.attentions.shape == (1, 2, 6, 197, 197)


@pytest.mark.parametrize(
    "kw, pool, heads",
    [
        ({"dist_token": True}, "token", 1),  # DeiT distilled: two heads averaged
        ({"reg_tokens": 4, "no_embed_class": True, "class_token": False, "fc_norm": True}, "avg", 1),  # reg4_gap
        ({"reg_tokens": 4, "no_embed_class": True, "layer_scale": True}, "token", 1),  # DINOv2-reg style
        ({"qkv_bias": False, "mlp_ratio": 2.0}, "token", 1),
    ],
    ids=["distilled", "registers_gap", "registers_layerscale", "no_qkv_bias"],
)
def test_timm_variants(tmp_path: Path, kw: dict, pool: str, heads: int, make_timm_sd) -> None:
    sd = make_timm_sd(**kw)
    path = tmp_path / "w.safetensors"
    save_file(sd, path)
    model = load_checkpoint(path)
    cfg = model.cfg
    assert cfg.num_heads == heads and cfg.global_pool == pool
    assert cfg.distill_token == kw.get("dist_token", False) and cfg.reg_tokens == kw.get("reg_tokens", 0)
    assert cfg.no_embed_class == kw.get("no_embed_class", False)
    assert (cfg.init_values is not None) == kw.get("layer_scale", False)
    x = _x(2, 3, 32, 32, dtype=torch.float64)
    ref = reference_forward(sd, x, num_heads=heads, global_pool=pool, no_embed_class=cfg.no_embed_class)
    torch.testing.assert_close(model.double().trace(x).logits, ref, atol=1e-10, rtol=0)


def test_num_heads_override_and_inference(tmp_path: Path, make_timm_sd) -> None:
    sd = make_timm_sd(embed_dim=128)
    save_file(sd, tmp_path / "w.safetensors")
    assert load_checkpoint(tmp_path / "w.safetensors").cfg.num_heads == 2
    model = load_checkpoint(tmp_path / "w.safetensors", num_heads=4)
    assert model.cfg.num_heads == 4 and model.cfg.extra["num_heads_from"] == "argument"
    x = _x(1, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model.double()(x), reference_forward(sd, x, num_heads=4), atol=1e-10, rtol=0)
    with pytest.raises(CheckpointError, match="do not divide"):
        load_checkpoint(tmp_path / "w.safetensors", num_heads=3)
    save_file(make_timm_sd(embed_dim=48), tmp_path / "w48.safetensors")
    with pytest.raises(CheckpointError, match="Pass num_heads="):
        load_checkpoint(tmp_path / "w48.safetensors")
    assert load_checkpoint(tmp_path / "w48.safetensors", num_heads=4).cfg.num_heads == 4


def test_infer_num_heads_follows_timm() -> None:
    # 64-wide heads: ViT-Ti/DeiT-tiny, ViT-S/DeiT-small, ViT-B, ViT-L; 16 heads for huge/giant/so400m.
    assert [infer_num_heads(d) for d in (192, 384, 768, 1024)] == [3, 6, 12, 16]
    assert [infer_num_heads(d) for d in (1152, 1280, 1408, 1664)] == [16, 16, 16, 16]
    assert infer_num_heads(768, "vit_base_patch16_gap_224") == 16
    assert infer_num_heads(1536, "vit_giant_patch14_dinov2.lvd142m") == 24
    with pytest.raises(CheckpointError):
        infer_num_heads(100)
    for m in list_pretrained():
        assert infer_num_heads(m.embed_dim, m.timm_name) == m.num_heads


def test_timm_pth_wrapped_and_prefixed(tmp_path: Path, make_timm_sd) -> None:
    sd = make_timm_sd()
    other = make_timm_sd(seed=1)
    x = _x(1, 3, 32, 32)
    expected = load_checkpoint(_save_st(sd, tmp_path / "ref.safetensors"))(x)
    cases = {
        "model.pth": {"model": sd, "epoch": 3},
        "ema.pth": {"state_dict": other, "state_dict_ema": sd, "optimizer": {"lr": 0.1}},
        "ddp.pt": {"state_dict": {"module." + k: v for k, v in sd.items()}},
        # a Lightning module holding the network as self.model, compiled
        "lightning.ckpt": {"state_dict": {"model._orig_mod." + k: v for k, v in sd.items()}, "epoch": 2},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        torch.testing.assert_close(load_checkpoint(tmp_path / name)(x), expected, atol=0, rtol=0)
    torch.save(sd, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    assert sniff_format(tmp_path / "legacy.bin") == "torch"
    torch.testing.assert_close(load_checkpoint(tmp_path / "legacy.bin")(x), expected, atol=0, rtol=0)
    half = {k: v.half() for k, v in sd.items()}
    torch.save(half, tmp_path / "half.pth")
    assert load_checkpoint(tmp_path / "half.pth").pos_embed.dtype == torch.float32


def test_timm_hub_folder_config(tmp_path: Path, make_timm_sd) -> None:
    """timm's Hub layout: config.json with architecture, pretrained_cfg and label names."""
    sd = make_timm_sd(num_classes=3, grid=(4, 6))
    save_file(sd, tmp_path / "model.safetensors")
    config = {
        "architecture": "vit_tiny_test",
        "num_classes": 3,
        "global_pool": "token",
        "label_names": ["a", "b", "c"],
        "model_args": {"num_heads": 4},
        "pretrained_cfg": {
            "input_size": [3, 32, 48],
            "interpolation": "bilinear",
            "crop_pct": 0.95,
            "crop_mode": "squash",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_checkpoint(tmp_path)
    cfg = model.cfg
    assert cfg.img_size == (32, 48) and cfg.num_heads == 4 and model.class_names == ["a", "b", "c"]
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode, cfg.mean) == ("bilinear", 0.95, "squash", (0.5,) * 3)
    x = _x(1, 3, 32, 48, dtype=torch.float64)
    torch.testing.assert_close(model.double()(x), reference_forward(sd, x, num_heads=4), atol=1e-10, rtol=0)


def test_timm_wordnet_label_names_become_readable(tmp_path: Path, make_timm_sd) -> None:
    save_file(make_timm_sd(num_classes=2), tmp_path / "model.safetensors")
    config = {
        "architecture": "vit_test",
        "label_names": ["n01440764", "n01443537"],
        "label_descriptions": {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(tmp_path).class_names == ["tench", "goldfish"]
    config["label_names"] = ["a", "b", "c"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="lists 3 labels but the head has 2"):
        load_checkpoint(tmp_path)


def test_timm_non_square_grid_needs_img_size(tmp_path: Path, make_timm_sd) -> None:
    save_file(make_timm_sd(grid=(4, 5)), tmp_path / "w.safetensors")  # 1 + 20 positions: no square grid
    with pytest.raises(CheckpointError, match="img_size"):
        load_checkpoint(tmp_path / "w.safetensors")
    assert load_checkpoint(tmp_path / "w.safetensors", img_size=(32, 40)).cfg.grid_size == (4, 5)
    with pytest.raises(CheckpointError, match="does not belong to these weights"):
        load_checkpoint(tmp_path / "w.safetensors", img_size=(48, 48))


# ----------------------------------------------------------------------------------------------
# Hugging Face transformers


def _hf_vit(tmp_path: Path, *, image_size: int | list = 32, qkv_bias: bool = True, labels: int = 7, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=image_size,
        patch_size=8,
        qkv_bias=qkv_bias,
        layer_norm_eps=1e-12,
        num_labels=labels,
        id2label={i: f"label {i}" for i in range(labels)},
        label2id={f"label {i}": i for i in range(labels)},
        attn_implementation="eager",
    )
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and LayerNorm: make every weight matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    return model, folder


@needs_transformers
@pytest.mark.parametrize(
    "image_size, qkv_bias", [(32, True), ([32, 48], True), (32, False)], ids=["square", "non_square", "no_qkv_bias"]
)
def test_parity_with_transformers_vit(tmp_path: Path, image_size: int | list, qkv_bias: bool) -> None:
    hf, folder = _hf_vit(tmp_path, image_size=image_size, qkv_bias=qkv_bias)
    assert hf.config._attn_implementation == "eager"
    model = load_checkpoint(folder)
    cfg = model.cfg
    H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    assert cfg.img_size == (H, W) and cfg.num_heads == 4 and cfg.layer_norm_eps == 1e-12 and cfg.qkv_bias == qkv_bias
    assert model.class_names == [f"label {i}" for i in range(7)]
    assert (cfg.mean, cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == ((0.5,) * 3, "bilinear", 1.0, "squash")
    x = _x(2, 3, H, W, seed=7)
    with torch.no_grad():
        out = hf(pixel_values=x, output_attentions=True)
    tr = model.trace(x)
    torch.testing.assert_close(tr.logits, out.logits, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out.logits, atol=1e-5, rtol=0)
    assert len(out.attentions) == cfg.depth
    for layer, attn in enumerate(out.attentions):
        torch.testing.assert_close(tr.attentions[:, layer], attn, atol=1e-5, rtol=0)
    # The weight file inside the folder is accepted as well.
    torch.testing.assert_close(load_checkpoint(folder / "model.safetensors")(x), tr.logits, atol=1e-5, rtol=0)


@needs_transformers
def test_transformers_vit_model_without_head_and_sharded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=8
    )
    hf = transformers.ViTModel(cfg, add_pooling_layer=True).eval()
    hf.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    assert (tmp_path / "base" / "model.safetensors.index.json").is_file()
    model = load_checkpoint(tmp_path / "base")
    assert model.cfg.num_classes == 0 and model.class_names == []
    x = _x(1, 3, 16, 16)
    with torch.no_grad():
        cls_features = hf(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(model(x), cls_features, atol=1e-5, rtol=0)


@needs_transformers
def test_transformers_deit_with_teacher(tmp_path: Path) -> None:
    torch.manual_seed(2)
    cfg = transformers.DeiTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
        num_labels=4,
        attn_implementation="eager",
    )
    hf = transformers.DeiTForImageClassificationWithTeacher(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "deit")
    model = load_checkpoint(tmp_path / "deit")
    assert model.cfg.distill_token and model.num_prefix_tokens == 2
    x = _x(2, 3, 16, 16)
    with torch.no_grad():
        out = hf(pixel_values=x, output_attentions=True)
    tr = model.trace(x)
    torch.testing.assert_close(tr.logits, out.logits, atol=1e-5, rtol=0)
    for layer, attn in enumerate(out.attentions):
        torch.testing.assert_close(tr.attentions[:, layer], attn, atol=1e-5, rtol=0)


@needs_transformers
def test_transformers_preprocessor_config(tmp_path: Path) -> None:
    _, folder = _hf_vit(tmp_path)
    prep = {
        "do_resize": True,
        "size": {"height": 36, "width": 36},
        "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32},
        "resample": 3,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))
    cfg = load_checkpoint(folder).cfg
    assert (cfg.interpolation, cfg.crop_mode, cfg.crop_pct) == ("bicubic", "squash", pytest.approx(32 / 36))
    assert cfg.mean == (0.485, 0.456, 0.406)
    prep["size"] = {"shortest_edge": 40}
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))
    cfg = load_checkpoint(folder).cfg
    assert (cfg.crop_mode, cfg.crop_pct) == ("center", pytest.approx(0.8))


@needs_transformers
@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c.update(id2label={str(i): str(i) for i in range(5)}),
            "id2label has 5 classes but the classifier has 7",
        ),
        (lambda c: c.update(image_size=48), "needs 37 position embeddings but the weights have 17"),
        (lambda c: c.update(hidden_act="gelu_new"), "gelu_new"),
        (lambda c: c.update(model_type="swin"), "'swin'"),
        (lambda c: c.update(num_hidden_layers=4), "says 4 layers but the weights have 3"),
        (lambda c: c.update(hidden_size=64), "hidden_size=64 but the weights have 48"),
    ],
    ids=["classes", "image_size", "activation", "model_type", "depth", "width"],
)
def test_transformers_config_that_disagrees(tmp_path: Path, edit, message: str) -> None:
    _, folder = _hf_vit(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


@needs_transformers
def test_transformers_weights_without_config(tmp_path: Path) -> None:
    _, folder = _hf_vit(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="need the config.json"):
        load_checkpoint(folder / "model.safetensors")


# ----------------------------------------------------------------------------------------------
# Bad files


def _save_st(sd: dict[str, torch.Tensor], path: Path) -> Path:
    save_file(sd, path)
    return path


def test_missing_extra_and_mismatched_keys_are_named(tmp_path: Path, make_timm_sd) -> None:
    sd = make_timm_sd()
    missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys blocks\.1\.mlp\.fc2\.weight"):
        load_checkpoint(_save_st(missing, tmp_path / "missing.safetensors"))
    extra = {**sd, "blocks.0.attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(CheckpointError, match=r"unexpected keys blocks\.0\.attn\.q_norm\.weight"):
        load_checkpoint(_save_st(extra, tmp_path / "extra.safetensors"))
    bad = {**sd, "head.bias": torch.zeros(6)}
    with pytest.raises(CheckpointError, match=r"shape mismatch.*head\.bias \(6,\) vs \(5,\)"):
        load_checkpoint(_save_st(bad, tmp_path / "shape.safetensors"))
    gap = {k: v for k, v in sd.items() if not k.startswith("blocks.0.")}
    with pytest.raises(CheckpointError, match=r"blocks \[0\] are missing"):
        load_checkpoint(_save_st(gap, tmp_path / "gap.safetensors"))


def test_unknown_formats(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "notes.bin").write_text("hello, these are not weights")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(tmp_path / "notes.bin")
    np.savez(tmp_path / "vit.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="JAX"):
        load_checkpoint(tmp_path / "vit.npz")
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(tmp_path / "resnet.safetensors")
    torch.save(
        {"model.conv1.weight": torch.zeros(4, 3, 3, 3), "model.fc.weight": torch.zeros(10, 4)}, tmp_path / "r.pth"
    )
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):  # no family of students' ViTs either
        load_checkpoint(tmp_path / "r.pth")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "nowhere.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="No weights"):
        load_checkpoint(tmp_path / "folder")


def test_truncated_files(tmp_path: Path, make_timm_sd) -> None:
    sd = make_timm_sd()
    data = _save_st(sd, tmp_path / "w.safetensors").read_bytes()
    for cut in (len(data) // 2, 40):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(tmp_path / "cut.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(tmp_path / "cut.pth")


class _Evil:
    """Unpickling this writes a file: the side effect a malicious checkpoint would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, make_timm_sd) -> None:
    marker = tmp_path / "side_effect.txt"
    # A raw pickle (legacy torch format) and a torch.save zip, both with the payload inside.
    (tmp_path / "raw.pth").write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    torch.save({"model": make_timm_sd(), "payload": _Evil(marker)}, tmp_path / "zip.pth")
    assert not marker.exists()
    for name in ("raw.pth", "zip.pth"):
        with pytest.raises(CheckpointError, match="would run code") as err:
            load_checkpoint(tmp_path / name)
        assert "write_text" in str(err.value) or "global" in str(err.value).lower()
        assert not marker.exists()
    # Training checkpoints often carry argparse namespaces: also refused, with the same advice.
    torch.save({"model": make_timm_sd(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pth")
    with pytest.raises(CheckpointError, match="save just the weights"):
        load_checkpoint(tmp_path / "args.pth")


def test_sniffing_ignores_extensions(tmp_path: Path, make_timm_sd) -> None:
    sd = make_timm_sd()
    save_file(sd, tmp_path / "weights.bin")
    assert sniff_format(tmp_path / "weights.bin") == "safetensors"
    assert load_checkpoint(tmp_path / "weights.bin").cfg.embed_dim == 64
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("x.txt", "hi")
    assert sniff_format(tmp_path / "a.zip") == "torch"
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "a.zip")


# ----------------------------------------------------------------------------------------------
# ImageNet class names


def test_imagenet_class_names_asset() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[207] == "golden retriever" and names[999] == "toilet tissue"
