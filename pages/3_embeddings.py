"""Embeddings: the patch projection (Conv2d == flatten + Linear), its filters, tokens through the layers."""

import numpy as np
import streamlit as st

import vit_plots as vp
from ui import compute
from ui.page import chart, header, prediction_line
from ui.session import current
from ui.state import kept

cur = current()
(gh, gw), P, C, D = cur.grid, cur.patch_size, cur.cfg.in_chans, cur.cfg.embed_dim
n, L = cur.num_patches, cur.num_layers
header(
    "Step 2: turn every patch into a vector",
    f"Each flattened patch ({C * P * P} numbers) is multiplied by one learned matrix **E** ({C * P * P} x {D}) "
    f"plus a bias, giving a **{D}-dimensional token**. The same E is used for every patch, so this is exactly a "
    f"convolution with a {P}x{P} kernel and stride {P}: every one of the {D} output channels is a {P}x{P} "
    f"filter slid over the image without overlap. Implementations (timm, this app) write it as a `Conv2d`.",
)
prediction_line(cur)
if getattr(cur.cfg, "patch_norm", False):
    st.latex(
        r"\text{token}_i = \mathrm{LN}_D\big(\mathrm{LN}_{"
        + str(C * P * P)
        + r"}(x_p^i)\,E + b\big),\qquad E \in \mathbb{R}^{"
        + str(C * P * P)
        + r"\times"
        + str(D)
        + r"}"
    )
    st.caption(
        "This model normalises each flattened patch before the projection and each token after it "
        "(vit-pytorch's patch embedding): the filters below act on normalised pixels, and the comparison "
        "is made on the normalised patches, before the token norm."
    )
else:
    st.latex(r"\text{token}_i = x_p^i\,E + b,\qquad E \in \mathbb{R}^{" + str(C * P * P) + r"\times" + str(D) + r"}")

st.subheader("Conv2d and flatten + Linear are the same map")
cl = compute.conv_vs_linear(cur)
c1, c2 = st.columns([3, 2])
with c1:
    chart(vp.conv_linear_figure(cl["conv"], cl["linear"]), key="conv_linear")
with c2:
    st.markdown(
        f"Left: every value of the {n} x {D} embedding computed both ways. The points sit on the diagonal; "
        f"the largest difference is **{cl['max_abs_diff']:.1e}**, float rounding. The first values of patch 0:"
    )
    st.dataframe(
        {
            "dimension": list(range(5)),
            "Conv2d": [f"{v:.6f}" for v in cl["conv"][0, :5]],
            "flatten + Linear": [f"{v:.6f}" for v in cl["linear"][0, :5]],
            "difference": [f"{v:.1e}" for v in (cl["conv"][0, :5] - cl["linear"][0, :5])],
        },
        hide_index=True,
    )
    st.caption("The Linear's weight is the Conv2d's weight reshaped from (D, C, P, P) to (D, C·P·P).")

st.subheader("What the projection looks for: its filters")


@st.fragment  # the view switch reruns this section alone
def filters_view() -> None:
    f = compute.filters(cur)
    VIEWS = ["principal components (paper, Figure 7 left)", "raw filters"]
    kept("filters_view", VIEWS[0], VIEWS)
    view = st.radio(
        "Show",
        VIEWS,
        horizontal=True,
        key="filters_view",
    )
    if view.startswith("principal"):
        k = f["pca"].shape[0]
        ratio = f["ratio"]
        st.markdown(
            f"The {D} filters are {D} points in a {C * P * P}-dimensional space. Their top **{k} principal components**, "
            f"each reshaped to a {P}x{P} colour patch and stretched to [0, 1], show the basis the model uses to "
            f"describe a patch: in trained ViTs they look like smooth colour and edge patterns (Gabor-like). Together they "
            f"explain {ratio.sum() * 100:.0f}% of the filters' variance."
        )
        labels = [f"component {i + 1}: {r * 100:.1f}% of the variance" for i, r in enumerate(ratio)]
        chart(vp.filters_figure(f["pca"], labels, cols=14), key="filters_pca")
    else:
        raw = f["raw"]
        st.markdown(
            ("All" if len(raw) <= 196 else "The first 196 of the")
            + f" {D} filters as they are, each stretched to [0, 1] on its own. This is the weaker view: single filters "
            "are noisy; the principal components (the other view) show the structure."
        )
        chart(vp.filters_figure(raw, [f"filter {i}" for i in range(len(raw))], cols=14), key="filters_raw")


filters_view()

st.subheader("The tokens on their way through the layers")
st.markdown(
    f"After the embedding, every block rewrites the {n} patch tokens. To see {D}-dimensional vectors, take "
    "their top 3 principal components as red, green and blue. Patches with similar tokens get similar colours."
)
tv = compute.token_views(cur)
labels = ["embedding"] + [f"block {i}" for i in range(1, L + 1)]
chart(vp.token_pca_figure(tv["rgb"], labels, cols=min(7, L + 1)), key="token_pca")
r2 = tv["from_colour"]
st.caption(
    "The components are computed **at each depth separately** (over this image's patches), so red at one depth "
    "and red at the next are different directions. PCA leaves each component's sign open; here it is flipped to "
    "agree with the same component one depth before, so colours do not swap for no reason (components can still "
    f"change order). How much the colours still follow the pixels: a patch's mean colour explains "
    f"{r2[0] * 100:.0f}% of the embedding's colours and {r2[-1] * 100:.0f}% of block {L}'s "
    "(linear fit, share of variance)."
)
st.markdown(
    "The same tokens as points in their top-2 principal-component plane, coloured by the mean colour of the "
    "patch they came from. Drag the slider to go through the depths; hover a point to see its patch."
)
colours = compute.patch_colours(cur)
chart(vp.token_scatter_figure(tv["xy"], np.clip(colours, 0, 1), labels, cur.grid), key="token_scatter")
