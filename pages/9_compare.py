"""Side by side: two models, two images or two classes on one screen, on shared colour scales."""

import numpy as np
import streamlit as st

import vit_plots as vp
from ui import compute, lab
from ui.images import current_image, image_choice, sample_images
from ui.models import load_model, model_options, pretrained_catalogue, pretrained_is_downloaded
from ui.page import chart, header
from ui.selection import Current
from ui.session import current
from ui.state import kept
from vit_core import CheckpointError
from vit_core.analysis import map_agreement

cur = current()
header(
    "Side by side",
    "Two models on one image, one model on two images, or two classes of one prediction, next to each other. "
    "Each view uses **one colour scale for both sides** (one range, the smallest to the largest value of the "
    "two maps), so the same colour is the same value on the left and on the right.",
)

MODES = {"models": "two models, one image", "images": "one model, two images", "classes": "one prediction, two classes"}
kept("cmp_mode", "models", list(MODES))
mode = st.radio("Compare", list(MODES), key="cmp_mode", format_func=MODES.get, horizontal=True)


def model_menu() -> dict[str, str]:
    """Every model the app can show without a download: the picker's menu and downloaded catalogue entries."""
    opts = dict(model_options())
    for name, label in pretrained_catalogue().items():
        if f"pretrained:{name}" not in opts and pretrained_is_downloaded(name):
            opts[f"pretrained:{name}"] = f"Pretrained: {label}"
    return opts


def image_menu() -> dict[str, object]:
    """Label -> ImageChoice: the bundled samples, and the current upload or photo."""
    now = current_image()
    out: dict[str, object] = {}
    if now.source != "sample":
        out[now.name] = now
    for label, path in sample_images().items():
        out[label] = image_choice(label, path.read_bytes(), "sample") if label != now.name else now
    return out


def side(loaded_key: str | None, image) -> Current | None:
    """A Current for a model key (None: the sidebar's model) and an image; None, with a message, if it fails."""
    try:
        loaded = cur.loaded if loaded_key is None or loaded_key == cur.loaded.key else load_model(loaded_key)
        if loaded.model_id == cur.model_id and image.key == cur.image_key:
            return cur
        return Current(loaded, image, compute.prepare(loaded, image))
    except (CheckpointError, ValueError, RuntimeError) as e:
        st.error(f"That choice cannot be shown: {str(e)[:200]}")
        return None


c1, c2 = st.columns(2)
if mode == "models":
    menu = model_menu()
    others = [k for k in menu if k != cur.loaded.key]
    kept("cmp_model_a", cur.loaded.key if cur.loaded.key in menu else next(iter(menu)), list(menu))
    kept("cmp_model_b", "untrained" if "untrained" in others else (others or list(menu))[0], list(menu))
    a_key = c1.selectbox("Left model", list(menu), key="cmp_model_a", format_func=menu.get)
    b_key = c2.selectbox("Right model", list(menu), key="cmp_model_b", format_func=menu.get)
    st.caption(f"Both on the sidebar's image: {cur.image.name}.")
    left, right = side(a_key, cur.image), side(b_key, cur.image)
elif mode == "images":
    menu = image_menu()
    labels = list(menu)
    second = next((lb for lb in labels if lb != cur.image.name), labels[0])
    kept("cmp_image_a", cur.image.name if cur.image.name in menu else labels[0], labels)
    kept("cmp_image_b", second, labels)
    a_img = c1.selectbox("Left image", labels, key="cmp_image_a")
    b_img = c2.selectbox("Right image", labels, key="cmp_image_b")
    st.caption(f"Both with the sidebar's model: {cur.loaded.label}. Upload an image in the sidebar to add it here.")
    left, right = side(None, menu[a_img]), side(None, menu[b_img])
else:
    left = right = cur
if left is None or right is None:
    st.stop()

fusion, discard, start = lab.rollout_settings(min(left.num_layers, right.num_layers))
if mode == "classes":
    if not cur.has_head:
        st.caption("Two classes need class scores; this model is a backbone without a classifier head.")
        st.stop()
    order = [int(c) for c in vp.top_k(cur.prep.probs, len(cur.class_names))]
    kept("cmp_class_a", order[0], order)
    kept("cmp_class_b", order[min(1, len(order) - 1)], order)

    def cname(c: int) -> str:
        return f"{cur.class_names[c]} ({cur.prep.probs[c] * 100:.1f}%)"

    ta = int(c1.selectbox("Left class", order, key="cmp_class_a", format_func=cname))
    tb = int(c2.selectbox("Right class", order, key="cmp_class_b", format_func=cname))
    targets = (ta, tb)
else:
    targets = (left.predicted if left.has_head else None, right.predicted if right.has_head else None)

for col, c, t in ((c1, left, targets[0]), (c2, right, targets[1])):
    shown = f"  \nClass shown: {c.class_names[t]}" if mode == "classes" else ""
    col.markdown(f"**{c.loaded.label}** · {c.image.name}  \nPrediction: {c.prediction_text()}{shown}")
    if c.loaded.untrained:
        col.caption("Random weights: its maps show the architecture and the image, not anything learned.")

layers = min(left.num_layers, right.num_layers)
kept("cmp_layer", layers, range(1, layers + 1))


def both(title: str, maps: tuple[np.ndarray, np.ndarray], what: str, note: str) -> None:
    """Two maps, each over its own model input, on one shared colour scale."""
    lo, hi = vp.shared_range(list(maps))
    st.markdown(f"**{title}** · shared scale {lo:.3g} to {hi:.3g}")
    cols = st.columns(2)
    for i, (col, c, m) in enumerate(zip(cols, (left, right), maps)):
        with col:
            chart(
                vp.overlay_figure(
                    c.prep.display, m, c.grid, c.patch_size, vmin=lo, vmax=hi, colorbar_title=what,
                    value_name=what, height=340,
                ),
                key=f"cmp_{what}_{i}",
            )  # fmt: skip
    st.caption(note)


if mode == "classes":
    st.caption("Rollout and attention do not depend on the class: with one image and one model both sides match.")
roll = (compute.rollout(left, fusion, discard, start - 1), compute.rollout(right, fusion, discard, start - 1))
both(
    "Attention rollout",
    roll,
    "rollout",
    f"Rollout with the Attention page's settings ({fusion} fusion, discard {discard:.2f}, start layer {start}). "
    + (
        f"The two grids differ ({left.num_patches} and {right.num_patches} patches): the [CLS] row sums to at most 1 "
        "over the patches, so the map with more patches is fainter per patch on the shared scale."
        if left.num_patches != right.num_patches
        else f"Total over the patches: left {roll[0].sum():.3f}, right {roll[1].sum():.3f}."
    ),
)

if targets[0] is not None and targets[1] is not None:
    cm = (compute.class_map(left, targets[0]), compute.class_map(right, targets[1]))
    both(
        "Class-specific map",
        cm,
        "relevance",
        f"Left for '{left.class_names[targets[0]]}', right for '{right.class_names[targets[1]]}' (Chefer et al.). "
        f"Total relevance: left {cm[0].sum():.3g}, right {cm[1].sum():.3g}"
        + (
            f"; rank correlation between the two {map_agreement(cm[0], cm[1]).spearman:.2f}."
            if cm[0].shape == cm[1].shape
            else "."
        ),
    )
else:
    st.caption("The class-specific map needs class scores; one of the two models is a backbone without a head.")

layer = st.slider("Attention: layer", 1, layers, key="cmp_layer")


def cls_attention(c: Current, layer: int) -> np.ndarray:
    k = c.num_prefix
    a = c.attention(layer - 1).mean(0)  # (N, N), mean of the heads
    row = a[0, k:] if k else a[:, :].mean(0)
    return row.reshape(c.grid)


att = (cls_attention(left, layer), cls_attention(right, layer))
both(
    f"Attention of [CLS] in layer {layer}, mean of the heads",
    att,
    "attention",
    f"Where [CLS] looks in layer {layer} of each model. Largest weight: left {att[0].max():.3f}, right "
    f"{att[1].max():.3f}; the rest of each row goes to [CLS] itself and any other prefix token.",
)
