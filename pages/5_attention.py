"""Attention: any layer, head and query; all heads; one head step by step; rollout; class maps; distance; entropy."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import vit_plots as vp
import vit_plots.pictures as vpp
from ui import compute
from ui.page import chart, clickable_map, encoded, header, needs_head, pictures, prediction_line, section
from ui.session import current
from ui.state import kept
from vit_core.analysis import map_agreement

cur = current()
(gh, gw), P, k = cur.grid, cur.patch_size, cur.num_prefix
n, N, L, h = cur.num_patches, cur.num_tokens, cur.num_layers, cur.num_heads
d = cur.cfg.head_dim  # D / h, or the dim_head a student model was built with
labels = vp.token_labels(k, n)
header(
    "Step 4: attention, who looks at whom",
    f"In every encoder block each of the {N} tokens sends a **query**, and every token offers a **key** and a "
    f"**value**. A query's attention is a softmax over its dot products with all keys: a set of weights that sum "
    f"to 1. The token's update is the weighted sum of the values. Each of the {h} **heads** does this with its own "
    f"projections (head width d = {d}), so different heads can look for different things.\n\n$$\n"
    + r"\mathrm{Attention}(Q,K,V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}}\right)V,\qquad A \in \mathbb{R}^{"
    + f"{N}\\times{N}"
    + r"} \text{ per head}"
    + "\n$$",  # the formula in the intro's element (see ui.page.section)
)
prediction_line(cur)

# One "Display" control for every map on this page; each section below reruns alone when its own
# widgets change (st.fragment), so a slider step redraws only that section's figures.
st.session_state.setdefault("attn_display_over", "input")
st.session_state.setdefault("attn_display_opacity", 0.6)
st.session_state.setdefault("attn_display_cmap", "Inferno")
st.session_state.setdefault("attn_display_smooth", True)
ow, oh = cur.prep.original_size
with st.popover("Display of the maps", icon=":material/tune:"):
    st.radio(
        "Draw the maps over",
        ["input", "photo"],
        key="attn_display_over",
        format_func=lambda v: (
            f"the model input ({cur.prep.x.shape[-1]}x{cur.prep.x.shape[-2]})"
            if v == "input"
            else f"the original image ({ow}x{oh}), the crop the model saw mapped back onto it"
        ),
    )
    st.slider("Opacity of the map", 0.0, 1.0, step=0.05, key="attn_display_opacity")
    st.selectbox("Colour map", vp.COLORSCALES, key="attn_display_cmap")
    st.toggle(
        "Smooth the map",
        key="attn_display_smooth",
        help="On: values between patch centres blended (bilinear). Off: the raw grid, one flat block per patch.",
    )
on_photo = st.session_state["attn_display_over"] == "photo"
look = {
    "alpha": float(st.session_state["attn_display_opacity"]),
    "colorscale": st.session_state["attn_display_cmap"],
    "smooth": bool(st.session_state["attn_display_smooth"]),
}
photo = compute.original_for_maps(cur) if on_photo else None
if on_photo and photo["box"] != (0.0, 0.0, float(ow), float(oh)):
    st.caption("On the original image the dashed box is the part the model saw; outside it the image is dimmed.")


def map_over_image(heat: np.ndarray, **kw) -> go.Figure:
    """A patch map drawn as the Display control says: over the model input or the original photo."""
    if on_photo:
        return vp.map_figure(photo["image"], heat, cur.grid, photo["box"], **look, **kw)
    return vp.overlay_figure(cur.prep.display, heat, cur.grid, P, **look, **kw)


def _rows(d: int) -> int:
    """Rows for a head output of d numbers drawn as a strip: about 4 cells wide to 1 high."""
    r = max(1, int(round(np.sqrt(d / 4))))
    while d % r:
        r -= 1
    return r


def _query_patch(p: int) -> None:
    st.session_state["attn_query"] = k + p


@st.fragment
def query_view() -> None:
    """Layer, head, query: the map, all heads, one head step by step.

    Everything is computed before the first element is drawn, then the elements are drawn in one go:
    they reach the browser within 5-10 ms of each other instead of over ~40 ms (websocket
    timestamps). The time to idle did not change measurably (benchmarks/bench_browser.py); the
    drawing code is simply a plain list of elements this way."""
    layer = kept("attn_layer", L, range(1, L + 1), url="layer", describe=lambda v: f"layer {v}")
    head = kept(
        "attn_head",
        "mean",
        ["mean", *range(h)],
        url="head",
        describe=lambda v: "the mean of all heads" if v == "mean" else f"head {v}",
    )
    query = kept("attn_query", 0, range(N), url="query", describe=lambda v: f"query {labels[v]}")

    A = cur.attention(layer - 1)  # (heads, N, N)
    row = A.mean(0)[query] if head == "mean" else A[head, query]
    qpatch = query - k if query >= k else None
    where = (
        "the class token [CLS]"
        if query == 0 and k
        else (f"patch {qpatch} (row {qpatch // gw}, column {qpatch % gw})" if qpatch is not None else labels[query])
    )
    own = (
        f" Weight on [CLS] itself: {row[0]:.3f}; on all {n} patches: {row[k:].sum():.3f} (a row sums to 1)."
        if k
        else ""
    )
    view = vpp.picker_view(
        photo["image"] if on_photo else cur.prep.display,
        row[k:].reshape(gh, gw),
        cur.grid,
        photo["box"] if on_photo else None,
        vmin=0,
        value_name="attention",
        selected=qpatch,
        width=720 if on_photo else 420,
        max_height=560,
        **look,
    )
    tiles, peaks = vpp.head_pictures(A[:, query, k:].reshape(h, gh, gw), look["colorscale"], 150, qpatch)
    step_head = 0 if head == "mean" else int(head)
    steps = compute.head_steps(cur, layer - 1, step_head, query)
    sc, wt, out = steps["scores"], steps["weights"], steps["output"]
    lim = float(np.abs(sc[k:]).max()) or 1.0
    step_pictures = [
        vpp.grid_picture(sc[k:].reshape(gh, gw), "RdBu_r", -lim, lim, 180),
        vpp.grid_picture(wt[k:].reshape(gh, gw), "Inferno", 0.0, float(wt[k:].max()) or 1.0, 180),
        vpp.vector_picture(out, "RdBu_r", 360, rows=_rows(out.size)),
    ]
    # encoded here, not while drawing: the drawing below then takes a few milliseconds
    tiles, step_pictures = encoded(tiles), encoded(step_pictures)
    top = np.argsort(-wt, kind="stable")[:5]
    s_max = float(sc.max())
    denom = float(np.exp(sc - s_max).sum())
    j0 = int(top[0])
    prefix = ", ".join(("CLS" if j == 0 else f"token {j}") + f" {sc[j]:.2f} → {wt[j]:.3f}" for j in range(k))
    # one markdown element (the table, the worked softmax) rather than four: each element is a message
    # the browser handles on every slider step
    table = (
        (f"Prefix keys, score → weight: {prefix}.\n\n" if k else "")
        + "The five keys with the largest weights:\n\n"
        + "| key token | score q·k/√d | exp(score − max) | weight |\n|---|---:|---:|---:|\n"
        + "\n".join(f"| {labels[j]} | {sc[j]:.3f} | {np.exp(sc[j] - s_max):.4f} | {wt[j]:.4f} |" for j in top)
        + "\n\n$$\n"
        + r"\begin{gathered}w_{\text{"
        + labels[j0]
        + r"}} = \frac{e^{"
        + f"{sc[j0]:.2f}"
        + r"}}{\sum_j e^{s_j}} = \frac{"
        + f"{np.exp(sc[j0] - s_max):.4f}"
        + "}{"
        + f"{denom:.4f}"
        + "} = "
        + f"{wt[j0]:.4f}"
        + r"\\ \text{(scores shifted by their max }"
        + f"{s_max:.2f}"
        + r"\text{ for stability)}\end{gathered}"
        + "\n$$"
    )

    c1, c2, c3 = st.columns([2, 1, 1])
    c1.slider("Layer", 1, L, key="attn_layer")
    c2.selectbox(
        "Head",
        ["mean", *range(h)],
        key="attn_head",
        format_func=lambda x: "mean of all heads" if x == "mean" else f"head {x}",
    )
    c3.selectbox(
        "Query token",
        list(range(N)),
        key="attn_query",
        format_func=lambda i: labels[i],
        help="Or click a patch on the image.",
    )
    # a photo gets the full width (a wide one would be tiny in half a column), the heads go below it
    c1, c2 = (st.container(), st.container()) if on_photo else st.columns([1, 1])
    with c1:
        # one markdown element, not three: each element is a message the browser handles on every step
        st.markdown(
            f"**Query: {labels[query]}** · layer {layer} · {'mean of all heads' if head == 'mean' else f'head {head}'}"
            f"\n\nWhere {where} looks. Click any patch to make it the query.{own}"
        )
        clickable_map(view, key="attn_image", on_patch=_query_patch)
    with c2:
        st.markdown(
            f"All {h} heads of layer {layer} for the same query, in the same colours, each picture scaled to its "
            "own head's maximum (written under it); the query patch is outlined."
        )
        pictures(tiles, [f"head {i} · max {peaks[i]:.3f}" for i in range(h)], 150 if h <= 4 else 110, key="attn_heads")

    section(  # a lesson's focus heading: an h3 of the page
        "One head, step by step",
        f"Head {step_head} of layer {layer}{' (pick a head above; the mean has no single computation)' if head == 'mean' else ''}, "
        f"query {labels[query]}: ① the query vector q (length {d}) is compared with every key, ② the scores go through a "
        f"softmax, ③ the values are summed with those weights.",
    )
    pictures(
        step_pictures,
        [
            f"① scores q·kⱼ/√d over the patch keys: blue {-lim:.2f}, white 0, red {lim:.2f}",
            f"② softmax → weights: black 0, yellow {float(wt[k:].max()):.3f}",
            f"③ Σⱼ weightⱼ vⱼ, the head's output ({out.size} numbers): blue {-float(np.abs(out).max()):.2f}, "
            f"red {float(np.abs(out).max()):.2f}",
        ],
        230,
        key="attn_steps",
    )
    st.markdown(table)


query_view()

section(
    "Attention rollout: follow attention through all layers",
    "One layer's attention says little about the input: after the first block every token already mixes "
    "information from others. **Rollout** (Abnar & Zuidema 2020) multiplies the layers' attention, adding the "
    "residual connection as an identity, to estimate how much each input patch flows into [CLS] at the end "
    "(the ViT paper's Figure 6). Discarding the weakest weights per row sharpens the map; starting later skips "
    "the first layers.",
    r"\hat A_\ell = \mathrm{norm}\!\left(\tfrac12\,\mathrm{fuse}_\text{heads}(A_\ell) + \tfrac12 I\right),\quad J = \hat A_{L}\cdots\hat A_{\text{start}},\quad \text{map} = J_{\text{CLS},\,\text{patches}}",
)


@st.fragment
def rollout_view() -> None:
    kept("roll_fusion", "mean", ["mean", "max", "min"])
    kept("roll_discard", 0.0)
    kept("roll_start", 1, range(1, L + 1))
    c1, c2 = st.columns([1, 2])
    with c1:
        fusion = st.radio("Head fusion", ["mean", "max", "min"], horizontal=True, key="roll_fusion")
        discard = st.slider(
            "Discard ratio",
            0.0,
            0.95,
            step=0.05,
            key="roll_discard",
            help="Share of the weakest patch weights set to 0 in each row, per layer.",
        )
        start = st.slider("Start layer", 1, L, key="roll_start")
    with c2:
        roll = compute.rollout(cur, fusion, float(discard), int(start) - 1)
        chart(
            map_over_image(roll, colorbar_title="rollout", value_name="rollout", vmin=0, height=400),
            key="roll_map",
        )


rollout_view()

section(
    "Class-specific map: what speaks for one class",
    "Rollout ignores which class you ask about. **Chefer et al. (2021)** weight each layer's attention by its "
    "gradient with respect to one class's logit, keep the positive part, and accumulate across layers. Choose "
    "a class to see which patches raise *its* score.",
    r"\bar A_\ell = \mathbb{E}_\text{heads}\!\left[\left(\nabla_{A_\ell} y_c \odot A_\ell\right)^+\right],\qquad R \leftarrow R + \bar A_\ell R,\quad R_0 = I",
)


@st.fragment
def class_view() -> None:
    """Two classes' maps side by side, on one colour scale."""
    classes = list(range(len(cur.class_names)))
    order = list(vp.top_k(cur.prep.probs, len(classes)))
    kept("chefer_class", order[0], classes)
    st.session_state.setdefault("chefer_class_b", order[min(1, len(order) - 1)])
    if st.session_state["chefer_class_b"] not in classes:
        st.session_state["chefer_class_b"] = order[min(1, len(order) - 1)]

    def name(c: int) -> str:
        return f"{cur.class_names[c]} ({cur.prep.probs[c] * 100:.1f}%)"

    c1, c2 = st.columns(2)
    target = c1.selectbox(
        "Class", order, key="chefer_class", format_func=name, help="Sorted by the model's probability."
    )
    other = c2.selectbox(
        "Compare with", order, key="chefer_class_b", format_func=name, help="Its map is drawn next to the first."
    )
    maps = [compute.class_map(cur, int(c)) for c in (target, other)]
    fig = vp.compare_maps_figure(
        photo["image"] if on_photo else cur.prep.display,
        maps,
        [cur.class_names[int(c)] for c in (target, other)],
        cur.grid,
        photo["box"] if on_photo else None,
        colorbar_title="relevance",
        value_name="relevance",
        **look,
    )
    lo, hi = fig.layout.meta["vmin"], fig.layout.meta["vmax"]
    agree = map_agreement(maps[0], maps[1])
    total = [float(m.sum()) for m in maps]
    chart(fig, key="chefer_map")
    st.caption(
        f"Both maps share **one colour scale** ({lo:.3g} to {hi:.3g}, one colour bar): the same colour is the same "
        f"relevance in both, so a fainter map speaks less for its class. Total relevance: "
        f"{cur.class_names[int(target)]} {total[0]:.3g}, {cur.class_names[int(other)]} {total[1]:.3g}. "
        + (
            "The two maps are identical: the same class twice."
            if int(target) == int(other)
            else f"Their top {agree.top_k} patches overlap in {agree.top_overlap * 100:.0f}% "
            + (f"(rank correlation {agree.spearman:.2f})." if agree.spearman == agree.spearman else ".")
        )
    )


if needs_head(cur, "A class-specific map"):
    class_view()

section(
    "The last layer's heads, DINO style",
    "Each head's attention from [CLS] in the last layer, as in the DINO paper (Caron et al. 2021): keep, per "
    "head, the fewest patches that together hold a share of its attention, and hide the rest. In well-trained "
    "models different heads pick out different objects or parts.",
)


@st.fragment
def dino_view() -> None:
    kept("dino_mass", 0.6)
    c1, c2 = st.columns([1, 2])
    mass = c1.slider("Keep this share of each head's attention", 0.1, 1.0, step=0.05, key="dino_mass")
    with c2:
        heads = compute.last_heads(cur, float(mass))
        if on_photo:
            fig = vp.heads_on_image_figure(photo["image"], heads, photo["box"], **look)
        else:
            fig = vp.heads_figure(heads, colorscale=look["colorscale"])
        chart(fig, key="dino_heads")


dino_view()

section(
    "How far does each head look?",
    "**Mean attention distance**: for each head, the average distance in pixels between a query patch and the "
    "patches it attends to, weighted by attention (the ViT paper's Figure 7 right; the paper averages over 128 "
    "images). A CNN's early layers can only look locally; a ViT's early layers can already mix heads that look "
    "near and far.",
    r"\begin{gathered}\text{MAD} = \frac1n\sum_{q} \sum_{t} \tilde A_{qt}\,\lVert \mathrm{pos}_q - \mathrm{pos}_t \rVert \cdot P,"
    r"\\ \tilde A = A \text{ over patch keys, rows renormalised}\end{gathered}",
)


@st.fragment
def distance_view() -> None:
    kept("mad_samples", False)
    n_samples = len(compute.sample_files())
    over_samples = st.toggle(f"Average over the {n_samples} sample images instead of this image", key="mad_samples")
    hm = compute.head_maps(cur)
    distance = compute.sample_mean_distance(cur) if over_samples else hm["distance"]
    chart(vp.mean_distance_figure(distance, image_extent=float(max(cur.prep.x.shape[-2:]))), key="attn_distance")
    first, last = distance[0], distance[-1]
    st.caption(
        f"This model{' over the samples' if over_samples else ''}: the heads of layer 1 look {first.min():.1f} to "
        f"{first.max():.1f} px far on average, those of layer {L} {last.min():.1f} to {last.max():.1f} px."
    )


distance_view()
hm = compute.head_maps(cur)
# one element for the text and its formula (see ui.page.section)
st.markdown(
    "**Entropy** of each head's attention, averaged over queries: 0 means each query looks at one token, log N "
    "(uniform) means it looks everywhere equally.\n\n$$\n"
    + r"H = -\frac1N\sum_q\sum_t A_{qt}\log A_{qt},\qquad \log N = "
    + f"{np.log(N):.2f}\n$$"
)
chart(vp.entropy_figure(hm["entropy"], max_entropy=float(np.log(N))), key="attn_entropy")
