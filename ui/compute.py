"""The one place that turns (model, image) into what the pages show, cached.

One forward pass per (model, image): `prepare` runs the preprocessing and `model.trace`
once and caches the result; every analysis below is cached on top of it under the model's
id, the image's hash and its own parameters, so moving a slider never re-runs the model.
Models are not hashable: they are passed as `_model` (not hashed) beside `model_id`.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from PIL import Image

import vit_plots as vp
from ui.images import sample_images
from vit_core import VisionTransformer, ViTTrace, load_image, preprocess_steps
from vit_core import analysis as A
from vit_core.images import denormalize

THUMB_PX = 512  # the original is kept for display at most this size
TTL = 3600  # seconds a cached result lives
RESULTS = {"max_entries": 64, "ttl": TTL, "show_spinner": False}


@dataclass
class Prepared:
    """An image made ready for one model, and the model's observed forward pass on it."""

    thumbnail: np.ndarray  # (h, w, 3) uint8: the original, downscaled to <= THUMB_PX
    crop_box: tuple[float, float, float, float]  # the region the model sees, in thumbnail pixels
    original_size: tuple[int, int]  # (w, h) of the uploaded image
    resized: np.ndarray  # (H, W, 3) uint8: resized + centre-cropped, before normalisation
    x: torch.Tensor  # (1, C, H, W) normalised model input
    display: np.ndarray  # (H, W, 3) float in [0, 1]: the model input, de-normalised for display
    trace: ViTTrace  # everything the forward pass produced (batch of 1)
    probs: np.ndarray  # (classes,) softmax of the logits


def prepare(model: VisionTransformer, model_id: str, image_key: str, data: bytes) -> Prepared:
    """Preprocess the image for this model and run `model.trace` once (cached per model and image)."""
    d = _prepare(model, model_id, image_key, data)
    return Prepared(**{**d, "trace": ViTTrace(**d["trace"])})


@st.cache_data(max_entries=16, ttl=TTL, show_spinner="Running the model on the image...")
def _prepare(_model: VisionTransformer, model_id: str, image_key: str, _data: bytes) -> dict:
    # Plain dicts of arrays and tensors only: st.cache_data pickles the result, and pickling an
    # instance of a class fails once Streamlit has reloaded the class's module (a source file
    # changed while the server runs).
    image = load_image(_data)
    steps = preprocess_steps(image, _model.cfg)
    w, h = image.size
    s = min(1.0, THUMB_PX / max(w, h))
    thumb = image if s == 1.0 else image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    with torch.no_grad():
        trace = _model.trace(steps.tensor)
    display = denormalize(steps.tensor, _model.cfg)
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


@st.cache_data(max_entries=8, ttl=TTL, show_spinner=False)
def stage_params(_model: VisionTransformer, model_id: str) -> dict[str, int]:
    """Parameter counts of the five steps: patch embedding, CLS + positions, encoder, head."""

    def count(*modules) -> int:
        return sum(
            p.numel() for m in modules if m is not None for p in (m.parameters() if hasattr(m, "parameters") else [m])
        )

    m = _model
    tokens = [t for t in (m.cls_token, m.dist_token, m.reg_token, m.pos_embed) if t is not None]
    head = [m.norm, m.fc_norm, m.head] + ([m.head_dist] if hasattr(m, "head_dist") else [])
    return {
        "patch_embed": count(m.patch_embed),
        "tokens": sum(t.numel() for t in tokens),
        "blocks": count(m.blocks),
        "block": count(m.blocks[0]),
        "head": count(*head),
        "total": m.num_params(),
    }


@st.cache_data(**RESULTS)
def filters(_model: VisionTransformer, model_id: str, k: int = 28) -> dict[str, np.ndarray]:
    """Raw projection filters (D, P, P, C), their top-k principal components (k, P, P, C), variance ratios."""
    _, ratio = A.embedding_pca_components(_model, k)
    return {
        "raw": A.embedding_filters(_model).numpy(),
        "pca": A.embedding_filters_pca(_model, k).numpy(),
        "ratio": ratio.numpy(),
    }


@st.cache_data(**RESULTS)
def position_similarity(_model: VisionTransformer, model_id: str) -> np.ndarray:
    """(gh, gw, gh, gw) cosine similarity of the patch position embeddings (ViT Figure 7 centre)."""
    return A.position_similarity(_model).numpy()


# ---- per-(model, image) analyses ----


@st.cache_data(**RESULTS)
def patch_matrix(_prep: Prepared, model_id: str, image_key: str, patch_size: int) -> np.ndarray:
    """(n, C*P*P) the flattened patches of the model input."""
    return A.patchify(_prep.x, patch_size)[0].numpy()


@st.cache_data(**RESULTS)
def conv_vs_linear(_model: VisionTransformer, model_id: str, _prep: Prepared, image_key: str) -> dict:
    """The patch embedding by Conv2d and by flatten + Linear: (n, D) each and the largest difference."""
    r = A.conv_vs_linear(_model, _prep.x)
    return {"conv": r["conv"][0].numpy(), "linear": r["linear"][0].numpy(), "max_abs_diff": r["max_abs_diff"]}


@st.cache_data(**RESULTS)
def token_views(_prep: Prepared, model_id: str, image_key: str) -> dict[str, np.ndarray]:
    """Patch tokens at every depth: PCA colours (S, gh, gw, 3) and 2-D PCA coordinates (S, n, 2)."""
    t = _prep.trace
    depths = range(t.hidden_states.shape[1])
    rgb = [A.token_pca_rgb(t.hidden_states, d, t.grid, t.num_prefix_tokens)[0] for d in depths]
    xy = [A.token_pca(t.hidden_states, d, t.num_prefix_tokens, k=2)[0] for d in depths]
    return {"rgb": torch.stack(rgb).numpy(), "xy": torch.stack(xy).numpy()}


@st.cache_data(**RESULTS)
def patch_colours(_prep: Prepared, model_id: str, image_key: str, patch_size: int) -> np.ndarray:
    """(n, 3) mean display colour of each patch, in [0, 1]."""
    img = torch.from_numpy(np.ascontiguousarray(_prep.display)).permute(2, 0, 1)[None].float()
    flat = A.patchify(img, patch_size)[0]  # (n, 3*P*P)
    return flat.reshape(flat.shape[0], 3, -1).mean(-1).numpy()


@st.cache_data(**RESULTS)
def rollout(
    _prep: Prepared, model_id: str, image_key: str, head_fusion: str, discard_ratio: float, start_layer: int
) -> np.ndarray:
    """(gh, gw) attention rollout of the CLS token (Abnar & Zuidema 2020)."""
    t = _prep.trace
    return A.rollout_cls_map(t.attentions, t.grid, t.num_prefix_tokens, head_fusion, discard_ratio, start_layer)[
        0
    ].numpy()


@st.cache_data(max_entries=32, ttl=TTL, show_spinner="Back-propagating for the class map...")
def class_map(
    _model: VisionTransformer, model_id: str, _prep: Prepared, image_key: str, target: int, start_layer: int = 0
) -> np.ndarray:
    """(gh, gw) Chefer et al. relevance of each patch for class `target` (one forward + backward)."""
    with torch.enable_grad():
        t = _model.trace(_prep.x, target=int(target))
    return A.class_attention_map_from_trace(t, start_layer)[0].detach().numpy()


@st.cache_data(**RESULTS)
def head_maps(_prep: Prepared, model_id: str, image_key: str) -> dict[str, np.ndarray]:
    """Mean attention distance (L, h) in pixels, attention entropy (L, h) in nats."""
    t = _prep.trace
    return {
        "distance": A.mean_attention_distance(t.attentions, t.grid, t.patch_size, t.num_prefix_tokens).numpy(),
        "entropy": A.attention_entropy(t.attentions).numpy(),
    }


@st.cache_data(**RESULTS)
def last_heads(_prep: Prepared, model_id: str, image_key: str, mass: float) -> np.ndarray:
    """(heads, gh, gw) last-layer [CLS] attention per head, keeping the top `mass` share (DINO)."""
    t = _prep.trace
    return A.last_layer_heads(t.attentions, t.grid, t.num_prefix_tokens, mass=mass)[0].numpy()


def sample_files() -> list[bytes]:
    """The bundled sample images, as file bytes."""
    return [p.read_bytes() for p in sample_images().values()]


@st.cache_data(max_entries=8, ttl=TTL, show_spinner="Running the model on every sample image...")
def sample_mean_distance(_model: VisionTransformer, model_id: str) -> np.ndarray:
    """(L, heads) mean attention distance in pixels, averaged over the bundled sample images."""
    x = torch.cat([preprocess_steps(load_image(d), _model.cfg).tensor for d in sample_files()])
    with torch.no_grad():
        t = _model.trace(x)
    return A.mean_attention_distance(t.attentions, t.grid, t.patch_size, t.num_prefix_tokens).numpy()


@st.cache_data(**RESULTS)
def head_steps(
    _model: VisionTransformer, model_id: str, _prep: Prepared, image_key: str, layer: int, head: int, query: int
) -> dict[str, np.ndarray]:
    """One head's computation for one query token: q, k, scores, weights, v, output."""
    return A.head_computation(_model, _prep.trace, layer, head, query)


@st.cache_data(**RESULTS)
def logit_lens(_model: VisionTransformer, model_id: str, _prep: Prepared, image_key: str) -> np.ndarray:
    """(L+1, classes) class probabilities read off the CLS token after each block."""
    return A.logit_lens(_model, _prep.trace)[0].numpy()


@st.cache_data(**RESULTS)
def occluded(
    _model: VisionTransformer, model_id: str, _prep: Prepared, image_key: str, patches: tuple[int, ...], mode: str
) -> dict:
    """Probabilities with some patches hidden, and the hidden image for display."""
    if not patches:  # nothing hidden: the forward pass already made
        return {"probs": _prep.probs, "display": _prep.display}
    with torch.no_grad():
        probs = A.occlude_patches(_model, _prep.x, list(patches), mode).softmax(-1)[0].numpy()
        shown = A.occlude_image(_prep.x, list(patches), _model.patch_size, "mean" if mode == "drop" else mode)
    return {"probs": probs, "display": denormalize(shown, _model.cfg)}


@st.cache_data(**RESULTS)
def shuffled(_model: VisionTransformer, model_id: str, _prep: Prepared, image_key: str, seed: int) -> dict:
    """The prediction on shuffled patches: positions follow the content, stay with the slot, or are absent."""
    with torch.no_grad():
        kept, perm = A.shuffle_patches(_model, _prep.x, seed=seed, keep_positions=True)
        moved, _ = A.shuffle_patches(_model, _prep.x, perm=perm, keep_positions=False)
        none_orig, _ = A.shuffle_patches(_model, _prep.x, perm=torch.arange(perm.numel()), use_pos_embed=False)
        none_shuf, _ = A.shuffle_patches(_model, _prep.x, perm=perm, use_pos_embed=False)
        image = A.shuffle_image(_prep.x, perm, _model.patch_size)
    return {
        "perm": perm.numpy(),
        "kept": kept.softmax(-1)[0].numpy(),
        "moved": moved.softmax(-1)[0].numpy(),
        "no_pos": none_orig.softmax(-1)[0].numpy(),
        "no_pos_shuffled": none_shuf.softmax(-1)[0].numpy(),
        "no_pos_max_diff": float((none_orig - none_shuf).abs().max()),
        "display": denormalize(image, _model.cfg),
    }


@st.cache_resource(max_entries=8, ttl=TTL, show_spinner=False)
def patch_animation(_prep: Prepared, model_id: str, image_key: str) -> go.Figure:
    """The patches-to-sequence animation (one trace per patch, and frames: slow to build, so
    built once per model and image; the figure is shared read-only, st.plotly_chart copies it)."""
    t = _prep.trace
    return vp.patch_animation_figure(_prep.display, t.grid, t.patch_size)


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) image in [0, 1] or uint8 as PNG bytes (for st.image / downloads)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()
