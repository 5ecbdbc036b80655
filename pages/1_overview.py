"""Overview: the five steps of a ViT with the live shapes of the chosen model, and the prediction."""

import streamlit as st

import vit_plots as vp
from ui import compute
from ui.navigation import WHERE_NEXT
from ui.page import chart, header, needs_head, prediction_line
from ui.session import current
from vit_core.formulas import architecture

cur = current()
header(
    "How a Vision Transformer sees an image",
    "A Vision Transformer (ViT, Dosovitskiy et al. 2020) reads an image the way a language Transformer "
    "reads a sentence: it cuts the image into square **patches**, turns each patch into a vector (a "
    "**token**), lets every token look at every other token through **self-attention** for a number of "
    "layers, and reads the answer off one extra token, **[CLS]**. There is no convolution stack: apart "
    "from the first projection, the network never sees pixels as a grid again. Below are the five steps "
    "with the real tensor shapes of the model in the sidebar.",
)
prediction_line(cur)

cfg, N, D, C = cur.cfg, cur.num_tokens, cur.cfg.embed_dim, cur.cfg.in_chans
H, W = cur.prep.x.shape[-2:]
params = compute.stage_params(cur)
arch = architecture(cfg, cur.grid, (H, W))  # boxes and formulas as this model computes them
counts = [None, None, "patch_embed", "tokens", "blocks", "head"]
stages = [
    vp.Stage(s.title, s.shape, s.detail, f"{params[c]:,} parameters" if c and params[c] else "no parameters")
    for s, c in zip(arch.stages, counts)
]
chart(vp.pipeline_figure(stages, cols=3), key="pipeline")  # two rows: six boxes in one overflow below ~1500 px
st.caption(
    f"{params['total']:,} parameters in all; one encoder block has {params['block']:,}. "
    f"Every block keeps the shape {N} x {D}: attention mixes information between tokens, the MLP works on each token alone."
)
if arch.notes:
    st.markdown(
        "**Where this model differs from the ViT paper's:** "
        + "; ".join(arch.notes)
        + ". The diagram and the formulas below are written as this model computes them."
    )

st.latex(arch.latex())
st.caption(
    "Inside one block: "
    + " → ".join(f"{what} {shape}" for what, shape in arch.block_shapes)
    + f" (ℓ = 1 … {cur.num_layers}; h = {cfg.num_heads} heads of width d = {cfg.head_dim})."
)

st.subheader("What the model is given: preprocessing")
st.markdown(
    "The model was trained on images of one size, so every picture is first **resized** (shorter side), "
    "**centre-cropped** to that size, scaled to [0, 1] and **normalised** per colour channel with the "
    "training set's mean and standard deviation. The dashed box shows the part of your image the model sees."
)
c1, c2, c3 = st.columns([3, 2, 3])
with c1:  # titles as text above the figures: a plotly title is cut off in a narrow column
    st.markdown(f"**original** {cur.prep.original_size[0]}x{cur.prep.original_size[1]}")
    chart(vp.crop_figure(cur.prep.thumbnail, cur.prep.crop_box), key="crop")
with c2:
    st.markdown(f"**resized + cropped** {W}x{H}")
    chart(vp.image_figure(cur.prep.resized), key="resized")
with c3:
    st.markdown("**normalised** (per channel)")
    st.latex(r"x' = \frac{x/255 - \mu}{\sigma}")
    st.dataframe(
        {
            "channel": ["R", "G", "B"][:C],
            "mean μ": [f"{v:.3f}" for v in cfg.mean[:C]],
            "std σ": [f"{v:.3f}" for v in cfg.std[:C]],
            "x' min": [f"{v:.2f}" for v in cur.prep.x[0].amin((1, 2)).tolist()],
            "x' max": [f"{v:.2f}" for v in cur.prep.x[0].amax((1, 2)).tolist()],
        },
        hide_index=True,
    )
    st.caption(f"interpolation {cfg.interpolation}, crop share {cfg.crop_pct:g}, crop mode {cfg.crop_mode}")

st.subheader("The prediction")
if needs_head(cur, "A prediction"):
    chart(vp.topk_figure(cur.prep.probs, cur.class_names, k=min(5, cfg.num_classes)), key="topk")
st.caption(
    "Softmax of the head's output. The Prediction page shows how this answer forms layer by layer and what happens when you hide patches."
)

st.subheader("Where to next")
cols = st.columns(3)  # two rows of three: six links in one row are cut off below ~1400 px
for i, step in enumerate(WHERE_NEXT, start=1):
    cols[(i - 1) % 3].page_link(step.path, label=f"{i} · {step.step}" if step.step else step.title, icon=step.icon)
