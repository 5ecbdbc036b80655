"""Bring your own ViT: the state dicts of the ViTs students write, read into this app's model.

Each family's key names and tensor shapes are turned into `VisionTransformer`'s (timm's) names
and a `ViTConfig`; the converted model computes what the student's code computes. The families:

- **vit-pytorch `ViT`** (lucidrains): `to_patch_embedding` (rearrange to "(p1 p2 c)",
  LayerNorm, Linear, LayerNorm; older versions: the Linear alone), `cls_token`,
  `pos_embedding`, `transformer.layers.{i}.0` attention (`norm`, fused `to_qkv` without bias,
  `to_out`; older versions wrap it as `fn` behind a `norm`), `transformer.layers.{i}.1`
  feed-forward, `transformer.norm` (newer) and `mlp_head` (a Linear; older: LayerNorm +
  Linear). Heads (`to_qkv` is h * dim_head wide) and pooling (`pool="cls"` or `"mean"`, the
  mean over all tokens, class token included) are not in the weights: asked.
- **vit-pytorch `SimpleViT`**: the same blocks, no class token, fixed 2-D sine-cosine
  positions computed from the grid (so the image size is not in the weights: asked), mean
  pooling, `linear_head`.
- **The "Transformers for Vision" walkthrough's mini-ViT**: a Conv2d `embedding.proj`,
  `pos_embeddings`, per-head `to_q`/`to_k`/`to_v` Linear layers, blocks that normalise the
  residual stream (`x = LN1(x); x = x + MHA(x); x = LN2(x); x = x + FFN(x)`), a final
  `layernorm` and `to_out`.
- **The `nn.MultiheadAttention` tutorial** (`patch_embedding.projection`,
  `encoder_layers.{i}.attention.in_proj_weight`, post-norm blocks, ReLU, no final norm,
  `mlp_head`). Its code hands (batch, tokens, dim) to an `nn.MultiheadAttention` that reads
  (tokens, batch, dim), so attention runs across the images of a batch at each token
  position. This app runs one image at a time and loads it as its code computes one image
  alone: each token attends only to itself (`attention_axis="batch"`). The "as intended"
  variant (`attention_axis="tokens"`) lets tokens attend to tokens, which is not what the
  weights were trained with.
- **`nn.TransformerEncoderLayer`-based ViTs** (`self_attn.in_proj_weight`, `linear1`,
  `linear2`, `norm1`, `norm2`; any patch Conv2d, class token, positions and head): whether
  `norm_first` was set, and the activation, are not in the weights: asked, with the heads.

Layouts with no place in these models (an MLP head with a hidden layer, two final norms,
Linear patch projections of unknown pixel order) raise a `CheckpointError` naming the keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from .config import CIFAR10_CLASSES
from .errors import CheckpointError

# family key -> the name the app shows
FAMILIES = {
    "vit-pytorch-vit": "vit-pytorch ViT",
    "vit-pytorch-simple": "vit-pytorch SimpleViT",
    "walkthrough": "the walkthrough's mini-ViT",
    "mha-tutorial": "the nn.MultiheadAttention tutorial ViT",
    "torch-encoder": "an nn.TransformerEncoderLayer ViT",
}
# For a help text: per family, how a student saves the weights and what loading them asks.
SAVE_HELP = (
    (
        "vit-pytorch-vit",
        'import torch\ntorch.save(v.state_dict(), "my_vit.pth")  # v = ViT(image_size=..., ...)',
        "the number of heads (`heads`; `dim_head` is read from the weights) and `pool` ('cls' or 'mean')",
    ),
    (
        "vit-pytorch-simple",
        'import torch\ntorch.save(v.state_dict(), "my_simple_vit.pth")  # v = SimpleViT(...)',
        "the number of heads and `image_size` (its sine-cosine positions are computed, not saved)",
    ),
    (
        "walkthrough",
        'import torch\ntorch.save(model.state_dict(), "my_mini_vit.pth")',
        "nothing: its per-head q/k/v layers tell the heads",
    ),
    (
        "mha-tutorial",
        'import torch\ntorch.save(model.state_dict(), "my_tutorial_vit.pth")',
        "the number of heads. Its attention runs across the batch as written; the app says so and offers the "
        "'as intended' view",
    ),
    (
        "torch-encoder",
        'import torch\ntorch.save(model.state_dict(), "my_encoder_vit.pth")',
        "the number of heads (`nhead`), `norm_first` and `activation` of its nn.TransformerEncoderLayer",
    ),
)
# What `load_checkpoint` takes beyond the weights, for the families (see `Question`).
ANSWER_ARGUMENTS = ("num_heads", "img_size", "global_pool", "norm_first", "activation", "attention_axis")
_POOLS = {"cls": "token", "token": "token", "mean": "avg_all", "avg_all": "avg_all", "avg": "avg"}
_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which all of these families use


@dataclass(frozen=True)
class Question:
    """One value the weights cannot tell: the keyword of `load_checkpoint` that gives it."""

    argument: str  # e.g. "num_heads"
    choices: tuple[Any, ...]  # the likeliest values first
    prompt: str  # one line, for a form
    labels: tuple[str, ...] = ()  # one per choice, for a menu; empty: the values themselves

    def label(self, value: Any) -> str:
        """The menu text of one of `choices`."""
        return self.labels[self.choices.index(value)] if value in self.choices and self.labels else str(value)


class AnswerNeededError(CheckpointError):
    """A checkpoint that loads once `questions` are answered (keywords of `load_checkpoint`).

    `argument` and `choices` are those of the first question.
    """

    def __init__(self, source: str, family: str, questions: list[Question]) -> None:
        self.family = family
        self.questions = tuple(questions)
        self.argument = questions[0].argument
        self.choices = questions[0].choices
        asks = "; ".join(
            f"{q.prompt} (pass {q.argument}=..., likeliest {', '.join(map(repr, q.choices[:4]))})" for q in questions
        )
        super().__init__(f"{source} is {FAMILIES.get(family, family)}, whose weights do not tell: {asks}.")


def detect_family(tensors: dict[str, Tensor]) -> str | None:
    """The family key of a state dict (keys already unwrapped), or None if none matches."""
    keys = list(tensors)
    if any(k.startswith("to_patch_embedding.") for k in keys) and any(
        k.startswith("transformer.layers.") for k in keys
    ):
        return "vit-pytorch-vit" if "pos_embedding" in tensors else "vit-pytorch-simple"
    if any(re.search(r"(^|\.)to_q\.weight$", k) for k in keys):
        return "walkthrough"
    if any(re.search(r"(^|\.)encoder_layers\.\d+\.attention\.in_proj_weight$", k) for k in keys):
        return "mha-tutorial"
    if any(k.endswith("in_proj_weight") for k in keys):
        return "torch-encoder"
    return None


def convert_family(
    tensors: dict[str, Tensor], family: str, answers: dict[str, Any], source: str = "checkpoint"
) -> tuple[dict[str, Tensor], dict[str, Any], list[str] | None]:
    """A family's state dict -> (our state dict, `ViTConfig` fields, class names or None).

    Args:
        tensors: the unwrapped state dict.
        family: from `detect_family`.
        answers: keyword answers (`ANSWER_ARGUMENTS`); None or absent for unanswered.

    Raises:
        AnswerNeededError: a value the weights cannot tell and `answers` does not give.
        CheckpointError: keys or shapes that do not form a model of the family.
    """
    answers = {k: v for k, v in answers.items() if v is not None}
    unknown = set(answers) - set(ANSWER_ARGUMENTS)
    if unknown:
        raise CheckpointError(f"unknown answers {sorted(unknown)}; load_checkpoint takes {ANSWER_ARGUMENTS}.")
    tensors = {k: v for k, v in tensors.items() if not _is_buffer_key(k)}  # index buffers, not weights
    if family.startswith("vit-pytorch"):
        parts = _parse_vit_pytorch(tensors, family, source)
    elif family in FAMILIES:
        parts = _parse_generic(tensors, family, source)
    else:
        raise CheckpointError(f"{source}: unknown family {family!r}.")
    return _assemble(parts, family, answers, source)


# ----------------------------------------------------------------------------------------------
# What a state dict holds, in our terms


@dataclass
class _Parts:
    """A parsed model before the questions: tensors in our names, sizes read off the shapes."""

    sd: dict[str, Tensor]  # our names, except blocks' q/k/v (fused below) when heads are unknown
    D: int
    C: int
    P: int
    depth: int
    inner: int  # width of q (= h * d)
    hidden: int  # MLP hidden width
    heads: int | None  # known from per-head modules, else None
    pos_len: int | None  # rows of the learned positions, None for fixed ones
    class_token: bool
    final_norm: bool
    head_norm: bool
    qkv_bias: bool


def _natural(key: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))


def _is_buffer_key(key: str) -> bool:
    return key.endswith(("num_batches_tracked", "position_ids"))


def _few(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _linear(tensors: dict[str, Tensor], prefix: str, out_dim: int, in_dim: int, source: str) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a Linear at `prefix` with the expected shape; a missing bias is zero,
    which computes exactly what a Linear without bias computes."""
    w = tensors[prefix + "weight"]
    if tuple(w.shape) != (out_dim, in_dim):
        raise CheckpointError(f"{source}: {prefix}weight has shape {tuple(w.shape)}, expected {(out_dim, in_dim)}.")
    b = tensors.get(prefix + "bias")
    if b is not None and tuple(b.shape) != (out_dim,):
        raise CheckpointError(f"{source}: {prefix}bias has shape {tuple(b.shape)}, expected {(out_dim,)}.")
    return w, (b if b is not None else torch.zeros(out_dim, dtype=w.dtype))


def _layer_norm(tensors: dict[str, Tensor], prefix: str, dim: int, source: str) -> tuple[Tensor, Tensor]:
    w = tensors[prefix + "weight"]
    if tuple(w.shape) != (dim,):
        raise CheckpointError(f"{source}: {prefix}weight has shape {tuple(w.shape)}, expected a LayerNorm of {dim}.")
    b = tensors.get(prefix + "bias")
    return w, (b if b is not None else torch.zeros(dim, dtype=w.dtype))


def _put(sd: dict[str, Tensor], name: str, wb: tuple[Tensor, Tensor]) -> None:
    sd[name + ".weight"], sd[name + ".bias"] = wb


def _modules(keys: list[str]) -> list[str]:
    """Module prefixes ("a.b.") of weight keys, in natural order."""
    return sorted({k[: -len("weight")] for k in keys if k.endswith("weight")}, key=_natural)


# ---- vit-pytorch ----


def _parse_vit_pytorch(tensors: dict[str, Tensor], family: str, source: str) -> _Parts:
    used: set[str] = set()

    def take(prefix: str) -> None:
        used.update(k for k in (prefix + "weight", prefix + "bias") if k in tensors)

    # patch embedding: [LayerNorm(C*P*P)], Linear(C*P*P -> D), [LayerNorm(D)]
    mods = _modules([k for k in tensors if k.startswith("to_patch_embedding.")])
    linears = [m for m in mods if tensors[m + "weight"].dim() == 2]
    if len(linears) != 1:
        raise CheckpointError(f"{source}: to_patch_embedding should hold one Linear, found {len(linears)}.")
    lin = linears[0]
    D, pd = tensors[lin + "weight"].shape
    D, pd = int(D), int(pd)
    C, P = _channels_and_patch(pd, source)
    norms_before = [m for m in mods if _natural(m) < _natural(lin)]
    norms_after = [m for m in mods if _natural(m) > _natural(lin)]
    if (len(norms_before), len(norms_after)) not in ((0, 0), (1, 1)):
        raise CheckpointError(
            f"{source}: to_patch_embedding has {len(norms_before)} norm(s) before its Linear and "
            f"{len(norms_after)} after; vit_core reads none, or one on each side."
        )
    sd: dict[str, Tensor] = {}
    w, b = _linear(tensors, lin, D, pd, source)
    # Linear over a patch flattened "(p1 p2 c)" == Conv2d whose weight is laid out (c p1 p2)
    sd["patch_embed.proj.weight"] = rearrange(w, "d (p1 p2 c) -> d c p1 p2", p1=P, p2=P, c=C)
    sd["patch_embed.proj.bias"] = b
    take(lin)
    patch_norm = bool(norms_before)
    if patch_norm:
        pw, pb = _layer_norm(tensors, norms_before[0], pd, source)
        sd["patch_embed.pixel_norm.weight"] = rearrange(pw, "(p1 p2 c) -> (c p1 p2)", p1=P, p2=P, c=C)
        sd["patch_embed.pixel_norm.bias"] = rearrange(pb, "(p1 p2 c) -> (c p1 p2)", p1=P, p2=P, c=C)
        _put(sd, "patch_embed.norm", _layer_norm(tensors, norms_after[0], D, source))
        take(norms_before[0])
        take(norms_after[0])

    depth = _count_blocks(tensors, "transformer.layers.", source)
    inner = hidden = 0
    qkv_bias = False
    for i in range(depth):
        att, ff = f"transformer.layers.{i}.0.", f"transformer.layers.{i}.1."
        att_mods = _modules([k for k in tensors if k.startswith(att)])
        ff_mods = _modules([k for k in tensors if k.startswith(ff)])
        qkv = next((m for m in att_mods if m.endswith("to_qkv.")), None)
        if qkv is None:
            raise CheckpointError(f"{source}: layer {i} has no fused {att}to_qkv.weight.")
        w = tensors[qkv + "weight"]
        inner = int(w.shape[0]) // 3
        if w.dim() != 2 or w.shape[0] != 3 * inner or w.shape[1] != D:
            raise CheckpointError(f"{source}: {qkv}weight has shape {tuple(w.shape)}, expected (3 * h * d, {D}).")
        sd[f"blocks.{i}.attn.qkv.weight"] = w
        if qkv + "bias" in tensors:
            sd[f"blocks.{i}.attn.qkv.bias"] = tensors[qkv + "bias"]
            qkv_bias = True
        take(qkv)
        out = next((m for m in att_mods if re.search(r"to_out\.(0\.)?$", m)), None)
        if out is not None:
            _put(sd, f"blocks.{i}.attn.proj", _linear(tensors, out, D, inner, source))
            take(out)
        elif inner == D:  # project_out=False (one head as wide as D): to_out is the identity
            _put(sd, f"blocks.{i}.attn.proj", (torch.eye(D, dtype=w.dtype), torch.zeros(D, dtype=w.dtype)))
        else:
            raise CheckpointError(f"{source}: layer {i} has no {att}to_out and its heads are {inner} wide, not {D}.")
        n1 = [m for m in att_mods if m not in (qkv, out) and tensors[m + "weight"].dim() == 1]
        n2 = [m for m in ff_mods if tensors[m + "weight"].dim() == 1]
        fcs = [m for m in ff_mods if tensors[m + "weight"].dim() == 2]
        if len(n1) != 1 or len(n2) != 1 or len(fcs) != 2:
            raise CheckpointError(
                f"{source}: layer {i} should hold one norm before attention, one before the feed-forward and "
                f"two feed-forward Linears; found {len(n1)}, {len(n2)} and {len(fcs)}."
            )
        hidden = int(tensors[fcs[0] + "weight"].shape[0])
        _put(sd, f"blocks.{i}.norm1", _layer_norm(tensors, n1[0], D, source))
        _put(sd, f"blocks.{i}.norm2", _layer_norm(tensors, n2[0], D, source))
        _put(sd, f"blocks.{i}.mlp.fc1", _linear(tensors, fcs[0], hidden, D, source))
        _put(sd, f"blocks.{i}.mlp.fc2", _linear(tensors, fcs[1], D, hidden, source))
        for m in (n1[0], n2[0], *fcs):
            take(m)

    final_norm = "transformer.norm.weight" in tensors
    if final_norm:
        _put(sd, "norm", _layer_norm(tensors, "transformer.norm.", D, source))
        take("transformer.norm.")
    head_name = "mlp_head" if family == "vit-pytorch-vit" else "linear_head"
    head_norm = _read_head(tensors, [head_name + "."], D, sd, used, source)
    class_token = "cls_token" in tensors
    if class_token:
        sd["cls_token"] = _token(tensors["cls_token"], D, "cls_token", source)
        used.add("cls_token")
    pos_len = None
    if "pos_embedding" in tensors:
        sd["pos_embed"] = _positions(tensors["pos_embedding"], D, "pos_embedding", source)
        pos_len = int(sd["pos_embed"].shape[1])
        used.add("pos_embedding")
    _no_leftovers(tensors, used, source)
    return _Parts(sd, D, C, P, depth, inner, hidden, None, pos_len, class_token, final_norm, head_norm, qkv_bias)


def _channels_and_patch(patch_dim: int, source: str) -> tuple[int, int]:
    """(C, P) with C * P * P = patch_dim, for RGB or grey images (no other split exists:
    3 P1^2 = P2^2 has no integer solution)."""
    for C in (3, 1):
        P = math.isqrt(patch_dim // C)
        if patch_dim % C == 0 and P * P * C == patch_dim:
            return C, P
    raise CheckpointError(
        f"{source}: a flattened patch of {patch_dim} values is neither an RGB nor a grey square patch."
    )


def _count_blocks(tensors: dict[str, Tensor], container: str, source: str) -> int:
    ids = sorted({int(m.group(1)) for k in tensors if (m := re.match(re.escape(container) + r"(\d+)\.", k))})
    if not ids:
        raise CheckpointError(f"{source}: no transformer blocks under {container}.")
    if ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))
        raise CheckpointError(f"{source}: blocks {missing} of {container} are missing.")
    return len(ids)


def _read_head(
    tensors: dict[str, Tensor], prefixes: list[str], D: int, sd: dict[str, Tensor], used: set[str], source: str
) -> bool:
    """Put the classifier (and a LayerNorm before it) in `sd`; True if the head has that norm."""
    mods = _modules([k for k in tensors if k.startswith(tuple(prefixes))])
    linears = [m for m in mods if tensors[m + "weight"].dim() == 2]
    norms = [m for m in mods if tensors[m + "weight"].dim() == 1]
    if len(linears) > 1:
        raise CheckpointError(
            f"{source}: the head has {len(linears)} Linear layers ({_few(linears)}); vit_core reads a head of one "
            "Linear, with or without a LayerNorm before it."
        )
    if len(norms) > 1 or (norms and linears and _natural(norms[0]) > _natural(linears[0])):
        raise CheckpointError(f"{source}: the head's norms {_few(norms)} are not one LayerNorm before its Linear.")
    if linears:
        classes = int(tensors[linears[0] + "weight"].shape[0])
        _put(sd, "head", _linear(tensors, linears[0], classes, D, source))
    for m in mods:
        used.update(k for k in (m + "weight", m + "bias") if k in tensors)
    if norms:
        _put(sd, "fc_norm", _layer_norm(tensors, norms[0], D, source))
    return bool(norms)


def _token(t: Tensor, D: int, key: str, source: str) -> Tensor:
    if t.numel() != D:
        raise CheckpointError(f"{source}: {key} has shape {tuple(t.shape)}, expected one token of width {D}.")
    return t.reshape(1, 1, D)


def _positions(t: Tensor, D: int, key: str, source: str) -> Tensor:
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] != 1 or t.shape[2] != D:
        raise CheckpointError(f"{source}: {key} has shape {tuple(t.shape)}, expected (1, tokens, {D}).")
    return t


def _no_leftovers(tensors: dict[str, Tensor], used: set[str], source: str) -> None:
    left = sorted(set(tensors) - used, key=_natural)
    if left:
        raise CheckpointError(f"{source}: keys with no place in this model: {_few(left)}.")


# ---- the tutorials and nn.TransformerEncoderLayer: one reader by roles ----

_QKV_KEY = re.compile(r"^(?P<mod>.*?)(?:(?P<head>\d+)\.)?to_(?P<part>[qkv])\.(?P<kind>weight|bias)$")
_POS_NAME = re.compile(r"pos(ition)?(al)?_?emb(ed|edding|eddings)?")
_CLS_NAME = re.compile(r"(cls|class)_?(token|embedding)?")


def _parse_generic(tensors: dict[str, Tensor], family: str, source: str) -> _Parts:
    marker = next(k for k in sorted(tensors, key=_natural) if k.endswith(("in_proj_weight", "to_q.weight")))
    m = re.match(r"^((?:[A-Za-z_]\w*\.)+?)(\d+)\.", marker)
    if m is None:
        raise CheckpointError(f"{source}: {marker} is not inside a numbered list of blocks.")
    container = m.group(1)
    depth = _count_blocks(tensors, container, source)
    top = {k: v for k, v in tensors.items() if not re.match(re.escape(container) + r"\d+\.", k)}
    used: set[str] = set()
    sd: dict[str, Tensor] = {}

    # patch projection: the one 4-D weight
    convs = [k for k, v in top.items() if k.endswith("weight") and v.dim() == 4]
    if len(convs) != 1:
        raise CheckpointError(
            f"{source}: expected one Conv2d patch projection (a 4-D weight), found {len(convs)}"
            + (f" ({_few(convs)})" if convs else "")
            + ". A Linear patch projection is read only for vit-pytorch models, whose pixel order is known."
        )
    pw = top[convs[0]]
    D, C, ph, pwid = (int(s) for s in pw.shape)
    if ph != pwid:
        raise CheckpointError(f"{source}: non-square patches ({ph}x{pwid}) are not supported.")
    P = ph
    conv = convs[0][: -len("weight")]
    sd["patch_embed.proj.weight"] = pw
    sd["patch_embed.proj.bias"] = top.get(conv + "bias", torch.zeros(D, dtype=pw.dtype))
    used.update(k for k in (conv + "weight", conv + "bias") if k in top)

    inner = hidden = 0
    heads: int | None = None
    qkv_bias = False
    for i in range(depth):
        prefix = f"{container}{i}."
        block = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        h, inner, qkv_bias_i, att_keys = _read_attention(block, i, D, sd, source + f" ({prefix[:-1]})")
        heads, qkv_bias = h, qkv_bias or qkv_bias_i
        rest = {k: v for k, v in block.items() if k not in att_keys}
        mods = _modules(list(rest))
        norms = [m for m in mods if rest[m + "weight"].dim() == 1]
        fcs = [m for m in mods if rest[m + "weight"].dim() == 2]
        if len(norms) != 2 or len(fcs) != 2:
            raise CheckpointError(
                f"{source}: block {prefix[:-1]} should hold two LayerNorms and two feed-forward Linears besides its "
                f"attention; found norms {_few(norms) or 'none'} and Linears {_few(fcs) or 'none'}."
            )
        hidden = int(rest[fcs[0] + "weight"].shape[0])
        _put(sd, f"blocks.{i}.norm1", _layer_norm(rest, norms[0], D, source))
        _put(sd, f"blocks.{i}.norm2", _layer_norm(rest, norms[1], D, source))
        _put(sd, f"blocks.{i}.mlp.fc1", _linear(rest, fcs[0], hidden, D, source))
        _put(sd, f"blocks.{i}.mlp.fc2", _linear(rest, fcs[1], D, hidden, source))
        known = {m + s for m in (*norms, *fcs) for s in ("weight", "bias")}
        left = sorted(set(rest) - known, key=_natural)
        if left:
            raise CheckpointError(f"{source}: keys with no place in this model: {_few([prefix + k for k in left])}.")
        used.update(prefix + k for k in block)

    cls_keys = [k for k in top if _CLS_NAME.fullmatch(k.rsplit(".", 1)[-1])]
    pos_keys = [k for k in top if _POS_NAME.fullmatch(k.rsplit(".", 1)[-1])]
    if len(cls_keys) > 1 or len(pos_keys) != 1:
        raise CheckpointError(
            f"{source}: expected one learned position embedding and at most one class token; found positions "
            f"{_few(pos_keys) or 'none'} and class tokens {_few(cls_keys) or 'none'}."
        )
    class_token = bool(cls_keys)
    if class_token:
        sd["cls_token"] = _token(top[cls_keys[0]], D, cls_keys[0], source)
    sd["pos_embed"] = _positions(top[pos_keys[0]], D, pos_keys[0], source)
    used.update(cls_keys + pos_keys)

    # head: the one Linear left at the top, with a LayerNorm of its own module before it; a
    # LayerNorm elsewhere is the final norm over all tokens
    rest = {k: v for k, v in top.items() if k not in used}
    mods = _modules(list(rest))
    linears = [m for m in mods if rest[m + "weight"].dim() == 2]
    if len(linears) > 1:
        raise CheckpointError(
            f"{source}: the head has {len(linears)} Linear layers ({_few(linears)}); vit_core reads a head of one "
            "Linear, with or without a LayerNorm before it."
        )
    parent = linears[0].rsplit(".", 2)[0] + "." if linears and linears[0].count(".") >= 2 else None
    head_mods = [m for m in mods if m in linears or (parent is not None and m.startswith(parent))]
    final = [m for m in mods if m not in head_mods]
    if len(final) > 1 or any(rest[m + "weight"].dim() != 1 for m in final):
        raise CheckpointError(f"{source}: keys with no place in this model: {_few(final)}.")
    final_norm = bool(final)
    if final_norm:
        _put(sd, "norm", _layer_norm(rest, final[0], D, source))
        used.update(k for k in (final[0] + "weight", final[0] + "bias") if k in rest)
    head_norm = _read_head(rest, head_mods, D, sd, used, source) if head_mods else False
    _no_leftovers(tensors, used, source)
    pos_len = int(sd["pos_embed"].shape[1])
    return _Parts(sd, D, C, P, depth, inner, hidden, heads, pos_len, class_token, final_norm, head_norm, qkv_bias)


def _read_attention(
    block: dict[str, Tensor], i: int, D: int, sd: dict[str, Tensor], source: str
) -> tuple[int | None, int, bool, set[str]]:
    """A block's attention into `sd` (fused qkv, proj): (heads if known, inner width, qkv bias,
    the block keys it used)."""
    fused = [k for k in block if k.endswith("in_proj_weight")]
    if fused:
        mod = fused[0][: -len("in_proj_weight")]
        w = block[fused[0]]
        if w.dim() != 2 or w.shape[0] != 3 * w.shape[1] or w.shape[1] != D:
            raise CheckpointError(f"{source}: {fused[0]} has shape {tuple(w.shape)}, expected {(3 * D, D)}.")
        sd[f"blocks.{i}.attn.qkv.weight"] = w
        keys = {fused[0]}
        has_bias = mod + "in_proj_bias" in block
        if has_bias:
            sd[f"blocks.{i}.attn.qkv.bias"] = block[mod + "in_proj_bias"]
            keys.add(mod + "in_proj_bias")
        if mod + "out_proj.weight" not in block:
            raise CheckpointError(f"{source}: missing {mod}out_proj.weight beside {fused[0]}.")
        _put(sd, f"blocks.{i}.attn.proj", _linear(block, mod + "out_proj.", D, D, source))
        keys.update(k for k in (mod + "out_proj.weight", mod + "out_proj.bias") if k in block)
        return None, D, has_bias, keys
    parts: dict[tuple[int, str], dict[str, Tensor]] = {}
    mods = set()
    keys = set()
    for k, v in block.items():
        if m := _QKV_KEY.match(k):
            head = int(m.group("head")) if m.group("head") is not None else -1
            parts.setdefault((head, m.group("part")), {})[m.group("kind")] = v
            mods.add(m.group("mod"))
            keys.add(k)
    if not parts:
        raise CheckpointError(f"{source}: no attention (in_proj_weight or to_q/to_k/to_v) in this block.")
    head_ids = sorted({h for h, _ in parts})
    per_head = head_ids != [-1]
    if per_head and (-1 in head_ids or head_ids != list(range(len(head_ids)))):
        raise CheckpointError(f"{source}: attention heads {head_ids} are not numbered 0, 1, 2, ...")
    lost = [
        f"{'head ' + str(h) + ' ' if per_head else ''}to_{p}" for h in head_ids for p in "qkv" if (h, p) not in parts
    ]
    if lost:
        raise CheckpointError(f"{source}: missing attention weights: {_few(lost)}.")
    has_bias = any("bias" in v for v in parts.values())
    rows = {p: [] for p in "qkv"}
    biases = {p: [] for p in "qkv"}
    for h in head_ids:
        for p in "qkv":
            w = parts[(h, p)].get("weight")
            if w is None or w.dim() != 2 or w.shape[1] != D:
                raise CheckpointError(f"{source}: head {h} to_{p}.weight is missing or not (width, {D}).")
            rows[p].append(w)
            biases[p].append(parts[(h, p)].get("bias", torch.zeros(w.shape[0], dtype=w.dtype)))
    widths = {w.shape[0] for p in "qkv" for w in rows[p]}
    if len(widths) != 1:
        raise CheckpointError(f"{source}: the heads' q/k/v widths differ ({sorted(widths)}).")
    sd[f"blocks.{i}.attn.qkv.weight"] = torch.cat([torch.cat(rows[p]) for p in "qkv"])
    if has_bias:
        sd[f"blocks.{i}.attn.qkv.bias"] = torch.cat([torch.cat(biases[p]) for p in "qkv"])
    inner = int(sum(w.shape[0] for w in rows["q"]))
    # the output projection: the one other Linear of the attention module, if any
    mod = min(mods, key=len)
    if per_head:  # "mha.heads." -> "mha."
        mod = mod.rsplit(".", 2)[0] + "." if mod.count(".") >= 2 else ""
    outs = _modules([k for k in block if k.startswith(mod) and k not in keys and block[k].dim() == 2]) if mod else []
    if len(outs) > 1:
        raise CheckpointError(f"{source}: the attention module {mod[:-1]} has several output Linears: {_few(outs)}.")
    if outs:
        _put(sd, f"blocks.{i}.attn.proj", _linear(block, outs[0], D, inner, source))
        keys.update(k for k in (outs[0] + "weight", outs[0] + "bias") if k in block)
    elif inner == D:  # heads concatenated straight back into the stream
        w = sd[f"blocks.{i}.attn.qkv.weight"]
        _put(sd, f"blocks.{i}.attn.proj", (torch.eye(D, dtype=w.dtype), torch.zeros(D, dtype=w.dtype)))
    else:
        raise CheckpointError(f"{source}: no output projection from the heads' {inner} values back to {D}.")
    return (len(head_ids) if per_head else None), inner, has_bias, keys


# ----------------------------------------------------------------------------------------------
# Questions and the config


def head_choices(inner: int) -> tuple[int, ...]:
    """Head counts h that divide the inner width, likeliest first: heads 64 wide (vit-pytorch's
    default dim_head, timm's), then 32 wide, then the other divisors with heads at least 8 wide."""
    divisors = [h for h in range(1, inner + 1) if inner % h == 0 and inner // h >= 8]
    first = [inner // w for w in (64, 32) if inner % w == 0]
    return tuple(dict.fromkeys(first + divisors))


def image_size_choices(P: int, C: int) -> tuple[int, ...]:
    """Square image sides that are multiples of P, likeliest first (MNIST's 28 for grey images,
    CIFAR's 32, ImageNet's 224, ...)."""
    common = (28, 32, 224, 64, 96, 128, 256, 384) if C == 1 else (32, 224, 64, 96, 128, 256, 384, 28)
    sides = [s for s in common if s % P == 0]
    return tuple(sides) or (P * 8, P * 14, P * 16)


def _assemble(
    parts: _Parts, family: str, answers: dict[str, Any], source: str
) -> tuple[dict[str, Tensor], dict[str, Any], list[str] | None]:
    questions: list[Question] = []
    heads = answers.get("num_heads")
    if parts.heads is not None:
        if heads is not None and heads != parts.heads:
            raise CheckpointError(f"{source} has {parts.heads} attention heads per layer, not {heads}.")
        heads = parts.heads
    elif heads is None:
        choices = head_choices(parts.inner)
        prompt = f"how many attention heads share the {parts.inner}-wide fused q/k/v projection"
        labels = tuple(f"{h} heads of {parts.inner // h}" if h > 1 else f"1 head of {parts.inner}" for h in choices)
        questions.append(Question("num_heads", choices, prompt, labels))
    if heads is not None and (not isinstance(heads, int) or heads < 1 or parts.inner % heads):
        raise CheckpointError(f"{source}: num_heads={heads!r} does not divide the heads' width {parts.inner}.")

    img = answers.get("img_size")
    if parts.pos_len is None and img is None:
        prompt = "the image size it was built for (its positions are computed from it, not stored)"
        sides = image_size_choices(parts.P, parts.C)
        questions.append(Question("img_size", sides, prompt, tuple(f"{s} x {s} pixels" for s in sides)))

    pool = answers.get("global_pool")
    if pool is not None and pool not in _POOLS:
        raise CheckpointError(f"{source}: global_pool={pool!r}; use 'cls' or 'mean'.")
    if family == "vit-pytorch-vit" and pool is None:
        labels = ("pool='cls': the class token (the default)", "pool='mean': the mean of all tokens")
        questions.append(Question("global_pool", ("cls", "mean"), "its pool setting: 'cls' or 'mean'", labels))
    norm_first = answers.get("norm_first")
    activation = answers.get("activation")
    if family == "torch-encoder":
        if norm_first is None:
            labels = ("norm_first=False: post-norm (PyTorch's default)", "norm_first=True: pre-norm")
            questions.append(Question("norm_first", (False, True), "whether its layers set norm_first=True", labels))
        if activation is None:
            labels = ("activation='relu' (PyTorch's default)", "activation='gelu'")
            questions.append(Question("activation", ("relu", "gelu"), "its layers' activation", labels))
    if activation is not None and activation not in ("relu", "gelu"):
        raise CheckpointError(f"{source}: activation={activation!r}; use 'relu' or 'gelu'.")
    axis = answers.get("attention_axis")
    if axis is not None and axis not in ("tokens", "batch"):
        raise CheckpointError(f"{source}: attention_axis={axis!r}; use 'batch' (as written) or 'tokens'.")
    if questions:
        raise AnswerNeededError(source, family, questions)

    k = int(parts.class_token)
    if parts.pos_len is None:
        H, W = _image_size(img, parts.P, source)
        no_embed_class = False
    else:
        (gh, gw), no_embed_class = _grid(parts.pos_len, k, parts.P, img, source)
        H, W = gh * parts.P, gw * parts.P
    if family == "vit-pytorch-vit":
        global_pool = _POOLS[pool]
    elif pool is not None:
        global_pool = _POOLS[pool]
    else:
        global_pool = "token" if parts.class_token else "avg"
    if global_pool == "token" and not parts.class_token:
        raise CheckpointError(f"{source} has no class token to pool: use global_pool='mean'.")
    if parts.final_norm and parts.head_norm:
        raise CheckpointError(f"{source} has both a final norm and a norm in its head; vit_core reads one of them.")
    placement = {"walkthrough": "stream", "mha-tutorial": "post"}.get(family, "pre")
    if family == "torch-encoder":
        placement = "pre" if norm_first else "post"
    default_act = "relu" if family == "mha-tutorial" else "gelu"
    config = dict(
        img_size=(H, W),
        patch_size=parts.P,
        in_chans=parts.C,
        num_classes=int(parts.sd["head.weight"].shape[0]) if "head.weight" in parts.sd else 0,
        embed_dim=parts.D,
        depth=parts.depth,
        num_heads=heads,
        dim_head=None if parts.inner == parts.D else parts.inner // heads,
        mlp_ratio=parts.hidden / parts.D,
        qkv_bias=parts.qkv_bias,
        class_token=parts.class_token,
        no_embed_class=no_embed_class,
        global_pool=global_pool,
        fc_norm=parts.head_norm,
        final_norm=parts.final_norm,
        layer_norm_eps=_LAYER_NORM_EPS,
        norm_placement=placement,
        activation=activation or default_act,
        patch_norm="patch_embed.pixel_norm.weight" in parts.sd,
        pos_embed_type="sincos" if parts.pos_len is None else "learned",
        attention_axis=axis or ("batch" if family == "mha-tutorial" else "tokens"),
        # The weights do not record the preprocessing either: the tutorials' usual Resize((H, W)),
        # ToTensor(), Normalize(0.5, 0.5) (a choice to offer in the app's preprocessing settings).
        mean=(0.5,) * parts.C,
        std=(0.5,) * parts.C,
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="squash",
    )
    class_names = None
    if config["num_classes"] == 10 and (H, W) == (32, 32) and parts.C == 3:
        class_names = list(CIFAR10_CLASSES)  # a guess from the shapes, the tutorials' usual dataset
    elif config["num_classes"] == 10 and (H, W) == (28, 28) and parts.C == 1:
        class_names = [str(d) for d in range(10)]  # MNIST digits
    return parts.sd, config, class_names


def _image_size(img: Any, P: int, source: str) -> tuple[int, int]:
    try:
        H, W = (int(img), int(img)) if isinstance(img, (int, float, str)) else (int(img[0]), int(img[1]))
    except (TypeError, ValueError, IndexError):
        raise CheckpointError(f"{source}: img_size={img!r} is neither a number nor a pair.") from None
    if H < P or W < P or H % P or W % P:
        raise CheckpointError(f"{source}: image size {H}x{W} is not a positive multiple of the patch size {P}.")
    return H, W


def _grid(L: int, k: int, P: int, img: Any, source: str) -> tuple[tuple[int, int], bool]:
    """Patch grid and `no_embed_class` from L position rows and k prefix tokens."""
    if img is not None:
        H, W = _image_size(img, P, source)
        n = (H // P) * (W // P)
        if L in (n + k, n):
            return (H // P, W // P), L == n and k > 0
        raise CheckpointError(
            f"{source}: image size {H}x{W} gives {n} patches of {P} pixels, but there are {L} positions."
        )
    for n, no_embed in ((L - k, False), (L, True)):
        side = math.isqrt(n) if n > 0 else 0
        if side * side == n and side > 0:
            return (side, side), no_embed and k > 0
    raise CheckpointError(
        f"{source}: {L} positions do not form a square patch grid; pass img_size=(H, W) to load_checkpoint."
    )
