"""Patches: the grid over the image, the patches becoming a sequence, the patch matrix, patch size what-if."""

import streamlit as st

import vit_plots as vp
from ui import compute
from ui.page import chart, clickable_chart, header, prediction_line
from ui.session import current
from ui.state import kept

cur = current()
(gh, gw), P, C = cur.grid, cur.patch_size, cur.cfg.in_chans
H, W = cur.prep.x.shape[-2:]
n = cur.num_patches
header(
    "Step 1: cut the image into patches",
    f"A Transformer works on a **sequence** of vectors. The ViT makes one from an image by cutting it into "
    f"non-overlapping {P}x{P} squares, the **patches**, and reading them in order, row by row, like words in "
    f"a sentence. This {W}x{H} input gives a {gh}x{gw} grid: **{n} patches**. Each patch keeps all its pixels: "
    f"{C} channels x {P} x {P} = **{C * P * P} numbers**.",
)
prediction_line(cur)
st.latex(
    r"N = \frac{H}{P}\cdot\frac{W}{P} = \frac{"
    + str(H)
    + "}{"
    + str(P)
    + r"}\cdot\frac{"
    + str(W)
    + "}{"
    + str(P)
    + "} = "
    + str(n)
)

kept("patch_pick", 0, range(n), url="patch", describe=lambda v: f"patch {v}")


def _pick(p: int) -> None:
    st.session_state["patch_pick"] = p


c1, c2 = st.columns([3, 2])
with c1:
    st.markdown("**The patch grid.** Click a patch to look at its numbers.")
    clickable_chart(
        vp.patch_grid_figure(
            cur.prep.display, cur.grid, P, selected=st.session_state["patch_pick"], height=560 if n > 100 else 420
        ),
        key="patch_grid",
        on_patch=_pick,
    )
with c2:
    pick = st.number_input(
        "Patch", 0, n - 1, key="patch_pick", help="Patch index: row * columns + column, counting from 0."
    )
    r, c = divmod(int(pick), gw)
    st.markdown(
        f"Patch **{pick}** is row {r}, column {c}: pixels {r * P}–{r * P + P - 1} down, {c * P}–{c * P + P - 1} across."
    )
    chart(vp.image_figure(cur.prep.display[r * P : (r + 1) * P, c * P : (c + 1) * P], height=200), key="patch_zoom")
    matrix = compute.patch_matrix(cur)
    vec = matrix[int(pick)]
    st.caption(
        f"flattened, {vec.size} numbers (normalised): "
        + ", ".join(f"{v:.2f}" for v in vec[:12])
        + (" …" if vec.size > 12 else "")
    )

st.subheader("From a grid to a sequence")
st.markdown(
    "Press **Play**: the patches leave the image in reading order and line up. This sequence is all the "
    "model gets. Where a patch came from is no longer visible in the sequence itself; the model is told "
    "later, by the position embeddings (see *Position embeddings*)."
)
chart(compute.patch_animation(cur), key="patch_anim")

st.subheader("The patch matrix")
st.markdown(
    f"Stacking the flattened patches gives a matrix with one row per patch: **{n} x {C * P * P}**. "
    f"Each row lists channel R's {P}x{P} pixels row by row, then G's, then B's (the order the projection expects)."
)
chart(vp.patch_matrix_figure(matrix, C, P), key="patch_matrix")

st.subheader("What if the patches were larger or smaller?")
sizes = [p for p in range(1, min(H, W) + 1) if H % p == 0 and W % p == 0 and (H // p) * (W // p) <= 4096]
kept("patch_size_whatif", P if P in sizes else sizes[-1], sizes)
try_p = st.select_slider("Patch size P", options=sizes, key="patch_size_whatif")
what = vp.patch_size_whatif((H, W), sizes, cur.num_prefix)
i = sizes.index(try_p)
N_try = int(what["tokens"][i])
m1, m2, m3 = st.columns(3)
m1.metric(
    "tokens N (with prefix)",
    f"{N_try:,}",
    delta=f"{N_try - cur.num_tokens:+,} vs this model" if try_p != P else None,
    delta_color="off",
)
m2.metric("attention weights per head and layer (N²)", f"{N_try**2:,}")
m3.metric("numbers per patch (3·P²)", f"{int(what['values_per_patch'][i]):,}")
st.markdown(
    "Halving the patch side gives four times the tokens and **sixteen times** the attention weights: "
    "self-attention compares every token with every other, so its cost grows with N². That is why ViTs use "
    "fairly large patches (16x16 on 224x224 images) and why small patches are expensive."
)
c1, c2 = st.columns([2, 3])
with c1:
    chart(
        vp.patch_grid_figure(
            cur.prep.display, (H // try_p, W // try_p), try_p, numbers=(H // try_p) * (W // try_p) <= 256, height=340
        ),
        key="patch_whatif_grid",
    )
with c2:
    chart(vp.patch_size_figure(what, current=try_p), key="patch_whatif_chart")
