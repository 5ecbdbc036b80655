"""The Overview's diagram and formulas follow the model: each line names the layers that exist,
in the order `forward` calls them (recorded with forward hooks, independently of vit_core.formulas)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from vit_core.config import ViTConfig
from vit_core.formulas import architecture
from vit_core.model import DropPath, VisionTransformer, sincos_pos_embed

BASE = dict(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=16, depth=2, num_heads=2, crop_pct=1.0)

# one config per option (and a few combinations), each a model the app can load
VARIANTS = {
    "timm": {},
    "post": {"norm_placement": "post"},
    "stream": {"norm_placement": "stream"},
    "relu": {"activation": "relu"},
    "dim_head": {"dim_head": 12, "qkv_bias": False},
    "patch_norm": {"patch_norm": True},
    "sincos_avg": {"pos_embed_type": "sincos", "class_token": False, "global_pool": "avg", "no_embed_class": True},
    "no_pos": {"pos_embed_type": "none"},
    "avg_all_no_norm": {"global_pool": "avg_all", "final_norm": False, "fc_norm": False},
    "avg_fc_norm": {"global_pool": "avg"},
    "registers": {"reg_tokens": 2},
    "layerscale_post": {"init_values": 0.1, "norm_placement": "post"},
    "distilled": {"distill_token": True},
    "across_batch": {"attention_axis": "batch", "norm_placement": "post", "activation": "relu"},
    "vit_pytorch": {"patch_norm": True, "dim_head": 8, "qkv_bias": False, "global_pool": "avg_all", "final_norm": True},
}


def build(options: dict) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**{**BASE, **options})).eval()


def call_order(model: nn.Module, scope: nn.Module, prefix: str) -> list[str]:
    """Names (relative to `scope`) of `scope`'s direct children in the order one forward calls them;
    Identity and DropPath (no computation in eval) left out."""
    order: list[str] = []
    handles = [
        child.register_forward_hook(lambda m, i, o, name=name: order.append(name))
        for name, child in scope.named_children()
        if not isinstance(child, (nn.Identity, DropPath, nn.ModuleList))
    ]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 16, 16))
    finally:
        for h in handles:
            h.remove()
    return [f"{prefix}{n}" for n in order]


def flat(steps, attr="modules") -> list[str]:
    return [m for s in steps for m in getattr(s, attr)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_block_lines_name_the_block_layers_in_forward_order(variant):
    model = build(VARIANTS[variant])
    arch = architecture(model.cfg)
    blk = model.blocks[0]
    # the block is called once per forward: the hooks on block 0 see one pass
    assert flat(arch.block) == call_order(model, blk, "")
    assert flat(arch.attention) == call_order(model, blk.attn, "attn.")
    assert flat(arch.mlp) == call_order(model, blk.mlp, "mlp.")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_embedding_and_head_lines_name_the_layers_in_forward_order(variant):
    model = build(VARIANTS[variant])
    arch = architecture(model.cfg)
    assert flat(arch.embed) == call_order(model, model.patch_embed, "patch_embed.")
    top = [n for n in call_order(model, model, "") if n != "patch_embed"]
    assert flat(arch.head) == top
    for name in flat(arch.embed, "weights"):  # used by weight, not called: must exist all the same
        assert isinstance(model.get_submodule(name), nn.Module)


SYMBOL = {"norm1": r"\mathrm{LN}_1", "norm2": r"\mathrm{LN}_2", "attn": r"\mathrm{MSA}", "mlp": r"\mathrm{MLP}"}
SYMBOL.update({"ls1": r"\gamma_1", "ls2": r"\gamma_2"})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_block_line_writes_the_layers_it_runs_in_order(variant):
    """Written left to right, a layer applied later is the outer function: post-norm's LN is the
    first symbol of its line and its MSA the last; pre-norm's MSA comes before its LN."""
    model = build(VARIANTS[variant])
    for step in architecture(model.cfg).block:
        rhs = step.latex.split("=", 1)[1]
        positions = [rhs.find(SYMBOL[m]) for m in step.modules]
        assert all(p >= 0 for p in positions), (step.latex, step.modules)
        if len(step.modules) > 1:  # nested calls read outside-in: the order reversed
            assert positions == sorted(positions, reverse=True), (step.latex, step.modules)


def test_post_norm_line_matches_the_block_forward_numerically():
    """x = LN1(x + MSA(x)), x = LN2(x + MLP(x)) evaluated with the block's own layers equals block(x)."""
    model = build({"norm_placement": "post", "activation": "relu"})
    blk, x = model.blocks[0], torch.randn(2, 17, 16)
    lines = [s.latex for s in architecture(model.cfg).block]
    assert lines == [r"z'_\ell = \mathrm{LN}_1(z_{\ell-1} + \mathrm{MSA}(z_{\ell-1}))", r"z_\ell = \mathrm{LN}_2(z'_\ell + \mathrm{MLP}(z'_\ell))"]  # fmt: skip
    with torch.no_grad():
        z1 = blk.norm1(x + blk.attn(x)[0])
        z2 = blk.norm2(z1 + blk.mlp.fc2(torch.relu(blk.mlp.fc1(z1))))
        torch.testing.assert_close(z2, blk(x)[0], rtol=1e-5, atol=1e-5)
    assert "ReLU" in architecture(model.cfg).mlp[0].latex and "GELU" not in architecture(model.cfg).mlp[0].latex


def test_stream_lines_match_the_block_forward_numerically():
    model = build({"norm_placement": "stream"})
    blk, x = model.blocks[0], torch.randn(1, 17, 16)
    arch = architecture(model.cfg)
    assert [s.modules for s in arch.block] == [("norm1",), ("attn",), ("norm2",), ("mlp",)]
    with torch.no_grad():
        u = blk.norm1(x)
        z1 = u + blk.attn(u)[0]
        v = blk.norm2(z1)
        torch.testing.assert_close(v + blk.mlp(v), blk(x)[0], rtol=1e-5, atol=1e-5)


def test_shapes_use_the_inner_attention_width():
    model = build({"dim_head": 12})  # 2 heads of 12: inner width 24, token width 16
    shapes = dict(architecture(model.cfg).block_shapes)
    qkv = model.blocks[0].attn.qkv
    assert qkv.out_features == 3 * 24 and model.blocks[0].attn.proj.in_features == 24
    assert shapes["q, k, v (all heads)"] == "3 x 17 x 2·12 = 3 x 17 x 24"
    assert shapes["heads concatenated"] == "17 x 24" and shapes["block output"] == "17 x 16"
    assert shapes["MLP hidden layer"] == f"17 x {model.blocks[0].mlp.fc1.out_features}"
    assert r"\sqrt{12}" in architecture(model.cfg).attention[1].latex


def test_patch_norm_is_in_the_embedding_step():
    arch = architecture(build({"patch_norm": True}).cfg)
    assert arch.embed[0].latex == r"e^i = \mathrm{LN}_b(\mathrm{LN}_a(x_p^i)\,E)"
    assert arch.stages[2].detail.startswith("LayerNorm, Linear, LayerNorm")
    assert architecture(build({}).cfg).embed[0].latex == r"e^i = x_p^i E"


def test_positions_are_named_as_the_model_has_them():
    learned, sincos, none = (build(o) for o in ({}, VARIANTS["sincos_avg"], VARIANTS["no_pos"]))
    assert isinstance(learned.pos_embed, nn.Parameter)
    assert r"+ E_\text{pos}" in architecture(learned.cfg).embed[1].latex
    assert "learned position vectors" in architecture(learned.cfg).stages[3].detail
    torch.testing.assert_close(sincos.pos_embed, sincos_pos_embed((4, 4), 16))  # fixed, from the grid
    a = architecture(sincos.cfg)
    assert r"\mathrm{PE}_\text{sin-cos}" in a.embed[1].latex and "sine-cosine" in a.stages[3].detail
    assert r"x_\text{class}" not in a.embed[1].latex and a.stages[3].title == "3. + positions"
    assert not none.pos_embed.any()  # nothing added
    a = architecture(none.cfg)
    assert "no position embedding" in a.embed[1].latex and "E_" not in a.embed[1].latex
    assert a.stages[3].title == "3. + CLS" and "no position embedding" in a.stages[3].detail


def test_pooling_and_final_norm_are_named_as_computed():
    model = build(VARIANTS["sincos_avg"])
    a = architecture(model.cfg)
    # avg pooling: timm's default puts the norm after pooling (fc_norm), none before
    assert isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.LayerNorm)
    assert (
        a.head[0].latex == r"y = \mathrm{Head}(\mathrm{LN}_\text{fc}(\tfrac{1}{n}\textstyle\sum_{i=0}^{N-1} [z_L]^i))"
    )
    assert a.stages[5].detail == "LayerNorm + Linear<br>on the patches' mean" and "[CLS]" not in a.stages[5].detail
    a = architecture(build(VARIANTS["avg_all_no_norm"]).cfg)
    assert "LN" not in a.head[0].latex and a.stages[5].detail == "Linear (no final norm)<br>on all tokens' mean"
    assert "no LayerNorm after the last block" in a.notes
    a = architecture(build({}).cfg)
    assert a.head[0].latex == r"y = \mathrm{Head}([\mathrm{LN}(z_L)]^0)" and a.notes == []


def test_sums_over_the_patch_tokens_start_after_the_prefix():
    model = build({"global_pool": "avg", "reg_tokens": 2})
    latex = architecture(model.cfg).head[0].latex
    k = model.num_prefix_tokens
    assert re.search(r"sum_\{i=(\d+)\}", latex).group(1) == str(k) == "3"
    tokens = torch.randn(1, 3 + 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_head(tokens), model.head(model.fc_norm(tokens[:, k:].mean(1))), rtol=1e-6, atol=1e-6
        )


def test_across_batch_attention_is_written_as_each_token_to_itself():
    a = architecture(build(VARIANTS["across_batch"]).cfg)
    assert "softmax" not in a.attention[1].latex and "itself" in a.attention[1].latex
    assert "itself" in a.stages[4].detail and "(the identity)" in dict(a.block_shapes)["attention maps"]


def test_diagram_counts_tokens_and_the_whole_latex_is_balanced():
    for options in VARIANTS.values():
        model = build(options)
        a = architecture(model.cfg)
        N = model.num_prefix_tokens + 16
        assert a.stages[3].shape == f"{N} x 16" and a.stages[4].shape == f"{N} x 16"
        assert a.stages[1].shape == "16 x 48"
        latex = a.latex()
        assert latex.count("{") == latex.count("}") and latex.count("(") == latex.count(")")
        enc = a.stages[4].detail
        assert ("ReLU" in enc) == (model.cfg.activation == "relu")
        assert {"pre": "pre-norm", "post": "post-norm", "stream": "normalised stream"}[model.cfg.norm_placement] in enc


# ---- the page --------------------------------------------------------------------------------

PAGE_CONFIGS = {
    "post_relu_dimhead": {"norm_placement": "post", "activation": "relu", "dim_head": 12},
    "simple_vit": {**VARIANTS["sincos_avg"], "patch_norm": True},
    "no_pos_no_norm": {"pos_embed_type": "none", "global_pool": "avg_all", "final_norm": False, "fc_norm": False},
}


def _overview(tmp_path, options: dict | None):
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP
    from vit_core.checkpoints import save_checkpoint

    at = AppTest.from_file(APP, default_timeout=180)
    if options is None:
        at.session_state["model_choice"] = "untrained"
    else:
        cfg = ViTConfig(**{**BASE, "img_size": 32, "num_classes": 10, **options})
        torch.manual_seed(0)
        path = save_checkpoint(VisionTransformer(cfg), tmp_path / "own.safetensors")
        at.session_state["extra_model_keys"] = {f"file:{path}": "own model"}  # as the sidebar's "More models" adds it
        at.session_state["model_choice"] = f"file:{path}"
    at.run()
    at.switch_page("pages/1_overview.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _latex(at) -> str:
    """The page's architecture formulas (its first LaTeX block), without the $$ fences Streamlit adds."""
    return at.latex[0].value.strip().removeprefix("$$").removesuffix("$$").strip()


def _pipeline_text(at) -> str:
    import json

    fig = json.loads(next(c for c in at.get("plotly_chart") if "pipeline" in c.proto.id).proto.spec)
    return " ".join(a.get("text", "") for a in fig["layout"]["annotations"])


@pytest.mark.parametrize("name", list(PAGE_CONFIGS))
def test_overview_page_draws_the_loaded_models_architecture(tmp_path, name):
    at = _overview(tmp_path, PAGE_CONFIGS[name])
    cfg = ViTConfig(**{**BASE, "img_size": 32, "num_classes": 10, **PAGE_CONFIGS[name]})
    arch = architecture(cfg)
    assert _latex(at) == arch.latex()
    diagram = _pipeline_text(at)
    for stage in arch.stages:
        assert stage.title in diagram and stage.detail in diagram
    text = " ".join(e.value for e in (*at.markdown, *at.caption))
    assert "Where this model differs from the ViT paper's" in text
    for note in arch.notes:
        assert note in text
    if name == "post_relu_dimhead":
        assert r"\mathrm{LN}_1(z_{\ell-1} + \mathrm{MSA}(z_{\ell-1}))" in _latex(at)
        assert "3 x 65 x 2·12 = 3 x 65 x 24" in text and "ReLU MLP" in diagram
    elif name == "simple_vit":
        assert "sine-cosine" in diagram and "LayerNorm, Linear, LayerNorm" in diagram and "[CLS]" not in diagram
    else:
        assert "no position embedding" in diagram and "(no final norm)" in diagram


def test_overview_page_writes_the_paper_vit_for_a_standard_model(tmp_path):
    at = _overview(tmp_path, None)
    latex = _latex(at)
    assert r"z'_\ell = z_{\ell-1} + \mathrm{MSA}(\mathrm{LN}_1(z_{\ell-1}))" in latex
    assert r"\mathrm{GELU}" in latex and r"+ E_\text{pos}" in latex and r"[\mathrm{LN}(z_L)]^0" in latex
    assert "Where this model differs" not in " ".join(e.value for e in at.markdown)
    assert "learned position vectors" in _pipeline_text(at)
