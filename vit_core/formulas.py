"""What a ViT computes, as the Overview page writes it: the five steps and the formulas of a block,
built from the model's config so that every option reads as `VisionTransformer.forward` computes it.

Each formula line is a `Step`: its LaTeX and the modules it runs, in the order `forward` calls
them (names relative to the model, or to one block for the block's lines). Tests hold these
lists against the modules' forward hooks, so a formula cannot name a layer the model lacks, or
put the LayerNorm where the model does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import ViTConfig

NORM_NAMES = {
    "pre": "pre-norm",
    "post": "post-norm",
    "stream": "normalised stream",
}
ACTIVATION_LATEX = {"gelu": r"\mathrm{GELU}", "relu": r"\mathrm{ReLU}"}
ACTIVATION_NAMES = {"gelu": "GELU", "relu": "ReLU"}
POSITION_NAMES = {
    "learned": "learned position vectors",
    "sincos": "fixed 2-D sine-cosine positions",
    "none": "no position embedding",
}


@dataclass(frozen=True)
class Step:
    """One formula line and the modules it runs."""

    latex: str
    modules: tuple[str, ...] = ()  # called as modules, in forward's order
    weights: tuple[str, ...] = ()  # modules whose weights the line uses without calling them


@dataclass(frozen=True)
class StageText:
    """One box of the diagram, without its parameter count (the page counts them on the model)."""

    title: str
    shape: str
    detail: str


@dataclass(frozen=True)
class Architecture:
    """The Overview's text for one model: diagram boxes, formulas, and the shapes inside a block."""

    stages: list[StageText]
    embed: list[Step]  # module names relative to the model
    block: list[Step]  # one block's lines, module names relative to the block
    attention: list[Step]  # MSA's definition, names relative to the block
    mlp: list[Step]  # MLP's definition, names relative to the block
    head: list[Step]  # module names relative to the model
    block_shapes: list[tuple[str, str]]  # (what, shape) inside one block, in forward's order
    notes: list[str] = field(default_factory=list)  # where this model departs from the paper's ViT

    def latex(self) -> str:
        """Every formula as one `gathered` block, a line per step (a long single line overflows
        the page's main column below ~1400 px)."""
        groups = [self.embed, self.block, self.attention[:2], self.attention[2:], self.mlp, self.head]
        lines = [r",\qquad ".join(s.latex for s in g) for g in groups if g]
        return r"\begin{gathered}" + r"\\ ".join(lines) + r"\end{gathered}"


def architecture(
    cfg: ViTConfig, grid: tuple[int, int] | None = None, image_hw: tuple[int, int] | None = None
) -> Architecture:
    """The Overview's diagram and formulas for a ViT of config `cfg`.

    Args:
        cfg: the model's config.
        grid: the patch grid (gh, gw) of the image being shown; default the config's.
        image_hw: the input's (H, W) in pixels; default the config's image size.
    """
    gh, gw = grid if grid is not None else cfg.grid_size
    H, W = image_hw if image_hw is not None else cfg.img_size
    C, P = cfg.in_chans, cfg.patch_size
    n = gh * gw
    N = n + cfg.num_prefix_tokens
    return Architecture(
        stages=_stages(cfg, gh, gw, H, W, n, N),
        embed=_embed_steps(cfg, n),
        block=_block_steps(cfg),
        attention=_attention_steps(cfg),
        mlp=_mlp_steps(cfg),
        head=_head_steps(cfg),
        block_shapes=_block_shapes(cfg, N),
        notes=_notes(cfg, C, P),
    )


# ---- the diagram -----------------------------------------------------------------------------


def _prefix_words(cfg: ViTConfig) -> list[str]:
    words = []
    if cfg.class_token:
        words.append("[CLS]")
    if cfg.distill_token:
        words.append("a distillation token")
    if cfg.reg_tokens:
        words.append(f"{cfg.reg_tokens} register token{'s' if cfg.reg_tokens != 1 else ''}")
    return words


def _stages(cfg: ViTConfig, gh: int, gw: int, H: int, W: int, n: int, N: int) -> list[StageText]:
    C, D, P, L, h = cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.depth, cfg.num_heads
    embed_detail = (
        "LayerNorm, Linear, LayerNorm<br>on every patch" if cfg.patch_norm else "the same Linear map<br>on every patch"
    )
    prefix = _prefix_words(cfg)
    title_parts = []
    if prefix:
        title_parts.append("+ CLS" if prefix == ["[CLS]"] else "+ tokens")
    if cfg.pos_embed_type != "none":
        title_parts.append("+ positions")
    tokens_title = "3. " + (", ".join(title_parts) if title_parts else "Tokens")
    lines = []
    if prefix:
        lines.append("prepend " + ", ".join(prefix))
    pos = POSITION_NAMES[cfg.pos_embed_type]
    if cfg.pos_embed_type == "none":
        lines.append("no position embedding")
    elif prefix and cfg.no_embed_class:
        lines.append(f"add {pos}<br>to the patches only")
    else:
        lines.append(f"add {pos}")
    tokens_detail = ",<br>".join(lines)
    attn_word = "attention (each token<br>to itself only)" if cfg.attention_axis == "batch" else "attention"
    act = ACTIVATION_NAMES[cfg.activation]
    encoder_detail = (
        f"{L} {NORM_NAMES[cfg.norm_placement]} block{'s' if L != 1 else ''}, each:<br>{h}-head {attn_word} + {act} MLP"
    )
    return [
        StageText("Input", f"{C} x {H} x {W}", "resized, cropped,<br>normalised"),
        StageText("1. Patches", f"{n} x {C * P * P}", f"{gh}x{gw} patches of {C}x{P}x{P},<br>each flattened"),
        StageText("2. Embed", f"{n} x {D}", embed_detail),
        StageText(tokens_title, f"{N} x {D}", tokens_detail),
        StageText("4. Encoder", f"{N} x {D}", encoder_detail),
        StageText("5. Head", _head_shape(cfg), _head_detail(cfg)),
    ]


def _head_shape(cfg: ViTConfig) -> str:
    return f"{cfg.num_classes} classes" if cfg.num_classes > 0 else f"{cfg.embed_dim} features"


def _pooled_words(cfg: ViTConfig) -> str:
    if cfg.global_pool == "avg":
        return "the patches' mean"
    if cfg.global_pool == "avg_all":
        return "all tokens' mean"
    return "[CLS] and the dist. token" if cfg.distill_token else "[CLS]"


def _head_detail(cfg: ViTConfig) -> str:
    final = cfg.final_norm and not cfg.use_fc_norm
    head = "Linear" if cfg.num_classes > 0 else "no classifier"
    first = f"LayerNorm + {head}" if final or cfg.use_fc_norm else f"{head} (no final norm)"
    return f"{first}<br>on {_pooled_words(cfg)}"


# ---- the formulas ----------------------------------------------------------------------------


def _embed_steps(cfg: ViTConfig, n: int) -> list[Step]:
    if cfg.patch_norm:
        patch = Step(
            r"e^i = \mathrm{LN}_b(\mathrm{LN}_a(x_p^i)\,E)",
            ("patch_embed.pixel_norm", "patch_embed.norm"),
            ("patch_embed.proj",),
        )
    else:
        patch = Step(r"e^i = x_p^i E", ("patch_embed.proj",))
    prefix = []
    if cfg.class_token:
        prefix.append(r"x_\text{class}")
    if cfg.distill_token:
        prefix.append(r"x_\text{dist}")
    if cfg.reg_tokens:
        prefix.append(r"r^1;\, \dots;\; r^{" + str(cfg.reg_tokens) + "}" if cfg.reg_tokens > 1 else "r^1")
    last = str(n)
    if cfg.pos_embed_type == "none":
        tokens = r"z_0 = [\," + r";\; ".join([*prefix, r"e^1", r"\dots", "e^{" + last + "}"]) + r"\,]"
        tokens += r"\quad(\text{no position embedding})"
    else:
        p = r"E_\text{pos}" if cfg.pos_embed_type == "learned" else r"\mathrm{PE}_\text{sin-cos}"
        if prefix and cfg.no_embed_class:
            tokens = (
                r"z_0 = [\,"
                + r";\; ".join([*prefix, f"e^1 + {p}^1", r"\dots", f"e^{{{last}}} + {p}^{{{last}}}"])
                + r"\,]"
            )
        else:
            tokens = r"z_0 = [\," + r";\; ".join([*prefix, r"e^1", r"\dots", "e^{" + last + "}"]) + r"\,] + " + p
    return [patch, Step(tokens)]


def _branch(cfg: ViTConfig, which: int, inner: str) -> tuple[str, tuple[str, ...]]:
    """The residual branch `f(inner)`, scaled by LayerScale's gamma when the model has it."""
    f, mod = (r"\mathrm{MSA}", "attn") if which == 1 else (r"\mathrm{MLP}", "mlp")
    text = f"{f}({inner})"
    if cfg.init_values is not None:
        return rf"\gamma_{which} \odot {text}", (mod, f"ls{which}")
    return text, (mod,)


def _block_steps(cfg: ViTConfig) -> list[Step]:
    z, zp = r"z_{\ell-1}", r"z'_\ell"
    if cfg.norm_placement == "pre":
        a, am = _branch(cfg, 1, rf"\mathrm{{LN}}_1({z})")
        m, mm = _branch(cfg, 2, rf"\mathrm{{LN}}_2({zp})")
        return [Step(rf"{zp} = {z} + {a}", ("norm1", *am)), Step(rf"z_\ell = {zp} + {m}", ("norm2", *mm))]
    if cfg.norm_placement == "post":
        a, am = _branch(cfg, 1, z)
        m, mm = _branch(cfg, 2, zp)
        return [
            Step(rf"{zp} = \mathrm{{LN}}_1({z} + {a})", (*am, "norm1")),
            Step(rf"z_\ell = \mathrm{{LN}}_2({zp} + {m})", (*mm, "norm2")),
        ]
    # "stream": the residual stream itself is normalised before each branch
    a, am = _branch(cfg, 1, r"u_\ell")
    m, mm = _branch(cfg, 2, r"v_\ell")
    return [
        Step(rf"u_\ell = \mathrm{{LN}}_1({z})", ("norm1",)),
        Step(rf"{zp} = u_\ell + {a}", am),
        Step(rf"v_\ell = \mathrm{{LN}}_2({zp})", ("norm2",)),
        Step(rf"z_\ell = v_\ell + {m}", mm),
    ]


def _attention_steps(cfg: ViTConfig) -> list[Step]:
    h, d = cfg.num_heads, cfg.head_dim
    bias = r" + b_{qkv}" if cfg.qkv_bias else ""
    qkv = Step(rf"[q_j;\, k_j;\, v_j]_{{j=1..{h}}} = x W_{{qkv}}{bias}", ("attn.qkv",))
    if cfg.attention_axis == "batch":  # one image: a softmax over one key is 1
        heads = Step(r"\mathrm{head}_j = v_j\ \ (\text{each token attends only to itself})")
    else:
        heads = Step(rf"\mathrm{{head}}_j = \mathrm{{softmax}}(q_j k_j^\top / \sqrt{{{d}}})\, v_j")
    out = Step(rf"\mathrm{{MSA}}(x) = [\mathrm{{head}}_1; \dots; \mathrm{{head}}_{{{h}}}]\, W_O + b_O", ("attn.proj",))
    return [qkv, heads, out]


def _mlp_steps(cfg: ViTConfig) -> list[Step]:
    act = ACTIVATION_LATEX[cfg.activation]
    return [Step(rf"\mathrm{{MLP}}(x) = {act}(x W_1 + b_1)\, W_2 + b_2", ("mlp.fc1", "mlp.act", "mlp.fc2"))]


def _head_steps(cfg: ViTConfig) -> list[Step]:
    final = cfg.final_norm and not cfg.use_fc_norm
    zL = r"\mathrm{LN}(z_L)" if final else "z_L"
    steps = []
    k = cfg.num_prefix_tokens
    pre = ("norm",) if final else ()
    fc = ("fc_norm",) if cfg.use_fc_norm else ()
    if cfg.global_pool == "avg":
        pooled = rf"\tfrac{{1}}{{n}}\textstyle\sum_{{i={k}}}^{{N-1}} [{zL}]^i"
    elif cfg.global_pool == "avg_all":
        pooled = rf"\tfrac{{1}}{{N}}\textstyle\sum_{{i=0}}^{{N-1}} [{zL}]^i"
    else:
        pooled = f"[{zL}]^0"
    c = rf"\mathrm{{LN}}_\text{{fc}}({pooled})" if cfg.use_fc_norm else pooled
    if cfg.num_classes == 0:
        steps.append(Step(rf"y = {c}\quad(\text{{features, no classifier}})", (*pre, *fc)))
    elif cfg.distill_token and cfg.global_pool == "token":
        c1 = rf"\mathrm{{LN}}_\text{{fc}}([{zL}]^1)" if cfg.use_fc_norm else f"[{zL}]^1"
        steps.append(
            Step(
                rf"y = \tfrac12(\mathrm{{Head}}({c}) + \mathrm{{Head}}_\text{{dist}}({c1}))",
                (*pre, *fc, "head", *fc, "head_dist"),
            )
        )
    else:
        steps.append(Step(rf"y = \mathrm{{Head}}({c})", (*pre, *fc, "head")))
    return steps


def _block_shapes(cfg: ViTConfig, N: int) -> list[tuple[str, str]]:
    D, h, d = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    hidden = int(D * cfg.mlp_ratio)
    inner = h * d
    attn = f"{h} x {N} x {N}" + (" (the identity)" if cfg.attention_axis == "batch" else "")
    return [
        ("block input", f"{N} x {D}"),
        ("q, k, v (all heads)", f"3 x {N} x {h}·{d} = 3 x {N} x {inner}"),
        ("attention maps", attn),
        ("heads concatenated", f"{N} x {inner}"),
        ("output projection W_O", f"{N} x {D}"),
        ("MLP hidden layer", f"{N} x {hidden}"),
        ("block output", f"{N} x {D}"),
    ]


def _notes(cfg: ViTConfig, C: int, P: int) -> list[str]:
    notes = []
    if cfg.norm_placement == "post":
        notes.append("post-norm blocks: the LayerNorm comes after each residual sum, x = LN(x + f(x))")
    elif cfg.norm_placement == "stream":
        notes.append("the residual stream itself is normalised before each branch: x = LN(x); x = x + f(x)")
    if cfg.activation != "gelu":
        notes.append(f"{ACTIVATION_NAMES[cfg.activation]} in the MLP instead of GELU")
    if cfg.dim_head is not None and cfg.inner_dim != cfg.embed_dim:
        notes.append(
            f"heads of width {cfg.head_dim}: the attention works in {cfg.num_heads}·{cfg.head_dim} = "
            f"{cfg.inner_dim} dimensions, not the token width {cfg.embed_dim}"
        )
    if not cfg.qkv_bias:
        notes.append("no bias on the query/key/value projection")
    if cfg.patch_norm:
        notes.append(
            f"a LayerNorm over each flattened patch ({C * P * P} values) before the projection, and one after it"
        )
    if cfg.pos_embed_type == "sincos":
        notes.append("fixed 2-D sine-cosine positions computed from the grid, not learned")
    elif cfg.pos_embed_type == "none":
        notes.append("no position embedding: the model cannot tell where a patch was")
    if not cfg.class_token:
        notes.append("no [CLS] token")
    if cfg.global_pool == "avg":
        notes.append("the answer is read from the mean of the patch tokens, not from [CLS]")
    elif cfg.global_pool == "avg_all":
        notes.append("the answer is read from the mean of all tokens, not from [CLS]")
    if not cfg.final_norm and not cfg.use_fc_norm:
        notes.append("no LayerNorm after the last block")
    if cfg.reg_tokens:
        notes.append(f"{cfg.reg_tokens} register token{'s' if cfg.reg_tokens != 1 else ''} next to [CLS]")
    if cfg.init_values is not None:
        notes.append("LayerScale: each residual branch is scaled by a learned per-channel γ")
    if cfg.attention_axis == "batch":
        notes.append("attention as its code computes it: with one image every token attends only to itself")
    return notes
