"""Bring your own ViT (vit_core.families): each family is built here, small and with random
weights, from the published description of its architecture (independent modules, not the
libraries' code), saved as a student saves it, loaded with `load_checkpoint`, and compared
with what its own code computes: logits and every attention map, at batch 1 and 2.

The `nn.MultiheadAttention` tutorial's code attends across the images of a batch. The app
runs one image at a time, so "as its code computes it" means: as its code computes each image
given alone (a batch of one), where every token attends only to itself. At batch 2 our model
therefore matches the tutorial run on each image separately, and the test also shows that the
tutorial's own batch-2 output mixes the two images.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from vit_core import CheckpointError, load_checkpoint, save_checkpoint
from vit_core.families import AnswerNeededError, detect_family, head_choices
from vit_core.summary import describe

TOL = 1e-5


def _randomise(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Every parameter redrawn around its usual centre (1 for LayerNorm weights), so that
    attention is peaked and every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                centre = 1.0 if isinstance(m, nn.LayerNorm) and name == "weight" else 0.0
                p.copy_(centre + std * torch.randn(p.shape, generator=g))
    return module.eval()


def _images(batch: int, size: int = 16, channels: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _save(model: nn.Module, tmp_path: Path, name: str = "my_vit.pth") -> Path:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


# ----------------------------------------------------------------------------------------------
# vit-pytorch ViT and SimpleViT, from their description: patches flattened "(p1 p2 c)",
# LayerNorm + Linear + LayerNorm, pre-norm blocks with a fused bias-free qkv of h * dim_head


class FlattenPatches(nn.Module):
    """(B, C, H, W) -> (B, n, P*P*C), each patch flattened row by row, channels innermost."""

    def __init__(self, P: int) -> None:
        super().__init__()
        self.P = P

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        P = self.P
        x = x.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1)  # B gh gw p1 p2 c
        return x.reshape(B, (H // P) * (W // P), P * P * C)


class LucidAttention(nn.Module):
    def __init__(self, D: int, heads: int, dim_head: int, legacy: bool, out_bias: bool = True) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(D, 3 * inner, bias=False)
        if legacy or out_bias:
            self.to_out = nn.Sequential(nn.Linear(inner, D), nn.Dropout(0.0))
        else:  # SimpleViT: a plain Linear without bias
            self.to_out = nn.Linear(inner, D, bias=False)
        self.norm = None if legacy else nn.LayerNorm(D)
        self.attn = None

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is not None:
            x = self.norm(x)
        B, N, _ = x.shape
        q, k, v = (t.reshape(B, N, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        self.attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out((self.attn @ v).transpose(1, 2).reshape(B, N, -1))


class PreNorm(nn.Module):
    """vit-pytorch's older wrapper: a LayerNorm, then the wrapped module `fn`."""

    def __init__(self, D: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(D), fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class LucidFeedForward(nn.Module):
    def __init__(self, D: int, hidden: int, simple: bool) -> None:
        super().__init__()
        if simple:
            self.net = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, D))
        else:
            drop = nn.Dropout(0.0)
            self.net = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, hidden), nn.GELU(), drop, nn.Linear(hidden, D), drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LegacyFeedForward(nn.Module):
    def __init__(self, D: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, D))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LucidTransformer(nn.Module):
    def __init__(self, D: int, depth: int, heads: int, dim_head: int, hidden: int, legacy: bool, simple: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            if legacy:  # PreNorm(Attention), PreNorm(FeedForward of Linear, GELU, Dropout, Linear)
                ff = LegacyFeedForward(D, hidden)
                pair = [PreNorm(D, LucidAttention(D, heads, dim_head, True)), PreNorm(D, ff)]
            else:
                pair = [
                    LucidAttention(D, heads, dim_head, False, out_bias=not simple),
                    LucidFeedForward(D, hidden, simple),
                ]
            self.layers.append(nn.ModuleList(pair))
        self.norm = None if legacy else nn.LayerNorm(D)

    def attentions(self) -> list[Tensor]:
        return [(a.fn if isinstance(a, PreNorm) else a).attn for a, _ in self.layers]

    def forward(self, x: Tensor) -> Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x if self.norm is None else self.norm(x)


class LucidViT(nn.Module):
    """vit-pytorch's ViT: class token, learned positions, pool "cls" or "mean" (all tokens)."""

    def __init__(self, *, image=16, P=4, C=3, classes=5, D=32, depth=2, heads=2, dim_head=24, hidden=48,
                 pool="cls", legacy=False) -> None:  # fmt: skip
        super().__init__()
        pd, n = C * P * P, (image // P) ** 2
        if legacy:
            self.to_patch_embedding = nn.Sequential(FlattenPatches(P), nn.Linear(pd, D))
        else:
            self.to_patch_embedding = nn.Sequential(
                FlattenPatches(P), nn.LayerNorm(pd), nn.Linear(pd, D), nn.LayerNorm(D)
            )
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, D))
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.transformer = LucidTransformer(D, depth, heads, dim_head, hidden, legacy, simple=False)
        self.pool = pool
        self.mlp_head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, classes)) if legacy else nn.Linear(D, classes)

    def forward(self, img: Tensor) -> Tensor:
        x = self.to_patch_embedding(img)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.transformer(x)
        return self.mlp_head(x.mean(dim=1) if self.pool == "mean" else x[:, 0])


def sincos_by_description(gh: int, gw: int, D: int) -> Tensor:
    """Beyer et al. 2022: per patch (row y, column x), D/4 frequencies w_k = 10000^(-k/(D/4-1)),
    channels [sin(x w), cos(x w), sin(y w), cos(y w)]; written as a loop on purpose."""
    q = D // 4
    pe = torch.zeros(gh * gw, D, dtype=torch.float64)
    for y in range(gh):
        for x in range(gw):
            for k in range(q):
                w = 10000.0 ** (-k / (q - 1))
                row = y * gw + x
                pe[row, k], pe[row, q + k] = math.sin(x * w), math.cos(x * w)
                pe[row, 2 * q + k], pe[row, 3 * q + k] = math.sin(y * w), math.cos(y * w)
    return pe.float()


class LucidSimpleViT(nn.Module):
    """vit-pytorch's SimpleViT: no class token, fixed sine-cosine positions, mean pooling."""

    def __init__(self, *, image=16, P=4, C=3, classes=5, D=32, depth=2, heads=4, dim_head=8, hidden=48) -> None:
        super().__init__()
        pd = C * P * P
        self.to_patch_embedding = nn.Sequential(FlattenPatches(P), nn.LayerNorm(pd), nn.Linear(pd, D), nn.LayerNorm(D))
        self.pos_embedding = sincos_by_description(image // P, image // P, D)  # not a parameter: not saved
        self.transformer = LucidTransformer(D, depth, heads, dim_head, hidden, legacy=False, simple=True)
        self.linear_head = nn.Linear(D, classes)

    def forward(self, img: Tensor) -> Tensor:
        x = self.to_patch_embedding(img) + self.pos_embedding
        return self.linear_head(self.transformer(x).mean(dim=1))


# ----------------------------------------------------------------------------------------------
# The walkthrough's mini-ViT: Conv2d patches, per-head q/k/v Linears, blocks that normalise
# the residual stream itself


class HeadAttention(nn.Module):
    def __init__(self, D: int, d: int) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(D, d), nn.Linear(D, d), nn.Linear(D, d)
        self.attn = None

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        self.attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.attn @ v


class WalkthroughMHA(nn.Module):
    def __init__(self, D: int, heads: int, d: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList([HeadAttention(D, d) for _ in range(heads)])
        self.proj = nn.Linear(heads * d, D)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))


class WalkthroughBlock(nn.Module):
    def __init__(self, D: int, heads: int, d: int, hidden: int) -> None:
        super().__init__()
        self.ln1, self.mha = nn.LayerNorm(D), WalkthroughMHA(D, heads, d)
        self.ln2 = nn.LayerNorm(D)
        self.ffn = nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, D))

    def forward(self, x: Tensor) -> Tensor:
        x = self.ln1(x)
        x = x + self.mha(x)
        x = self.ln2(x)
        return x + self.ffn(x)


class WalkthroughViT(nn.Module):
    def __init__(self, *, image=16, P=4, C=3, classes=5, D=32, depth=2, heads=4, d=8, hidden=64) -> None:
        super().__init__()
        self.embedding = nn.Module()
        self.embedding.proj = nn.Conv2d(C, D, P, stride=P)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.pos_embeddings = nn.Parameter(torch.randn(1, (image // P) ** 2 + 1, D))
        self.blocks = nn.ModuleList([WalkthroughBlock(D, heads, d, hidden) for _ in range(depth)])
        self.layernorm = nn.LayerNorm(D)
        self.to_out = nn.Linear(D, classes)

    def attentions(self) -> list[Tensor]:
        return [torch.stack([h.attn for h in b.mha.heads], dim=1) for b in self.blocks]

    def forward(self, img: Tensor) -> Tensor:
        x = self.embedding.proj(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embeddings
        for b in self.blocks:
            x = b(x)
        return self.to_out(self.layernorm(x)[:, 0])


# ----------------------------------------------------------------------------------------------
# The nn.MultiheadAttention tutorial, as written: (B, N, D) handed to a sequence-first layer


class TutorialPatchEmbedding(nn.Module):
    def __init__(self, P: int, C: int, D: int, n: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(C, D, P, stride=P)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.position_embedding = nn.Parameter(torch.randn(1, n + 1, D))

    def forward(self, img: Tensor) -> Tensor:
        x = self.projection(img).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position_embedding


class TutorialEncoderLayer(nn.Module):
    def __init__(self, D: int, heads: int, hidden: int, as_intended: bool) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(D, heads)  # batch_first=False: reads (N, B, D)
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.feed_forward = nn.Sequential(nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, D))
        self.as_intended = as_intended
        self.weights = self.out = None

    def forward(self, x: Tensor) -> Tensor:
        if self.as_intended:  # the fix: hand it (N, B, D)
            t = x.transpose(0, 1)
            a, self.weights = self.attention(t, t, t, average_attn_weights=False)
            a = a.transpose(0, 1)
        else:  # as written: (B, N, D) is read as B tokens of a batch of N
            a, self.weights = self.attention(x, x, x, average_attn_weights=False)
        x = self.norm1(x + a)
        self.out = self.norm2(x + self.feed_forward(x))
        return self.out


class TutorialViT(nn.Module):
    def __init__(self, *, image=16, P=4, C=3, classes=5, D=32, depth=2, heads=4, hidden=64, as_intended=False) -> None:
        super().__init__()
        self.patch_embedding = TutorialPatchEmbedding(P, C, D, (image // P) ** 2)
        self.encoder_layers = nn.ModuleList([TutorialEncoderLayer(D, heads, hidden, as_intended) for _ in range(depth)])
        self.mlp_head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, classes))

    def forward(self, img: Tensor) -> Tensor:
        x = self.patch_embedding(img)
        for layer in self.encoder_layers:
            x = layer(x)
        return self.mlp_head(x[:, 0])


# ----------------------------------------------------------------------------------------------
# nn.TransformerEncoderLayer ViTs


class EncoderViT(nn.Module):
    def __init__(self, *, norm_first: bool, batch_first: bool, activation: str, image=16, P=4, C=3, classes=5,
                 D=32, depth=2, heads=4, hidden=64) -> None:  # fmt: skip
        super().__init__()
        self.conv_proj = nn.Conv2d(C, D, P, stride=P)
        self.class_token = nn.Parameter(torch.randn(1, 1, D))
        self.pos_embedding = nn.Parameter(torch.randn(1, (image // P) ** 2 + 1, D))
        layer = nn.TransformerEncoderLayer(
            D, heads, hidden, dropout=0.0, activation=activation, batch_first=batch_first, norm_first=norm_first
        )
        self.transformer = nn.TransformerEncoder(
            layer, depth, norm=nn.LayerNorm(D) if norm_first else None, enable_nested_tensor=False
        )
        self.head = nn.Linear(D, classes)
        self.batch_first, self.norm_first = batch_first, norm_first

    def tokens(self, img: Tensor) -> Tensor:
        x = self.conv_proj(img).flatten(2).transpose(1, 2)
        return torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding

    def forward(self, img: Tensor) -> Tensor:
        x = self.tokens(img)
        x = self.transformer(x if self.batch_first else x.transpose(0, 1))
        return self.head((x if self.batch_first else x.transpose(0, 1))[:, 0])

    def attentions(self, img: Tensor) -> list[Tensor]:
        """Each layer's (B, h, N, N) map, from its own self_attn, running the layers by hand."""
        x, maps = self.tokens(img), []
        for layer in self.transformer.layers:
            t = layer.norm1(x) if self.norm_first else x
            t = t if self.batch_first else t.transpose(0, 1)
            _, w = layer.self_attn(t, t, t, need_weights=True, average_attn_weights=False)
            maps.append(w)
            x = layer(x if self.batch_first else x.transpose(0, 1))
            x = x if self.batch_first else x.transpose(0, 1)
        return maps


# ----------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_pytorch_vit_loads_exactly(tmp_path: Path, batch: int, pool: str) -> None:
    ref = _randomise(LucidViT(pool=pool), seed=0)
    path = _save(ref, tmp_path)
    model = load_checkpoint(path, num_heads=2, global_pool=pool)
    cfg = model.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.head_dim, cfg.patch_size, cfg.img_size) == (
        32, 2, 2, 24, 4, (16, 16)
    )  # fmt: skip
    assert cfg.patch_norm and cfg.inner_dim == 48 and cfg.extra["family"] == "vit-pytorch-vit"
    x = _images(batch)
    with torch.no_grad():
        expected = ref(x)
        t = model.trace(x)
        _close(model(x), expected)
    _close(t.logits, expected)
    _close(t.attentions, torch.stack(ref.transformer.attentions(), dim=1))


@pytest.mark.parametrize("batch", [1, 2])
def test_vit_pytorch_legacy_vit_loads_exactly(tmp_path: Path, batch: int) -> None:
    """Older vit-pytorch: PreNorm wrappers, a bare Linear patch projection, no final norm,
    mlp_head = LayerNorm + Linear."""
    ref = _randomise(LucidViT(legacy=True, heads=4, dim_head=8), seed=1)
    keys = set(ref.state_dict())
    assert {"transformer.layers.0.0.fn.to_qkv.weight", "mlp_head.0.weight"} <= keys
    assert "transformer.norm.weight" not in keys
    model = load_checkpoint(_save(ref, tmp_path), num_heads=4, global_pool="cls")
    assert not model.cfg.patch_norm and not model.cfg.final_norm and model.cfg.use_fc_norm
    x = _images(batch)
    with torch.no_grad():
        t = model.trace(x)
        _close(t.logits, ref(x))
    _close(t.attentions, torch.stack(ref.transformer.attentions(), dim=1))


@pytest.mark.parametrize("batch", [1, 2])
def test_simple_vit_loads_exactly(tmp_path: Path, batch: int) -> None:
    ref = _randomise(LucidSimpleViT(), seed=2)
    path = _save(ref, tmp_path)
    assert "pos_embedding" not in torch.load(path, weights_only=True)  # computed, not saved
    model = load_checkpoint(path, num_heads=4, img_size=16)
    assert model.cfg.pos_embed_type == "sincos" and not model.cfg.class_token
    assert "pos_embed" not in model.state_dict()
    _close(model.pos_embed[0], sincos_by_description(4, 4, 32))
    x = _images(batch)
    with torch.no_grad():
        t = model.trace(x)
        _close(t.logits, ref(x))
        _close(model(x), ref(x))
    _close(t.attentions, torch.stack(ref.transformer.attentions(), dim=1))


@pytest.mark.parametrize("batch", [1, 2])
def test_walkthrough_mini_vit_loads_exactly(tmp_path: Path, batch: int) -> None:
    ref = _randomise(WalkthroughViT(), seed=3)
    model = load_checkpoint(_save(ref, tmp_path))  # per-head modules: nothing to ask
    assert model.cfg.norm_placement == "stream" and model.cfg.num_heads == 4
    x = _images(batch)
    with torch.no_grad():
        t = model.trace(x)
        _close(t.logits, ref(x))
    _close(t.attentions, torch.stack(ref.attentions(), dim=1))
    # hidden states: after each block, as the walkthrough's own blocks leave the stream
    with torch.no_grad():
        h = model.embed(x)[0]
        _close(t.hidden_states[:, 0], h)
        for i, b in enumerate(ref.blocks):
            h = b(h)
            _close(t.hidden_states[:, i + 1], h)


@pytest.mark.parametrize("batch", [1, 2])
def test_mha_tutorial_loads_as_its_code_computes_one_image(tmp_path: Path, batch: int) -> None:
    ref = _randomise(TutorialViT(), seed=4)
    model = load_checkpoint(_save(ref, tmp_path), num_heads=4)
    assert model.attends_across_batch and model.cfg.norm_placement == "post" and model.cfg.activation == "relu"
    assert not model.cfg.final_norm and model.cfg.use_fc_norm
    x = _images(batch)
    with torch.no_grad():
        t = model.trace(x)
        logits, hidden = [], []
        for b in range(batch):  # each image as a batch of one
            logits.append(ref(x[b : b + 1]))
            hidden.append(torch.stack([layer.out for layer in ref.encoder_layers], dim=1))
            for layer in ref.encoder_layers:  # (N, h, 1, 1): a softmax over one key
                assert torch.equal(layer.weights, torch.ones_like(layer.weights))
        alone = torch.cat(logits)
        _close(t.logits, alone)
        _close(model(x), alone)
        _close(t.hidden_states[:, 1:], torch.cat(hidden))
        if batch == 2:  # the tutorial's own batch of two mixes the images' patch tokens...
            ref(x)
            mixed = torch.stack([layer.out for layer in ref.encoder_layers], dim=1)
            assert (mixed - torch.cat(hidden))[:, :, 1:].abs().max() > 1e-2
        # ...but not its class token, which only ever meets class tokens: every image gets the same logits
        _close(t.logits, t.logits[:1].expand_as(t.logits))
    eye = torch.eye(t.attentions.shape[-1]).expand_as(t.attentions)
    assert torch.equal(t.attentions, eye)


@pytest.mark.parametrize("batch", [1, 2])
def test_mha_tutorial_as_intended(tmp_path: Path, batch: int) -> None:
    ref = _randomise(TutorialViT(as_intended=True), seed=5)
    path = _save(ref, tmp_path)
    model = load_checkpoint(path, num_heads=4, attention_axis="tokens")
    assert not model.attends_across_batch and "as intended" in model.cfg.name
    x = _images(batch)
    with torch.no_grad():
        t = model.trace(x)
        _close(t.logits, ref(x))
    _close(t.attentions, torch.stack([layer.weights for layer in ref.encoder_layers], dim=1))


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "norm_first,batch_first,activation", [(False, False, "relu"), (True, True, "gelu"), (False, True, "gelu"),
                                          (True, False, "relu")]
)  # fmt: skip
def test_transformer_encoder_vit_loads_exactly(
    tmp_path: Path, batch: int, norm_first: bool, batch_first: bool, activation: str
) -> None:
    ref = _randomise(EncoderViT(norm_first=norm_first, batch_first=batch_first, activation=activation), seed=6)
    model = load_checkpoint(_save(ref, tmp_path), num_heads=4, norm_first=norm_first, activation=activation)
    assert model.cfg.norm_placement == ("pre" if norm_first else "post")
    assert model.cfg.final_norm == norm_first
    x = _images(batch)
    with torch.no_grad():
        t = model.trace(x)
        _close(t.logits, ref(x))
        _close(model(x), ref(x))
        _close(t.attentions, torch.stack(ref.attentions(x), dim=1))


def test_lightning_checkpoint_loads(tmp_path: Path) -> None:
    """A Lightning .ckpt: the network under `state_dict`, every key prefixed `model.`."""
    ref = _randomise(EncoderViT(norm_first=True, batch_first=True, activation="gelu"), seed=7)
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.2.0",
        "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
        "hyper_parameters": {"lr": 1e-3, "heads": 4},
    }
    path = tmp_path / "epoch=3-step=120.ckpt"
    torch.save(ckpt, path)
    model = load_checkpoint(path, num_heads=4, norm_first=True, activation="gelu")
    x = _images(2)
    with torch.no_grad():
        _close(model(x), ref(x))


def test_answers_survive_save_checkpoint(tmp_path: Path) -> None:
    ref = _randomise(LucidSimpleViT(), seed=8)
    model = load_checkpoint(_save(ref, tmp_path), num_heads=4, img_size=16)
    again = load_checkpoint(save_checkpoint(model, tmp_path / "mine.safetensors"))  # nothing to ask any more
    assert again.cfg == model.cfg
    assert again.cfg.extra["answers"] == {"num_heads": 4, "img_size": 16}
    x = _images(2)
    with torch.no_grad():
        _close(again(x), ref(x))
    tut = load_checkpoint(_save(_randomise(TutorialViT(), seed=9), tmp_path, "t.pth"), num_heads=4)
    saved = load_checkpoint(save_checkpoint(tut, tmp_path / "t.safetensors"))
    assert saved.attends_across_batch
    intended = load_checkpoint(tmp_path / "t.safetensors", attention_axis="tokens")
    assert not intended.attends_across_batch and "as intended" in intended.cfg.name


# ----------------------------------------------------------------------------------------------
# Questions and refusals


def test_missing_answers_are_asked_with_likeliest_values(tmp_path: Path) -> None:
    path = _save(_randomise(LucidViT(heads=2, dim_head=64), seed=0), tmp_path)
    with pytest.raises(AnswerNeededError) as info:
        load_checkpoint(path)
    e = info.value
    assert isinstance(e, CheckpointError) and e.family == "vit-pytorch-vit"
    assert e.argument == "num_heads" and e.choices[:2] == (2, 4)  # 64-wide heads, then 32-wide
    assert [q.argument for q in e.questions] == ["num_heads", "global_pool"]
    assert "num_heads=" in str(e) and "global_pool=" in str(e)
    with pytest.raises(AnswerNeededError) as info:
        load_checkpoint(path, num_heads=2)
    assert info.value.argument == "global_pool" and info.value.choices == ("cls", "mean")

    simple = _save(_randomise(LucidSimpleViT(), seed=0), tmp_path, "simple.pth")
    with pytest.raises(AnswerNeededError) as info:
        load_checkpoint(simple, num_heads=4)
    assert info.value.argument == "img_size" and 32 in info.value.choices and "img_size=" in str(info.value)

    enc = _save(_randomise(EncoderViT(norm_first=False, batch_first=True, activation="relu"), seed=0), tmp_path, "e.pt")
    with pytest.raises(AnswerNeededError) as info:
        load_checkpoint(enc)
    assert [q.argument for q in info.value.questions] == ["num_heads", "norm_first", "activation"]


def test_head_choices_prefer_64_then_32_wide_heads() -> None:
    assert head_choices(192)[:2] == (3, 6)
    assert all(192 % h == 0 and 192 // h >= 8 for h in head_choices(192))
    assert head_choices(48) == (1, 2, 3, 4, 6)  # no 64- or 32-wide heads: every head count with heads >= 8 wide


def test_wrong_answers_and_malformed_state_dicts_are_named(tmp_path: Path) -> None:
    sd = _randomise(LucidViT(heads=2, dim_head=24), seed=0).state_dict()

    def load(d: dict, **kw) -> None:
        torch.save(d, tmp_path / "bad.pth")
        load_checkpoint(tmp_path / "bad.pth", **{"num_heads": 2, "global_pool": "cls", **kw})

    with pytest.raises(CheckpointError, match="num_heads=5 does not divide"):
        load(sd, num_heads=5)
    with pytest.raises(CheckpointError, match="global_pool='max'"):
        load(sd, global_pool="max")
    with pytest.raises(CheckpointError, match=r"blocks \[0\]"):
        load({k: v for k, v in sd.items() if not k.startswith("transformer.layers.0.")})
    with pytest.raises(CheckpointError, match="no place in this model: extra.weight"):
        load({**sd, "extra.weight": torch.zeros(3)})
    bad = dict(sd)
    bad["transformer.layers.1.0.to_out.0.weight"] = torch.zeros(32, 40)
    with pytest.raises(CheckpointError, match=r"to_out.0.weight has shape \(32, 40\)"):
        load(bad)
    two_layer_head = {k: v for k, v in sd.items() if not k.startswith("mlp_head")}
    two_layer_head.update({"mlp_head.0.weight": torch.zeros(16, 32), "mlp_head.2.weight": torch.zeros(5, 16)})
    with pytest.raises(CheckpointError, match="head has 2 Linear layers"):
        load(two_layer_head)

    tut = _randomise(TutorialViT(), seed=0).state_dict()
    torch.save({k: v for k, v in tut.items() if "out_proj" not in k}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="missing .*out_proj.weight"):
        load_checkpoint(tmp_path / "t.pth", num_heads=4)
    walk = _randomise(WalkthroughViT(), seed=0).state_dict()
    torch.save({k: v for k, v in walk.items() if "heads.2.to_k" not in k}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="head 2 to_k"):
        load_checkpoint(tmp_path / "w.pth")
    torch.save({k: v for k, v in walk.items() if k != "pos_embeddings"}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="one learned position embedding"):
        load_checkpoint(tmp_path / "w.pth")


def test_family_detection() -> None:
    def fam(m: nn.Module) -> str | None:
        return detect_family(m.state_dict())

    assert fam(LucidViT()) == "vit-pytorch-vit"
    assert fam(LucidSimpleViT()) == "vit-pytorch-simple"
    assert fam(WalkthroughViT()) == "walkthrough"
    assert fam(TutorialViT()) == "mha-tutorial"
    assert fam(EncoderViT(norm_first=True, batch_first=True, activation="gelu")) == "torch-encoder"
    assert detect_family({"patch_embed.proj.weight": torch.zeros(1)}) is None


def test_attention_grads_exist_for_the_tutorial_model(tmp_path: Path) -> None:
    """Attention-gradient maps need the attention in the graph, also when it is the identity."""
    model = load_checkpoint(_save(_randomise(TutorialViT(), seed=4), tmp_path), num_heads=4)
    t = model.trace(_images(1), target=0)
    assert t.attention_grads is not None and t.attention_grads.shape == t.attentions.shape
    assert t.attention_grads.abs().sum() > 0


def test_describe_says_what_sets_a_students_model_apart(tmp_path: Path) -> None:
    tut = describe(load_checkpoint(_save(_randomise(TutorialViT(), seed=4), tmp_path), num_heads=4))
    assert tut["family"] == "the nn.MultiheadAttention tutorial ViT" and tut["attends_across_batch"]
    assert "every token attends only to itself" in tut["notes"][0]
    assert "predicts the same for every image" in tut["notes"][0]  # its class token never reads a patch
    assert any("Post-norm" in n for n in tut["notes"]) and any("ReLU" in n for n in tut["notes"])
    lucid = describe(load_checkpoint(_save(LucidViT(), tmp_path, "v.pth"), num_heads=2, global_pool="mean"))
    assert lucid["head_dim"] == 24 and any("24 wide" in n for n in lucid["notes"])
    assert any("class token included" in n for n in lucid["notes"])
    assert any("layer-normalises each flattened patch" in n for n in lucid["notes"])


def test_convert_cli_asks_by_flag_then_writes_a_file_that_loads_without_questions(tmp_path: Path, capsys) -> None:
    from vit_core.convert import main as convert

    ref = _randomise(LucidViT(pool="cls"), seed=0)
    path = _save(ref, tmp_path)
    dest = tmp_path / "mine.safetensors"
    assert convert([str(path), str(dest)]) == 2
    err = capsys.readouterr().err
    assert "--num-heads (likely: " in err and "--global-pool (likely: cls, mean)" in err and not dest.exists()
    assert convert([str(path), str(dest), "--num-heads", "2", "--global-pool", "cls", "--name", "My ViT"]) == 0
    model = load_checkpoint(dest)  # no question any more
    assert model.cfg.name == "My ViT" and model.cfg.num_heads == 2
    x = _images(2)
    with torch.no_grad():
        _close(model(x), ref(x))
