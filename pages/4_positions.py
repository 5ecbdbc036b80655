"""Position embeddings: the similarity tiles (ViT Figure 7 centre) and the shuffle experiment."""

import numpy as np
import streamlit as st
import torch

import vit_plots as vp
from ui import compute
from ui.page import chart, clickable_chart, header, needs_head, prediction_line
from ui.session import current
from ui.state import kept
from vit_core.analysis.emergence import position_structure_score

cur = current()
(gh, gw), n, D = cur.grid, cur.num_patches, cur.cfg.embed_dim
header(
    "Step 3: tell each token where it came from",
    "Attention treats its input as a **set**: shuffle the tokens and every output is the same, just shuffled. "
    f"So before the encoder the ViT adds a learned **position embedding**, one {D}-dimensional vector per "
    "patch position, to each token, and prepends the **[CLS]** token that will collect the answer. Nobody tells "
    "the model that positions form a 2-D grid: it has to learn that from data. The tiles below show whether this "
    "model did.",
)
prediction_line(cur)
st.latex(
    r"z_0 = [\,x_\text{class};\; x_p^1E;\;\dots;\;x_p^{"
    + str(n)
    + r"}E\,] + E_\text{pos},\qquad E_\text{pos}\in\mathbb{R}^{"
    + str(cur.num_tokens)
    + r"\times"
    + str(D)
    + "}"
)

st.subheader("Which positions look alike")
st.markdown(
    f"Tile (i, j) shows the **cosine similarity** between the position embedding of patch (i, j) and those of "
    f"all {n} positions. In a trained ViT each tile is bright near its own place and the row and column "
    "structure of the image shows up. Click a tile to see it large."
)
st.latex(
    r"S_{ab} = \frac{E_\text{pos}^a\cdot E_\text{pos}^b}{\lVert E_\text{pos}^a\rVert\,\lVert E_\text{pos}^b\rVert}"
)
pos_type = getattr(cur.cfg, "pos_embed_type", "learned")
if pos_type == "sincos":
    st.info(
        "This model's position embeddings are not learned: they are a fixed 2-D sine-cosine function of the grid "
        "(as in SimpleViT), so the tiles show that formula, not something the model learnt."
    )
elif pos_type == "none":
    st.info("This model has no position embeddings at all: it cannot tell where a patch came from.")
kept("pos_patch", (gh // 2) * gw + gw // 2, range(n), url="patch", describe=lambda v: f"patch {v}")


def _pick(p: int) -> None:
    st.session_state["pos_patch"] = p


sim = compute.position_similarity(cur)
c1, c2 = st.columns([3, 2])
with c1:
    clickable_chart(
        vp.similarity_tiles_figure(sim, selected=st.session_state["pos_patch"], height=560 if n > 100 else 480),
        key="pos_tiles",
        on_patch=_pick,
    )
with c2:
    p = st.number_input("Patch", 0, n - 1, key="pos_patch")
    if pos_type != "none" and n > 1:
        score = position_structure_score(torch.as_tensor(np.asarray(sim, dtype=np.float64)).reshape(n, n), (gh, gw))
        formed = "the grid structure has formed" if score > 0.2 else "no clear grid structure (yet)"
        untrained = " This model is untrained: its position embeddings are random." if cur.loaded.untrained else ""
        st.caption(
            f"Measured on this model: neighbouring positions are {score:+.2f} more similar than the average pair "
            f"(0 for random embeddings; the bundled CIFAR-10 model scores +0.75): {formed}.{untrained}"
        )
    r, c = divmod(int(p), gw)
    st.markdown(f"**Patch {p}** (row {r}, column {c}) against every position:")
    chart(vp.similarity_map_figure(sim[r, c], int(p), height=380), key="pos_map")

st.subheader("Shuffle the patches")
st.markdown(
    "Cut the image into patches, shuffle them, and ask the model again. Three ways to do it show what the "
    "position embeddings do:\n"
    "- **positions follow the content**: each patch keeps its own position vector and only its place in the "
    "sequence changes. Attention does not care about order, so the prediction is *identical*.\n"
    "- **shuffled image**: the shuffled picture is fed as a new image; each slot gets the position of the slot. "
    "The model sees scrambled content at the wrong places.\n"
    "- **no position embeddings at all**: the model cannot tell any arrangement apart: original and shuffled "
    "give the same output (it was not trained this way, so the prediction itself may be off)."
)
c1, c2 = st.columns([1, 4])
kept("shuffle_seed", 0, range(10_001))
seed = c1.number_input("Shuffle seed", 0, 10_000, key="shuffle_seed")
res = compute.shuffled(cur, int(seed))
with c2:
    i1, i2 = st.columns(2)
    with i1:
        chart(vp.image_figure(cur.prep.display, height=260, title="original"), key="shuffle_orig")
    with i2:
        chart(vp.image_figure(res["display"], height=260, title=f"shuffled (seed {seed})"), key="shuffle_img")
if not needs_head(cur, "Comparing predictions"):
    st.stop()
runs = {
    "original": cur.prep.probs,
    "shuffled, positions follow content": res["kept"],
    "shuffled image": res["moved"],
    "no positions (original = shuffled)": res["no_pos"],
}
top = list(vp.top_k(cur.prep.probs, min(5, len(cur.class_names))))
chart(vp.compare_figure(runs, cur.class_names, top), key="shuffle_compare")
same_kept = float(np.abs(res["kept"] - cur.prep.probs).max())
st.caption(
    f"Largest change in any class probability when positions follow the content: {same_kept:.1e}. "
    f"Without position embeddings, original vs shuffled logits differ by at most {res['no_pos_max_diff']:.1e}: "
    "permutation invariance, to float rounding."
)
