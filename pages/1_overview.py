"""Overview: the five steps of a ViT with the live shapes of the chosen model, and the prediction."""

import streamlit as st

import vit_plots as vp
from ui import compute
from ui.navigation import WHERE_NEXT
from ui.page import chart, header, needs_head, prediction_line
from ui.session import current

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

cfg, (gh, gw), P, k = cur.cfg, cur.grid, cur.patch_size, cur.num_prefix
C, D, L, h = cfg.in_chans, cfg.embed_dim, cur.num_layers, cfg.num_heads
n, N = cur.num_patches, cur.num_tokens
H, W = cur.prep.x.shape[-2:]
params = compute.stage_params(cur)
prefix = "[CLS]" if k == 1 else f"{k} prefix tokens"
stages = [
    vp.Stage("Input", f"{C} x {H} x {W}", "resized, cropped,<br>normalised", "no parameters"),
    vp.Stage(
        "1. Patches", f"{n} x {C * P * P}", f"{gh}x{gw} patches of {C}x{P}x{P},<br>each flattened", "no parameters"
    ),
    vp.Stage(
        "2. Embed", f"{n} x {D}", "the same Linear map<br>on every patch", f"{params['patch_embed']:,} parameters"
    ),
    vp.Stage(
        "3. + CLS, + positions",
        f"{N} x {D}",
        f"prepend {prefix},<br>add position vectors",
        f"{params['tokens']:,} parameters",
    ),
    vp.Stage(
        "4. Encoder", f"{N} x {D}", f"{L} blocks, each:<br>{h}-head attention + MLP", f"{params['blocks']:,} parameters"
    ),
    vp.Stage(
        "5. Head", f"{cfg.num_classes} classes", "LayerNorm + Linear<br>on [CLS]", f"{params['head']:,} parameters"
    ),
]
chart(vp.pipeline_figure(stages, cols=3), key="pipeline")  # two rows: six boxes in one overflow below ~1500 px
st.caption(
    f"{params['total']:,} parameters in all; one encoder block has {params['block']:,}. "
    f"Every block keeps the shape {N} x {D}: attention mixes information between tokens, the MLP works on each token alone."
)

st.latex(
    # one line per equation: a single line overflows the main column below ~1400 px windows
    r"\begin{gathered}z_0 = [\,x_\text{class};\; x_p^1 E;\; \dots;\; x_p^{" + str(n) + r"} E\,] + E_\text{pos},\qquad "
    r"y = \mathrm{Head}(\mathrm{LN}(z_L^0)),\\ "
    r"z'_\ell = z_{\ell-1} + \mathrm{MSA}(\mathrm{LN}(z_{\ell-1})),\qquad z_\ell = z'_\ell + \mathrm{MLP}(\mathrm{LN}(z'_\ell))"
    r"\end{gathered}"
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
