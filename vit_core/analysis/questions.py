"""The answers to a lesson's predict-then-reveal questions, computed from the model and image in use.

Nothing here is canned: every answer comes from the model the learner picked, on the image in
use, through the same analyses the pages show (the attention maps of the trace, rollout, the
class-specific map, the occlusion and shuffle what-ifs, mean attention distance). A question
that the model cannot answer (no [CLS] token, no classifier head, no class names, no position
embeddings, a layer it does not have) raises `LessonSkip` with a plain reason, so that the page
skips the step instead of failing.

The page's loop, for a step with a question:

    check_needs(model, step.needs - {"training"})          # LessonSkip: say why, skip the step
    truth = answer(step.question, model, x, trace)        # before the reveal, not shown yet
    response = respond(step_number, step.question, guess, truth)  # after the learner's guess
    ...
    rows = summary(responses, skipped)                    # at the lesson's end

Guesses are in the units the learner sees: a patch number (click_patch), a probability in
percent (guess_probability), True for "yes, it changes" (yes_no_shuffle), a layer counted from
1 (pick_layer), a number (number).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..lessons import (
    FILLS,
    NEEDS,
    QUESTION_KINDS,
    SHUFFLE_POSITIONS,
    HideSpec,
    LessonSkip,
    Question,
    Step,
    StepState,
    step_needs,
)
from .attention import class_attention_map, fuse_heads, mean_attention_distance, rollout_cls_map
from .faithfulness import saliency_order
from .whatif import occlude_patches, shuffle_patches

if TYPE_CHECKING:
    from ..model import VisionTransformer, ViTTrace

__all__ = [
    "Answer",
    "HidingEffect",
    "LessonSkip",
    "ResolvedState",
    "Response",
    "ShuffleEffect",
    "SummaryRow",
    "answer",
    "check_needs",
    "cls_attention_argmax",
    "format_value",
    "furthest_layer",
    "model_lacks",
    "number_answer",
    "patch_distance",
    "patches_to_hide",
    "probability_after_hiding",
    "resolve_class",
    "resolve_layer",
    "resolve_patch",
    "resolve_state",
    "respond",
    "rollout_argmax",
    "score",
    "shuffle_effect",
    "summary",
    "total_points",
]


# ---------------------------------------------------------------- what the model has


def _has_class_names(model: VisionTransformer) -> bool:
    names = list(model.class_names)
    return bool(names) and names != [f"class {i}" for i in range(len(names))]


def model_lacks(model: VisionTransformer, needs: Sequence[str] | set[str] | frozenset[str]) -> dict[str, str]:
    """The needs (keys of `vit_core.lessons.NEEDS`) this model does not meet, each with a plain reason.

    "training" depends on the server, not the model: it is never reported here.
    """
    out: dict[str, str] = {}
    for need in sorted(needs):
        if need not in NEEDS:
            raise ValueError(f"unknown need {need!r} (needs: {', '.join(NEEDS)})")
        reason = None
        if need == "class_token" and model.cls_token is None:
            reason = "this model has no [CLS] token (it pools the patch tokens instead)"
        elif need == "classifier" and model.cfg.num_classes == 0:
            reason = "this model has no classifier head, so it predicts no classes"
        elif need == "class_names" and not _has_class_names(model):
            reason = (
                "this model's classes have no names"
                if model.cfg.num_classes
                else "this model has no classifier head, so no classes"
            )
        elif need == "position_embeddings" and not bool(model.pos_embed.detach().abs().sum() > 0):
            reason = "this model's position embeddings are all zero: it has no positions to compare or shuffle"
        elif need == "attention" and model.attends_across_batch:
            reason = "in this model every token attends only to itself on one image, so there is no attention pattern to ask about"
        if reason:
            out[need] = reason
    return out


def check_needs(model: VisionTransformer, needs: Sequence[str] | set[str] | frozenset[str]) -> None:
    """Raise `LessonSkip` for the first need the model does not meet (see `model_lacks`)."""
    lacking = model_lacks(model, needs)
    if lacking:
        need, reason = next(iter(lacking.items()))
        raise LessonSkip(reason, need)


# ---------------------------------------------------------------- resolving a step's state


def resolve_layer(layer: int | str, num_layers: int) -> int:
    """A lesson's layer (1-based, or "last") as a 0-based index; `LessonSkip` if the model has fewer."""
    if layer == "last":
        return num_layers - 1
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 1:
        raise ValueError(f'layer must be a whole number from 1 or "last", not {layer!r}')
    if layer > num_layers:
        raise LessonSkip(f"this step looks at layer {layer}, but this model has {num_layers} layers")
    return layer - 1


def resolve_patch(patch: int | str, grid: tuple[int, int]) -> int:
    """A lesson's patch (0-based, "center" or "corner") as a patch index on `grid`."""
    gh, gw = int(grid[0]), int(grid[1])
    if patch == "center":
        return (gh // 2) * gw + gw // 2
    if patch == "corner":
        return 0
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 0:
        raise ValueError(f'patch must be a whole number from 0, "center" or "corner", not {patch!r}')
    if patch >= gh * gw:
        raise LessonSkip(f"this step uses patch {patch}, but this image has {gh * gw} patches ({gh}x{gw})")
    return patch


def resolve_class(name: str, model: VisionTransformer, probs: Tensor | np.ndarray | None = None) -> int:
    """A class name, or "predicted" (the top class of `probs`), as a class index."""
    check_needs(model, ["classifier"])
    if name == "predicted":
        if probs is None:
            raise ValueError('"predicted" needs the probabilities of the image')
        return int(np.argmax(np.asarray(torch.as_tensor(probs).detach().float().cpu()).reshape(-1)))
    names = list(model.class_names)
    if name in names:
        return names.index(name)
    lower = [n.lower() for n in names]
    if name.lower() in lower:
        return lower.index(name.lower())
    if not _has_class_names(model):
        raise LessonSkip(
            f"this step asks about the class '{name}', but this model's classes have no names", "class_names"
        )
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    raise LessonSkip(f"this model has no class '{name}' (its classes: {shown})", "class_names")


@dataclass(frozen=True)
class ResolvedState:
    """A step's state made concrete for one model and image. None: leave the setting as it is.

    Layers are given both ways: `layer` counted from 1 (the Attention page's slider) and
    `layer_index` from 0 (`trace.attentions[:, layer_index]`).
    """

    model: str | None = None  # "bundled", "untrained", "session"
    image: str | None = None  # a sample's menu name
    layer: int | None = None  # 1-based
    layer_index: int | None = None  # 0-based
    head: int | str | None = None  # 0-based, or "mean"
    query_token: int | None = None  # token index (0 is [CLS]; patches start at the prefix count)
    query_patch: int | None = None  # the patch of that token, None for [CLS]
    head_fusion: str | None = None
    discard_ratio: float | None = None
    start_layer: int | None = None  # 1-based (the rollout's slider)
    class_index: int | None = None
    tile: int | None = None  # patch index of the selected position tile
    shuffle_seed: int | None = None
    preset: str | None = None


def resolve_state(state: StepState, model: VisionTransformer, trace: ViTTrace) -> ResolvedState:
    """Concrete settings for the page from a step's state, checked against the model and image.

    Apply `state.model` and `state.image` first (they change the trace); then call this with the
    new model's trace for the rest.

    Raises:
        LessonSkip: a setting the model cannot take (layer 8 of a 6-layer model, [CLS] as the
            query of a model without one, an unknown class name, ...).
    """
    L, h = trace.num_layers, trace.attentions.shape[2]
    k, grid = trace.num_prefix_tokens, trace.grid
    out: dict[str, Any] = {
        "model": state.model,
        "image": state.image,
        "head_fusion": state.head_fusion,
        "discard_ratio": state.discard_ratio,
        "shuffle_seed": state.shuffle_seed,
        "preset": state.preset,
    }
    if state.layer is not None:
        out["layer_index"] = resolve_layer(state.layer, L)
        out["layer"] = out["layer_index"] + 1
    if state.head is not None:
        if state.head != "mean" and state.head >= h:
            raise LessonSkip(f"this step looks at head {state.head}, but this model has {h} heads (0 to {h - 1})")
        out["head"] = state.head
    if state.query_patch is not None:
        if state.query_patch == "cls":
            check_needs(model, ["class_token"])
            out["query_token"] = 0
        else:
            p = resolve_patch(state.query_patch, grid)
            out["query_patch"], out["query_token"] = p, k + p
    if state.start_layer is not None:
        if state.start_layer > L:
            raise LessonSkip(
                f"this step starts the rollout at layer {state.start_layer}, but this model has {L} layers"
            )
        out["start_layer"] = state.start_layer
    if state.class_name is not None:
        out["class_index"] = resolve_class(state.class_name, model, trace.probs[0])
    if state.tile is not None:
        check_needs(model, ["position_embeddings"])
        out["tile"] = resolve_patch(state.tile, grid)
    return ResolvedState(**out)


# ---------------------------------------------------------------- the live answers


def _check_cls_trace(trace: ViTTrace) -> None:
    if trace.num_prefix_tokens < 1:
        raise LessonSkip("this model has no [CLS] token (it pools the patch tokens instead)", "class_token")


def cls_attention_argmax(
    trace: ViTTrace, layer: int = -1, head_fusion: str = "mean", batch_index: int = 0
) -> tuple[int, float, Tensor]:
    """The patch [CLS] attends to most in one layer.

    Args:
        trace: from `model.trace`.
        layer: 0-based layer index (negative from the end: -1 is the last layer).
        head_fusion: "mean", "max" or "min" over the heads (`fuse_heads`).
        batch_index: which image of the batch.

    Returns:
        (patch index, its attention weight, the fused [CLS] row over the patches (gh, gw)).
        Ties go to the lowest patch index.
    """
    _check_cls_trace(trace)
    gh, gw = trace.grid
    k = trace.num_prefix_tokens
    L = trace.num_layers
    if not -L <= layer < L:
        raise LessonSkip(f"this question looks at layer {layer + 1 if layer >= 0 else layer}; this model has {L}")
    a = trace.attentions[batch_index : batch_index + 1, layer : (layer + 1) or None]  # (1, 1, h, N, N)
    row = fuse_heads(a.float(), head_fusion)[0, 0, 0, k:]  # (n,)
    p = int(torch.argmax(row))  # first maximum
    return p, float(row[p]), row.reshape(gh, gw)


def rollout_argmax(
    trace: ViTTrace, head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0, batch_index: int = 0
) -> tuple[int, float, Tensor]:
    """The brightest patch of [CLS]'s rollout row (ViT Figure 6): (patch, value, map (gh, gw)).

    `start_layer` is 0-based. Ties go to the lowest patch index.
    """
    _check_cls_trace(trace)
    att = trace.attentions[batch_index : batch_index + 1]
    m = rollout_cls_map(att, trace.grid, trace.num_prefix_tokens, head_fusion, discard_ratio, start_layer)[0]
    p = int(torch.argmax(m.reshape(-1)))
    return p, float(m.reshape(-1)[p]), m


def patch_distance(a: int, b: int, grid: tuple[int, int]) -> float:
    """Euclidean distance between patches a and b (row-major indices on `grid`), in patches."""
    gh, gw = int(grid[0]), int(grid[1])
    for p in (a, b):
        if not 0 <= int(p) < gh * gw:
            raise ValueError(f"patch {p} is not on a {gh}x{gw} grid")
    (ra, ca), (rb, cb) = divmod(int(a), gw), divmod(int(b), gw)
    return math.hypot(ra - rb, ca - cb)


_FILL_WORDS = {
    "mean": "painted with the image's mean colour",
    "zero": "painted with the dataset's mean colour",
    "drop": "their tokens dropped",
}


def _probs(logits: Tensor) -> np.ndarray:
    return logits.detach().double().softmax(-1)[0].cpu().numpy()


@dataclass(frozen=True)
class HidingEffect:
    """The prediction before and after hiding some patches."""

    patches: tuple[int, ...]
    fill: str
    target: int  # the class whose probability is asked
    before: float  # its probability on the image, in [0, 1]
    after: float  # with the patches hidden
    probs_before: np.ndarray = field(repr=False, compare=False)  # (classes,)
    probs_after: np.ndarray = field(repr=False, compare=False)

    @property
    def new_top(self) -> int:
        return int(np.argmax(self.probs_after))


@torch.no_grad()
def probability_after_hiding(
    model: VisionTransformer, x: Tensor, patches: Sequence[int], target: int | None = None, fill: str = "mean"
) -> HidingEffect:
    """What the model says with some patches hidden (`whatif.occlude_patches`).

    Args:
        model: the ViT (eval mode).
        x: (1, C, H, W) the preprocessed image.
        patches: patch indices, row-major from 0.
        target: class index; None: the class predicted on the unchanged image.
        fill: "mean" (the image's mean colour), "zero" (0 after normalising) or "drop" (remove the tokens).
    """
    check_needs(model, ["classifier"])
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, not {fill!r}")
    before = _probs(model(x))
    c = int(np.argmax(before)) if target is None else int(target)
    after = _probs(occlude_patches(model, x, list(patches), fill))
    return HidingEffect(
        tuple(sorted({int(p) for p in patches})), fill, c, float(before[c]), float(after[c]), before, after
    )


def patches_to_hide(
    spec: HideSpec,
    model: VisionTransformer,
    x: Tensor,
    trace: ViTTrace,
    target: int | None = None,
    saliency: Tensor | np.ndarray | None = None,
) -> list[int]:
    """The patches a `guess_probability` question hides on this image.

    A fixed list is checked against the grid. "top p% by rollout" ranks the patches by [CLS]'s
    rollout row (head fusion mean, no discarding, from the first layer, as the Prediction page's
    button), "top p% by class map" by the class-specific map (Chefer et al.) of `target` (None:
    the predicted class); ties go to the lower index. `saliency` (gh, gw) replaces the map when
    the page has it cached already.
    """
    gh, gw = trace.grid
    n = gh * gw
    if spec.top_percent is None:
        too_far = [p for p in spec.patches if p >= n]
        if too_far:
            raise LessonSkip(f"this step hides patch {too_far[0]}, but this image has {n} patches ({gh}x{gw})")
        return list(spec.patches)
    if saliency is None:
        if spec.by == "class map":
            check_needs(model, ["classifier"])
            c = int(trace.logits[0].argmax()) if target is None else int(target)
            saliency = class_attention_map(model, x, c)[0]
        else:
            saliency = rollout_cls_map(trace.attentions[:1], trace.grid, trace.num_prefix_tokens)[0]
    order = saliency_order(saliency if isinstance(saliency, Tensor) else torch.as_tensor(np.asarray(saliency)))
    if order.numel() != n:
        raise ValueError(f"the saliency map has {order.numel()} entries for {n} patches")
    return sorted(int(p) for p in order[: spec.count(n)])


@dataclass(frozen=True)
class ShuffleEffect:
    """The prediction before and after shuffling the patches."""

    seed: int
    positions: str  # "follow", "slot" or "none" (vit_core.lessons.SHUFFLE_POSITIONS)
    top: int  # the class predicted before the shuffle
    before: float  # its probability before, in [0, 1]
    after: float  # and after the shuffle
    new_top: int  # the class predicted after the shuffle
    max_logit_change: float  # largest absolute change of any logit
    probs_before: np.ndarray = field(repr=False, compare=False)
    probs_after: np.ndarray = field(repr=False, compare=False)
    perm: Tensor = field(repr=False, compare=False)  # (n,) slot i shows patch perm[i]

    @property
    def changed(self) -> bool:
        """Did the prediction (the top class) change?"""
        return self.new_top != self.top

    @property
    def difference(self) -> float:
        """after - before, the top class's probability, in percentage points."""
        return (self.after - self.before) * 100.0


@torch.no_grad()
def shuffle_effect(model: VisionTransformer, x: Tensor, seed: int = 0, positions: str = "follow") -> ShuffleEffect:
    """Shuffle the patches (`whatif.shuffle_patches`, permutation from `seed`) and measure the change.

    positions: "follow": each patch keeps its own position embedding (only the sequence order
    changes); "slot": the shuffled picture as a new image; "none": no position embeddings at all,
    shuffled compared with unshuffled (both without positions).
    """
    check_needs(model, ["classifier"])
    if positions not in SHUFFLE_POSITIONS:
        raise ValueError(f"positions must be one of {tuple(SHUFFLE_POSITIONS)}, not {positions!r}")
    if positions == "none":
        n = x.shape[-2] // model.patch_size * (x.shape[-1] // model.patch_size)
        before_logits, _ = shuffle_patches(model, x, perm=torch.arange(n), use_pos_embed=False)
        after_logits, perm = shuffle_patches(model, x, seed=seed, use_pos_embed=False)
    else:
        before_logits = model(x)
        after_logits, perm = shuffle_patches(model, x, seed=seed, keep_positions=positions == "follow")
    before, after = _probs(before_logits), _probs(after_logits)
    top = int(np.argmax(before))
    change = float((after_logits.double() - before_logits.double()).abs().max())
    return ShuffleEffect(
        seed, positions, top, float(before[top]), float(after[top]), int(np.argmax(after)), change, before, after, perm
    )


def furthest_layer(mean_distances: Tensor | np.ndarray) -> int:
    """The layer whose heads look furthest: the largest mean over heads of the mean attention distance.

    Args:
        mean_distances: (L, heads), e.g. `mean_attention_distance` (pixels) of one image or many.

    Returns:
        0-based layer index; ties go to the earlier layer.
    """
    d = torch.as_tensor(np.asarray(mean_distances) if not isinstance(mean_distances, Tensor) else mean_distances)
    if d.dim() != 2 or d.shape[0] == 0:
        raise ValueError(f"mean_distances must have shape (L, heads), got {tuple(d.shape)}")
    per_layer = d.double().mean(dim=1)
    if not torch.isfinite(per_layer).all():
        raise LessonSkip("the attention distances are undefined for this image (a grid of one patch?)")
    return int(torch.argmax(per_layer))


def number_answer(name: str, model: VisionTransformer, trace: ViTTrace) -> float:
    """The value of a `number` question's `answer` (a key of `vit_core.lessons.NUMBER_ANSWERS`)."""
    gh, gw = trace.grid
    n, k, P = gh * gw, trace.num_prefix_tokens, trace.patch_size
    N = n + k
    if name == "num_patches":
        return float(n)
    if name == "num_tokens":
        return float(N)
    if name == "patch_values":
        return float(model.cfg.in_chans * P * P)
    if name == "patches_at_half_patch_size":
        if P % 2:
            raise LessonSkip(f"this model's patches are {P} pixels wide, which cannot be halved")
        return float(4 * n)
    if name == "embed_dim":
        return float(model.cfg.embed_dim)
    if name == "num_layers":
        return float(trace.num_layers)
    if name == "num_heads":
        return float(trace.attentions.shape[2])
    if name == "head_dim":
        return float(model.blocks[0].attn.head_dim)
    if name == "num_params":
        return float(model.num_params())
    if name == "block_params_percent":
        return 100.0 * sum(p.numel() for p in model.blocks.parameters()) / max(1, model.num_params())
    if name == "attention_weights_per_head":
        return float(N * N)
    if name == "attention_row_sum":
        return float(trace.attentions[0, -1, 0, 0].double().sum())
    if name == "cls_self_attention_percent":
        check_needs(model, ["class_token"])
        return 100.0 * float(trace.attentions[0, -1, :, 0, 0].double().mean())
    if name == "top_probability":
        check_needs(model, ["classifier"])
        return 100.0 * float(trace.logits[0].double().softmax(-1).max())
    raise ValueError(f"unknown number answer {name!r}")


# ---------------------------------------------------------------- one question, answered


@dataclass(frozen=True)
class Answer:
    """The truth of one question on this model and image, ready to reveal."""

    kind: str
    value: int | float | bool  # in the units of the guess (see the module docstring)
    text: str  # the reveal, one or two plain sentences
    grid: tuple[int, int] | None = None  # the patch grid (click_patch scores distances on it)
    details: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # for the figures


def _patch_name(p: int, grid: tuple[int, int]) -> str:
    r, c = divmod(int(p), int(grid[1]))
    return f"patch {p} (row {r}, column {c})"


def answer(
    question: Question,
    model: VisionTransformer,
    x: Tensor,
    trace: ViTTrace | None = None,
    *,
    mean_distances: Tensor | np.ndarray | None = None,
    saliency: Tensor | np.ndarray | None = None,
) -> Answer:
    """Compute the answer to `question` for this model and image.

    Args:
        question: from a lesson step.
        model: the ViT in use (eval mode).
        x: (1, C, H, W) the preprocessed image.
        trace: `model.trace(x)`, if the page has it (computed here otherwise).
        mean_distances: (L, heads) for pick_layer, if the page shows its own (e.g. over the
            sample images); default: this image's.
        saliency: (gh, gw) the map a "top p% by ..." hide ranks by, if the page has it cached.

    Raises:
        LessonSkip: the model lacks what the question needs.
    """
    check_needs(model, step_needs(Step("", "", "lessons", question=question)) - {"training"})
    if trace is None:
        with torch.no_grad():
            trace = model.trace(x)
    grid = trace.grid
    kind = question.kind
    if kind == "click_patch":
        if grid[0] * grid[1] < 2:
            raise LessonSkip("this image has a single patch: there is nothing to click")
        layer = resolve_layer(question.layer, trace.num_layers)
        if question.map == "rollout":
            p, v, m = rollout_argmax(trace, question.head_fusion)
            text = f"The rollout of [CLS] is brightest at {_patch_name(p, grid)}: {v:.3f} of its total of 1."
        else:
            p, v, m = cls_attention_argmax(trace, layer, question.head_fusion)
            fused = "mean of the heads" if question.head_fusion == "mean" else f"{question.head_fusion} over the heads"
            text = f"In layer {layer + 1} ({fused}), [CLS] attends most to {_patch_name(p, grid)}: weight {v:.3f}, {v * 100:.1f}% of its attention."
        return Answer(kind, p, text, grid, {"map": m.cpu().numpy(), "layer": layer + 1, "weight": v})
    if kind == "guess_probability":
        c = resolve_class(question.target, model, trace.probs[0])
        hidden = patches_to_hide(question.hide, model, x, trace, c, saliency)
        eff = probability_after_hiding(model, x, hidden, c, question.fill)
        names = model.class_names
        new = eff.new_top
        text = (
            f"With {question.hide.describe()} hidden ({len(hidden)} patch{'es' if len(hidden) != 1 else ''}, "
            f"{_FILL_WORDS[question.fill]}), the probability of '{names[c]}' goes from {eff.before * 100:.1f}% to {eff.after * 100:.1f}%. "
            + (
                f"The prediction is now '{names[new]}' ({eff.probs_after[new] * 100:.1f}%)."
                if new != int(np.argmax(eff.probs_before))
                else f"The prediction stays '{names[new]}'."
            )
        )
        details = {"patches": hidden, "before": eff.before * 100, "target": c, "probs_before": eff.probs_before}
        details["probs_after"] = eff.probs_after
        return Answer(kind, eff.after * 100.0, text, grid, details)
    if kind == "yes_no_shuffle":
        eff = shuffle_effect(model, x, question.seed, question.positions)
        names = model.class_names
        how = SHUFFLE_POSITIONS[question.positions]
        verdict = (
            f"the prediction changes from '{names[eff.top]}' to '{names[eff.new_top]}'"
            if eff.changed
            else f"the prediction stays '{names[eff.top]}'"
        )
        text = (
            f"Shuffled with seed {eff.seed}, {how}: {verdict}. Its probability goes from {eff.before * 100:.1f}% to "
            f"{eff.after * 100:.1f}% ({eff.difference:+.1f} points); the largest change of any logit is {eff.max_logit_change:.1e}."
        )
        details = {"before": eff.before * 100, "after": eff.after * 100, "difference": eff.difference}
        details.update(probs_before=eff.probs_before, probs_after=eff.probs_after, perm=eff.perm.numpy())
        details["max_logit_change"] = eff.max_logit_change
        return Answer(kind, eff.changed, text, grid, details)
    if kind == "pick_layer":
        if grid[0] * grid[1] < 2:
            raise LessonSkip("this image has a single patch: attention has no distance")
        if mean_distances is None:
            mean_distances = mean_attention_distance(trace.attentions, grid, trace.patch_size, trace.num_prefix_tokens)
        md = torch.as_tensor(np.asarray(mean_distances) if not isinstance(mean_distances, Tensor) else mean_distances)
        layer = furthest_layer(md)
        per_layer = md.double().mean(dim=1)
        text = (
            f"Layer {layer + 1} of {md.shape[0]}: its heads look {float(per_layer[layer]):.1f} pixels far on average "
            f"(layer 1: {float(per_layer[0]):.1f} pixels)."
        )
        details = {"mean_distances": md.cpu().numpy(), "per_layer": per_layer.cpu().numpy(), "num_layers": md.shape[0]}
        return Answer(kind, layer + 1, text, grid, details)
    if kind == "number":
        v = number_answer(question.answer, model, trace)
        unit = "" if not question.unit else question.unit if question.unit == "%" else f" {question.unit}"
        return Answer(kind, v, f"The answer for this model: {_number(v)}{unit}.", grid, {"answer": question.answer})
    raise ValueError(f"unknown question kind {kind!r} (kinds: {', '.join(QUESTION_KINDS)})")


# ---------------------------------------------------------------- scoring, gently


def _number(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def format_value(kind: str, value: Any, grid: tuple[int, int] | None = None) -> str:
    """A guess or an answer as the summary shows it ("patch 27 (row 3, column 3)", "42.0%", "yes")."""
    if kind == "click_patch":
        return _patch_name(int(value), grid) if grid is not None else f"patch {int(value)}"
    if kind == "guess_probability":
        return f"{float(value):.1f}%"
    if kind == "yes_no_shuffle":
        return "yes, it changes" if bool(value) else "no, it stays"
    if kind == "pick_layer":
        return f"layer {int(value)}"
    if kind == "number":
        return _number(float(value))
    raise ValueError(f"unknown question kind {kind!r}")


def score(
    kind: str, guess: Any, truth: Answer | float | int | bool, grid: tuple[int, int] | None = None
) -> tuple[float, str]:
    """A gentle score for a guess: (points in [0, 1], a short sentence), never rising as the error grows.

    - click_patch: full points on the patch, falling linearly to 0 at a distance of the grid's
      longer side (in patches); "close: 2 patches away".
    - guess_probability (percent): full points within 5 points, then linearly to 0 at 50 points off.
    - yes_no_shuffle: 1 or 0.
    - pick_layer: 1 on the layer, 2/3 one layer off, 1/3 two off, 0 further.
    - number: full points within 5%, then falling with the factor between guess and answer, 0
      at a factor of 10 (for answers of either sign or zero: with the difference relative to
      the larger of the two).

    Args:
        truth: an `Answer`, or the true value (then click_patch needs `grid`).
    """
    if isinstance(truth, Answer) or type(truth).__name__ == "Answer":  # also one made before a module reload
        grid = grid or truth.grid
        truth = truth.value
    if kind == "click_patch":
        if grid is None:
            raise ValueError("scoring a click needs the patch grid")
        d = patch_distance(int(guess), int(truth), grid)
        points = max(0.0, 1.0 - d / max(int(grid[0]), int(grid[1]), 1))
        if d == 0:
            return 1.0, "exactly: that is the patch"
        away = f"{d:.0f} patch{'es' if round(d) != 1 else ''}" if d.is_integer() else f"{d:.1f} patches"
        if d < 1.5:
            return points, f"very close: right next to it ({away} away)"
        if d <= max(grid) / 4 + 1:
            return points, f"close: {away} away"
        return points, f"{away} away"
    if kind == "guess_probability":
        diff = abs(float(guess) - float(truth))
        points = 1.0 if diff <= 5 else max(0.0, 1.0 - (diff - 5.0) / 45.0)
        side = "higher" if float(truth) > float(guess) else "lower"
        if diff <= 5:
            return points, f"within 5 points: well judged ({diff:.1f} points off)"
        if diff <= 15:
            return points, f"close: {diff:.0f} points off (the model's value is {side})"
        return points, f"{diff:.0f} points off (the model's value is {side})"
    if kind == "yes_no_shuffle":
        right = bool(guess) == bool(truth)
        return (1.0, "right") if right else (0.0, "not this time")
    if kind == "pick_layer":
        d = abs(int(guess) - int(truth))
        points = max(0.0, 1.0 - d / 3.0)
        if d == 0:
            return 1.0, "exactly: that is the layer"
        return points, ("close: one layer off" if d == 1 else f"{d} layers off")
    if kind == "number":
        g, t = float(guess), float(truth)
        if g == t:
            return 1.0, "exactly"
        if g > 0 and t > 0:
            factor = max(g, t) / min(g, t)
            points = 1.0 if factor <= 1.05 else max(0.0, 1.0 - math.log(factor) / math.log(10.0))
        else:
            rel = abs(g - t) / max(abs(g), abs(t))
            factor = None
            points = 1.0 if rel <= 0.05 else max(0.0, 1.0 - rel)
        rel = abs(g - t) / max(abs(t), 1e-12)
        side = "larger" if t > g else "smaller"
        if rel <= 0.05:
            return points, "within 5%: spot on"
        if factor is not None and factor >= 2:
            return points, f"off by a factor of {factor:.1f} (the answer is {side})"
        return (
            points,
            f"close: {rel * 100:.0f}% off (the answer is {side})"
            if rel <= 0.25
            else f"{rel * 100:.0f}% off (the answer is {side})",
        )
    raise ValueError(f"unknown question kind {kind!r} (kinds: {', '.join(QUESTION_KINDS)})")


@dataclass(frozen=True)
class Response:
    """A learner's answer to one question, with the truth and the score."""

    step: int  # 1-based step number
    question: Question
    guess: Any
    answer: Answer
    points: float
    verdict: str


def respond(step: int, question: Question, guess: Any, truth: Answer) -> Response:
    """Score a guess against the computed answer and keep both for the summary."""
    if truth.kind != question.kind:
        raise ValueError(f"an answer to a {truth.kind} question cannot score a {question.kind} question")
    points, verdict = score(question.kind, guess, truth)
    return Response(step, question, guess, truth, points, verdict)


@dataclass(frozen=True)
class SummaryRow:
    """One line of the lesson's closing table: the guess against the model's answer."""

    step: int
    question: str
    guess: str  # "" for a skipped step
    truth: str  # the model's answer, or why the step was skipped
    points: float | None  # None for a skipped step
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "question": self.question,
            "your guess": self.guess,
            "the model": self.truth,
            "score": "" if self.points is None else f"{self.points:.0%}",
            "": self.verdict,
        }


def summary(responses: Sequence[Response], skipped: Mapping[int, str] | None = None) -> list[SummaryRow]:
    """The guesses against reality, one row per answered question (and per skipped step), by step.

    Args:
        responses: from `respond`; a step answered twice keeps its last response.
        skipped: step number -> the reason it was skipped (the `LessonSkip` message).
    """
    last: dict[int, Response] = {r.step: r for r in responses}
    rows = [
        SummaryRow(
            r.step,
            r.question.prompt,
            format_value(r.question.kind, r.guess, r.answer.grid),
            format_value(r.answer.kind, r.answer.value, r.answer.grid),
            r.points,
            r.verdict,
        )
        for r in last.values()
    ]
    for step, reason in (skipped or {}).items():
        if step not in last:
            rows.append(SummaryRow(step, "", "", f"skipped: {reason}", None, "skipped"))
    return sorted(rows, key=lambda r: r.step)


def total_points(responses: Sequence[Response]) -> tuple[float, int]:
    """(points earned, questions answered), counting each step's last response."""
    last = {r.step: r for r in responses}
    return sum(r.points for r in last.values()), len(last)
