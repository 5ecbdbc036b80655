"""Prediction: top-k, the logit lens across depth, and occluding patches by clicking them."""

import streamlit as st

import vit_plots as vp
from ui import compute
from ui.page import chart, clickable_chart, header, needs_head, prediction_line
from ui.session import current

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

c1, c2 = st.columns([1, 3])
top_n = c1.slider("Show top", 1, min(20, len(names)), min(5, len(names)), key="pred_topk")
with c2:
    chart(vp.topk_figure(cur.prep.probs, names, k=int(top_n)), key="pred_topk_chart")

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
st.session_state.setdefault("occluded", [])
occ = [p for p in st.session_state["occluded"] if 0 <= p < n]


def _toggle(p: int) -> None:
    cur_list = list(st.session_state.get("occluded", []))
    st.session_state["occluded"] = [q for q in cur_list if q != p] if p in cur_list else [*cur_list, p]


def _set(patches: list[int]) -> None:
    st.session_state["occluded"] = patches


c1, c2, c3 = st.columns([2, 1, 1])
mode = c1.radio(
    "Hide by",
    ["mean", "zero", "drop"],
    horizontal=True,
    key="occ_mode",
    format_func={"mean": "mean colour", "zero": "zero", "drop": "drop the token"}.get,
)
c2.button("Clear", on_click=_set, args=([],), key="occ_clear", width="stretch")
roll = compute.rollout(cur, "mean", 0.0, 0)
most = [int(i) for i in roll.reshape(-1).argsort()[::-1][: max(1, n // 10)]]
c3.button("Hide the top 10% by rollout", on_click=_set, args=(most,), key="occ_rollout", width="stretch")

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
    c = cur.predicted
    new = int(res["probs"].argmax())
    st.metric(
        f"probability of '{names[c]}'",
        f"{res['probs'][c] * 100:.1f}%",
        delta=f"{(res['probs'][c] - cur.prep.probs[c]) * 100:+.1f} points",
    )
    st.markdown(f"Prediction with the patches hidden: **{names[new]}** ({res['probs'][new] * 100:.1f}%)")
