"""Prediction: top-k, the logit lens across depth, and occluding patches by clicking them."""

import numpy as np
import streamlit as st

import vit_plots as vp
from ui import compute
from ui.page import chart, clickable_chart, header, needs_head, prediction_line
from ui.predictions import unusualness, unusualness_text
from ui.session import current
from ui.state import kept, last

OCCLUDED = "occluded"  # the hidden patches (indices) of ...
OCCLUDED_FOR = "occluded_for"  # ... this (model id, image hash)

cur = current()
(gh, gw), P, n, L = cur.grid, cur.patch_size, cur.num_patches, cur.num_layers
names = cur.class_names
header(
    "Step 5: the answer",
    "After the last block, the **[CLS]** token goes through a LayerNorm and one Linear layer, the **head**, "
    f"which gives one score (logit) per class; a softmax turns the {len(names)} scores into probabilities.",
)
prediction_line(cur)
if not needs_head(cur, "This page"):
    st.stop()
st.latex(
    r"p(c\mid x) = \frac{e^{y_c}}{\sum_{c'} e^{y_{c'}}},\qquad y = W_\text{head}\,\mathrm{LN}(z_L^{\text{CLS}}) + b"
)

kept("pred_topk", min(5, len(names)), range(1, min(20, len(names)) + 1))
c1, c2 = st.columns([1, 3])
top_n = c1.slider("Show top", 1, min(20, len(names)), key="pred_topk")
with c2:
    chart(vp.topk_figure(cur.prep.probs, names, k=int(top_n)), key="pred_topk_chart")
reading = unusualness(cur)
if reading is not None:
    st.markdown(unusualness_text(reading))
else:
    st.caption(
        "How unusual this image is for the model (its top probability against the model's own test images) is "
        "measured for the bundled model only."
    )

st.subheader("When does the answer form? The logit lens")
st.markdown(
    "Apply the final LayerNorm and the head to the [CLS] token **after every block**, not only the last. "
    "Early read-outs are usually vague; the curve shows at which depth the model commits to its answer."
)
lens = compute.logit_lens(cur)
top5 = list(vp.top_k(cur.prep.probs, min(5, len(names))))
chart(vp.logit_lens_figure(lens, names, top5), key="pred_lens")

st.subheader("Hide patches and watch the prediction")
st.markdown(
    "Click patches on the image to hide them (click again to bring one back). **Mean colour** paints a patch "
    "with the image's average colour; **zero** paints it with the dataset's mean colour (0 after normalising); "
    "**drop** removes its token from the sequence altogether, which a ViT, unlike a CNN, can do."
)
# Hidden patches belong to one (model, image): another model or image starts with none hidden.
if st.session_state.get(OCCLUDED_FOR) != cur.cache_key:
    st.session_state[OCCLUDED] = []
    st.session_state[OCCLUDED_FOR] = cur.cache_key
occ = [p for p in st.session_state[OCCLUDED] if 0 <= p < n]


def _toggle(p: int) -> None:
    cur_list = list(st.session_state.get(OCCLUDED, []))
    st.session_state[OCCLUDED] = [q for q in cur_list if q != p] if p in cur_list else [*cur_list, p]


def _set(patches: list[int]) -> None:
    st.session_state[OCCLUDED] = patches


c = cur.predicted
# the rollout the user set up on the Attention page (its defaults if they have not been there)
fusion = str(last("roll_fusion", "mean"))
discard = float(last("roll_discard", 0.0))
start = int(last("roll_start", 1))
start = start if 1 <= start <= L else 1
roll_settings = f"{fusion} head fusion, discard ratio {discard:.2f}, start layer {start}"
RANKINGS = {
    "rollout": f"attention rollout ({roll_settings})",
    "class": f"class-specific map of '{names[c]}'",
}
kept("occ_mode", "mean", ["mean", "zero", "drop"])
kept("occ_rank", "rollout", list(RANKINGS))
c1, c2 = st.columns([3, 1])
mode = c1.radio(
    "Hide by",
    ["mean", "zero", "drop"],
    horizontal=True,
    key="occ_mode",
    format_func={"mean": "mean colour", "zero": "zero", "drop": "drop the token"}.get,
)
c2.button("Clear", on_click=_set, args=([],), key="occ_clear", width="stretch")
c1, c2 = st.columns([3, 1])
rank = c1.radio(
    "Rank patches by",
    list(RANKINGS),
    key="occ_rank",
    format_func=RANKINGS.get,
    help="Rollout uses the settings chosen on the Attention page (head fusion, discard ratio, start layer); "
    "the class-specific map (Chefer et al.) ranks the patches that raise the predicted class's score.",
)
ranking = compute.rollout(cur, fusion, discard, start - 1) if rank == "rollout" else compute.class_map(cur, c)
most = [int(i) for i in np.argsort(-ranking.reshape(-1), kind="stable")[: max(1, n // 10)]]
c2.button(
    "Hide the top 10%",
    on_click=_set,
    args=(most,),
    key="occ_top",
    width="stretch",
    help=f"Hides the {len(most)} patches ranked highest by the {RANKINGS[rank]}.",
)
c1.caption(
    f"The top 10% by {RANKINGS[rank]}"
    + (": change the rollout settings on the Attention page." if rank == "rollout" else ".")
)

res = compute.occluded(cur, tuple(sorted(occ)), mode)
c1, c2 = st.columns([1, 1])
with c1:
    clickable_chart(
        vp.patch_grid_figure(res["display"], cur.grid, P, numbers=False, marked=occ, height=520 if n > 100 else 420),
        key="occ_image",
        on_patch=_toggle,
    )
    st.caption(
        f"{len(occ)} of {n} patches hidden"
        + (f": {', '.join(map(str, sorted(occ)[:20]))}{' …' if len(occ) > 20 else ''}" if occ else ". Click a patch.")
    )
with c2:
    chart(
        vp.compare_figure({"original": cur.prep.probs, "with patches hidden": res["probs"]}, names, top5),
        key="occ_compare",
    )
    new = int(res["probs"].argmax())
    st.metric(
        f"probability of '{names[c]}'",
        f"{res['probs'][c] * 100:.1f}%",
        delta=f"{(res['probs'][c] - cur.prep.probs[c]) * 100:+.1f} points" if occ else None,
    )
    if occ:
        st.markdown(f"Prediction with the patches hidden: **{names[new]}** ({res['probs'][new] * 100:.1f}%)")
    else:
        st.markdown("Nothing is hidden yet: the prediction is the model's own.")
