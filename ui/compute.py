"""The one place that turns (model, image) into what the pages show, cached.

One forward pass per (model, image): `prepare` runs the preprocessing and `model.trace`
once and caches the result; every analysis below takes the page's `Current` and is cached
on top of it, so moving a slider never re-runs the model. A `Current` is hashed by its ids
(`Current.cache_key`: the model's id and the image's hash; the per-model analyses by the
model's id alone), never by its tensors, and pages never spell the ids out.

The model may live on a GPU (`vit_core.devices`): what this module hands the model goes to the
model's device first (`to_model`), and every result comes back to the CPU (`_cpu`) before it is
cached or plotted. `Prepared.x` and the cached trace stay on the CPU.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from PIL import Image

import vit_plots as vp
from vit_core import ViTTrace, load_image, preprocess_steps
from vit_core import analysis as A
from vit_core.devices import model_device
from vit_core.images import denormalize

from .images import ImageChoice, sample_images
from .models import LoadedModel
from .selection import Current, Prepared

THUMB_PX = 512  # the original is kept for display at most this size
TTL = 3600  # seconds a cached result lives
# How the caches hash their arguments: by ids (type names are matched, so a reloaded module still hits)
BY_MODEL_AND_IMAGE = {
    Current: lambda cur: cur.cache_key,
    LoadedModel: lambda m: m.model_id,
    ImageChoice: lambda i: i.key,
}
BY_MODEL = {Current: lambda cur: cur.model_id}  # the analyses of the weights alone: every image shares them
RESULTS = {"max_entries": 64, "ttl": TTL, "show_spinner": False, "hash_funcs": BY_MODEL_AND_IMAGE}
MODEL_RESULTS = {**RESULTS, "max_entries": 8, "hash_funcs": BY_MODEL}


def to_model(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """An input for `model`, on the model's device (the same tensor on a CPU model)."""
    return x.to(model_device(model))


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """A result for caching and plotting: detached, on the CPU (the same tensor on a CPU model)."""
    return t.detach().cpu()


def _trace_to(trace: ViTTrace, to: Callable[[torch.Tensor], torch.Tensor]) -> ViTTrace:
    """The trace with every tensor passed through `to` (e.g. `_cpu`)."""
    values = {f.name: getattr(trace, f.name) for f in dataclasses.fields(trace)}
    return dataclasses.replace(trace, **{k: to(v) for k, v in values.items() if isinstance(v, torch.Tensor)})


def trace_on_model(cur: Current) -> ViTTrace:
    """The cached (CPU) trace, on the model's device, for analyses that run the model's weights on it."""
    return _trace_to(cur.prep.trace, lambda t: to_model(t, cur.model))


def prepare(loaded: LoadedModel, image: ImageChoice) -> Prepared:
    """Preprocess the image for this model and run `model.trace` once (cached per model id and image hash)."""
    d = _prepare(loaded, image)
    return Prepared(**{**d, "trace": ViTTrace(**d["trace"])})


@st.cache_data(max_entries=16, ttl=TTL, show_spinner="Running the model on the image...", hash_funcs=BY_MODEL_AND_IMAGE)
def _prepare(loaded: LoadedModel, choice: ImageChoice) -> dict:
    # Plain dicts of arrays and tensors only: st.cache_data pickles the result, and pickling an
    # instance of a class fails once Streamlit has reloaded the class's module (a source file
    # changed while the server runs).
    model = loaded.model
    image = choice.decoded()
    steps = preprocess_steps(image, model.cfg)
    w, h = image.size
    s = min(1.0, THUMB_PX / max(w, h))
    thumb = image if s == 1.0 else image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    with torch.no_grad():
        trace = _trace_to(model.trace(to_model(steps.tensor, model)), _cpu)
    display = denormalize(steps.tensor, model.cfg)
    return {
        "thumbnail": np.asarray(thumb.convert("RGB")),
        "crop_box": tuple(float(v) * s for v in steps.crop_box),
        "original_size": (w, h),
        "resized": np.asarray(steps.resized.convert("RGB")),
        "x": steps.tensor,
        "display": display if display.shape[-1] == 3 else np.repeat(display, 3, -1),
        "trace": {f.name: getattr(trace, f.name) for f in dataclasses.fields(trace)},
        "probs": trace.probs[0].float().numpy(),
    }


# ---- per-model analyses (independent of the image) ----


@st.cache_data(**MODEL_RESULTS)
def stage_params(cur: Current) -> dict[str, int]:
    """Parameter counts of the five steps: patch embedding, CLS + positions, encoder, head."""

    def count(*modules) -> int:
        return sum(
            p.numel() for m in modules if m is not None for p in (m.parameters() if hasattr(m, "parameters") else [m])
        )

    m = cur.model
    # learned tokens only: fixed (sine-cosine) or absent positions are buffers, not parameters
    tokens = [t for t in (m.cls_token, m.dist_token, m.reg_token, m.pos_embed) if isinstance(t, torch.nn.Parameter)]
    head = [m.norm, m.fc_norm, m.head] + ([m.head_dist] if hasattr(m, "head_dist") else [])
    return {
        "patch_embed": count(m.patch_embed),
        "tokens": sum(t.numel() for t in tokens),
        "blocks": count(m.blocks),
        "block": count(m.blocks[0]),
        "head": count(*head),
        "total": m.num_params(),
    }


@st.cache_data(**MODEL_RESULTS)
def filters(cur: Current, k: int = 28) -> dict[str, np.ndarray]:
    """Raw projection filters (D, P, P, C), their top-k principal components (k, P, P, C), variance ratios."""
    pca, ratio = A.embedding_filters_pca_and_variance(cur.model, k)
    return {"raw": _cpu(A.embedding_filters(cur.model)).numpy(), "pca": _cpu(pca).numpy(), "ratio": _cpu(ratio).numpy()}


@st.cache_data(**MODEL_RESULTS)
def position_similarity(cur: Current) -> np.ndarray:
    """(gh, gw, gh, gw) cosine similarity of the patch position embeddings (ViT Figure 7 centre)."""
    return _cpu(A.position_similarity(cur.model)).numpy()


def sample_files() -> list[bytes]:
    """The bundled sample images, as file bytes."""
    return [p.read_bytes() for p in sample_images().values()]


@st.cache_data(**{**MODEL_RESULTS, "show_spinner": "Running the model on every sample image..."})
def sample_mean_distance(cur: Current) -> np.ndarray:
    """(L, heads) mean attention distance in pixels, averaged over the bundled sample images."""
    x = torch.cat([preprocess_steps(load_image(d), cur.cfg).tensor for d in sample_files()])
    with torch.no_grad():
        t = cur.model.trace(to_model(x, cur.model))
    return _cpu(A.mean_attention_distance(t.attentions, t.grid, t.patch_size, t.num_prefix_tokens)).numpy()


# ---- per-(model, image) analyses ----


@st.cache_data(**RESULTS)
def patch_matrix(cur: Current) -> np.ndarray:
    """(n, C*P*P) the flattened patches of the model input."""
    return A.patchify(cur.prep.x, cur.patch_size)[0].numpy()


@st.cache_data(**RESULTS)
def conv_vs_linear(cur: Current) -> dict:
    """The patch embedding by Conv2d and by flatten + Linear: (n, D) each and the largest difference."""
    r = A.conv_vs_linear(cur.model, to_model(cur.prep.x, cur.model))
    return {
        "conv": _cpu(r["conv"][0]).numpy(),
        "linear": _cpu(r["linear"][0]).numpy(),
        "max_abs_diff": r["max_abs_diff"],
    }


@st.cache_data(**RESULTS)
def token_views(cur: Current) -> dict[str, np.ndarray]:
    """Patch tokens at every depth: PCA colours (S, gh, gw, 3), 2-D PCA coordinates (S, n, 2), and the
    share of the top-3 PCA variance a patch's mean colour explains linearly (S,)."""
    t = cur.prep.trace  # signs aligned from one depth to the next, so colours do not flip for nothing
    rgb = A.token_pca_rgb_by_depth(t.hidden_states, t.grid, t.num_prefix_tokens)[0]
    coords = A.token_pca_by_depth(t.hidden_states, t.num_prefix_tokens, k=3)[0]
    r2 = A.variance_explained_by(coords, torch.from_numpy(patch_colours(cur)))
    return {"rgb": rgb.numpy(), "xy": coords[..., :2].numpy(), "from_colour": r2.numpy()}


@st.cache_data(**RESULTS)
def patch_colours(cur: Current) -> np.ndarray:
    """(n, 3) mean display colour of each patch, in [0, 1]."""
    img = torch.from_numpy(np.ascontiguousarray(cur.prep.display)).permute(2, 0, 1)[None].float()
    flat = A.patchify(img, cur.patch_size)[0]  # (n, 3*P*P)
    return flat.reshape(flat.shape[0], 3, -1).mean(-1).numpy()


@st.cache_data(**RESULTS)
def rollout(cur: Current, head_fusion: str, discard_ratio: float, start_layer: int) -> np.ndarray:
    """(gh, gw) attention rollout of the CLS token (Abnar & Zuidema 2020)."""
    t = cur.prep.trace
    return A.rollout_cls_map(t.attentions, t.grid, t.num_prefix_tokens, head_fusion, discard_ratio, start_layer)[
        0
    ].numpy()


@st.cache_data(**{**RESULTS, "max_entries": 32, "show_spinner": "Back-propagating for the class map..."})
def class_map(cur: Current, target: int, start_layer: int = 0) -> np.ndarray:
    """(gh, gw) Chefer et al. relevance of each patch for class `target` (one forward + backward)."""
    with torch.enable_grad():
        t = cur.model.trace(to_model(cur.prep.x, cur.model), target=int(target))
    return _cpu(A.class_attention_map_from_trace(t, start_layer)[0]).numpy()


@st.cache_data(**RESULTS)
def head_maps(cur: Current) -> dict[str, np.ndarray]:
    """Mean attention distance (L, h) in pixels, attention entropy (L, h) in nats."""
    t = cur.prep.trace
    return {
        "distance": A.mean_attention_distance(t.attentions, t.grid, t.patch_size, t.num_prefix_tokens).numpy(),
        "entropy": A.attention_entropy(t.attentions).numpy(),
    }


@st.cache_data(**RESULTS)
def last_heads(cur: Current, mass: float) -> np.ndarray:
    """(heads, gh, gw) last-layer [CLS] attention per head, keeping the top `mass` share (DINO)."""
    t = cur.prep.trace
    return A.last_layer_heads(t.attentions, t.grid, t.num_prefix_tokens, mass=mass)[0].numpy()


@st.cache_data(**RESULTS)
def head_steps(cur: Current, layer: int, head: int, query: int) -> dict[str, np.ndarray]:
    """One head's computation for one query token: q, k, scores, weights, v, output."""
    return A.head_computation(cur.model, trace_on_model(cur), layer, head, query)


@st.cache_data(**RESULTS)
def logit_lens(cur: Current) -> np.ndarray:
    """(L+1, classes) class probabilities read off the CLS token after each block."""
    return _cpu(A.logit_lens(cur.model, trace_on_model(cur))[0]).numpy()


@st.cache_data(**RESULTS)
def occluded(cur: Current, patches: tuple[int, ...], mode: str) -> dict:
    """Probabilities with some patches hidden, and the hidden image for display."""
    model, x = cur.model, cur.prep.x
    if not patches:  # nothing hidden: the forward pass already made
        return {"probs": cur.prep.probs, "display": cur.prep.display}
    with torch.no_grad():
        probs = _cpu(A.occlude_patches(model, to_model(x, model), list(patches), mode).softmax(-1)[0]).numpy()
        shown = A.occlude_image(x, list(patches), model.patch_size, "mean" if mode == "drop" else mode)
    return {"probs": probs, "display": denormalize(shown, model.cfg)}


@st.cache_data(**RESULTS)
def shuffled(cur: Current, seed: int) -> dict:
    """The prediction on shuffled patches: positions follow the content, stay with the slot, or are absent."""
    model, x = cur.model, cur.prep.x
    xm = to_model(x, model)
    with torch.no_grad():
        kept, perm = A.shuffle_patches(model, xm, seed=seed, keep_positions=True)
        moved, _ = A.shuffle_patches(model, xm, perm=perm, keep_positions=False)
        none_orig, _ = A.shuffle_patches(model, xm, perm=torch.arange(perm.numel()), use_pos_embed=False)
        none_shuf, _ = A.shuffle_patches(model, xm, perm=perm, use_pos_embed=False)
        image = A.shuffle_image(x, perm, model.patch_size)
        kept, moved, none_orig, none_shuf = (_cpu(t) for t in (kept, moved, none_orig, none_shuf))
    return {
        "perm": perm.numpy(),
        "kept": kept.softmax(-1)[0].numpy(),
        "moved": moved.softmax(-1)[0].numpy(),
        "no_pos": none_orig.softmax(-1)[0].numpy(),
        "no_pos_shuffled": none_shuf.softmax(-1)[0].numpy(),
        "no_pos_max_diff": float((none_orig - none_shuf).abs().max()),
        "display": denormalize(image, model.cfg),
    }


@st.cache_resource(max_entries=8, ttl=TTL, show_spinner=False, hash_funcs=BY_MODEL_AND_IMAGE)
def patch_animation(cur: Current) -> go.Figure:
    """The patches-to-sequence animation (one trace per patch, and frames: slow to build, so
    built once per model and image; the figure is shared read-only, st.plotly_chart copies it)."""
    t = cur.prep.trace
    return vp.patch_animation_figure(cur.prep.display, t.grid, t.patch_size)


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) image in [0, 1] or uint8 as PNG bytes (for st.image / downloads)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


ORIGINAL_PX = 1024  # maps over the original photo draw it at most this size (longer side)


@st.cache_data(**{**RESULTS, "max_entries": 8})
def original_for_maps(cur: Current) -> dict:
    """The original image, at most `ORIGINAL_PX` on its longer side, as (h, w, 3) uint8 ("image"),
    and the region the model saw in its pixels ("box": left, top, right, bottom)."""
    image = cur.image.decoded()
    w, h = image.size
    box = preprocess_steps(image, cur.cfg).crop_box
    s = min(1.0, ORIGINAL_PX / max(w, h))
    if s < 1.0:
        image = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return {"image": np.asarray(image.convert("RGB")), "box": tuple(float(v) * s for v in box)}
