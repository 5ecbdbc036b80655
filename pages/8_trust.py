"""Which map to trust: deletion/insertion curves of every map, their agreement, the randomisation
sanity check, head knockout and the per-patch logit lens, on the current image and over test images."""

import numpy as np
import streamlit as st

import vit_plots as vp
import vit_plots.faithfulness as vpf
import vit_plots.pictures as vpp
from ui import compute, lab
from ui.page import chart, clickable_map, header, needs_head, pictures, prediction_line
from ui.session import current
from ui.state import kept
from vit_core.analysis import agreement_matrix

KNOCKED = "lab_knocked"  # the knocked-out heads: flat indices layer * heads + head (the multiselect's value)
KNOCK_NOTE = "_lab_knock_note"

cur = current()
(gh, gw), n, L, H = cur.grid, cur.num_patches, cur.num_layers, cur.num_heads
names = cur.class_names
header(
    "Which map to trust",
    "The app draws several maps of *where the model looked*: raw attention, rollout, the class-specific map, "
    "occlusion and gradients. They often disagree, and none of them is ground truth. This lab **tests** them on "
    "your image: hide the patches a map ranks highest and see how fast the class goes away (deletion), or start "
    "from a blank image and bring them back (insertion). A map that explains the model must beat a random "
    "ranking. Then it checks whether the maps still look the same when the model is destroyed (they should not).",
)
prediction_line(cur)
if not needs_head(cur, "This lab"):
    st.stop()

# ---- inputs: the class, the rollout settings, the step size ----
order = [int(c) for c in vp.top_k(cur.prep.probs, len(names))]
if st.session_state.get("_lab_class_for") != cur.cache_key:  # a new image or model: its own prediction
    st.session_state["_lab_class_for"] = cur.cache_key
    st.session_state.pop("lab_class", None)
    st.session_state.pop(KNOCKED, None)
kept("lab_class", order[0], order)
fusion, discard, start = lab.rollout_settings(L)
s0 = start - 1
ks = sorted({1, 2, 4, 8, lab.default_k(n), max(1, n // 8)})
kept("lab_k", lab.default_k(n), ks)
c1, c2, c3 = st.columns([2, 1, 2])
target = int(
    c1.selectbox(
        "Class to explain",
        order,
        key="lab_class",
        format_func=lambda c: (
            f"{names[c]} ({cur.prep.probs[c] * 100:.1f}%)" + (" · predicted" if c == cur.predicted else "")
        ),
        help="Sorted by the model's probability; the predicted class first.",
    )
)
k = int(
    c2.selectbox(
        "Patches per step",
        ks,
        key="lab_k",
        help=f"Patches hidden (or restored) at each step of a curve. 1 is the finest and the slowest: "
        f"{n + 1} points a curve.",
    )
)
c3.caption(
    f"Rollout as set on the Attention page: **{fusion}** head fusion, discard ratio **{discard:.2f}**, start "
    f"layer **{start}**. Hidden patches are painted with the image's mean colour. Random baseline: "
    f"{lab.RANDOM_SEEDS} random rankings."
)
cname = names[target]

# ---- this image ----
st.subheader("Deletion and insertion on this image")
res = lab.curves(cur, target, fusion, discard, s0, k, lab.RANDOM_SEEDS)
methods = res["names"]
chart(
    vpf.curves_figure(
        res["fractions"],
        dict(zip(methods, res["deletion"])),
        dict(zip(methods, res["insertion"])),
        res["random_deletion"],
        res["random_insertion"],
        y_title=f"probability of '{cname}' (%)",
    ),
    key="lab_curves",
)
areas = res["areas"]
rand_d, rand_i = areas["random"]
spread = res["random_areas"]  # (R, 2)
d_lo, d_hi = float(spread[:, 0].min()), float(spread[:, 0].max())
i_lo, i_hi = float(spread[:, 1].min()), float(spread[:, 1].max())
score = {m: areas[m][1] - areas[m][0] for m in methods}
ranked = sorted(methods, key=lambda m: -score[m])
table = {
    "rank": [str(i) for i in range(1, len(ranked) + 1)] + ["–"],
    "method": ranked + [f"random (mean of {lab.RANDOM_SEEDS})"],
    "deletion area ↓": [f"{areas[m][0]:.3f}" for m in ranked] + [f"{rand_d:.3f} ({d_lo:.3f}–{d_hi:.3f})"],
    "insertion area ↑": [f"{areas[m][1]:.3f}" for m in ranked] + [f"{rand_i:.3f} ({i_lo:.3f}–{i_hi:.3f})"],
    "insertion − deletion": [f"{score[m]:+.3f}" for m in ranked] + [f"{rand_i - rand_d:+.3f}"],
    "beats every random ranking": [
        ("both" if areas[m][0] < d_lo and areas[m][1] > i_hi else "deletion" if areas[m][0] < d_lo else "insertion")
        if (areas[m][0] < d_lo or areas[m][1] > i_hi)
        else "no"
        for m in ranked
    ]
    + [""],
}
st.dataframe(table, hide_index=True, width="stretch")
c2 = st.container()
fastest_del = min(methods, key=lambda m: areas[m][0])
fastest_ins = max(methods, key=lambda m: areas[m][1])
no_better = [m for m in methods if areas[m][0] >= d_lo and areas[m][1] <= i_hi]
p0 = float(res["deletion"][0][0])
lines = [
    f"On this image, **{fastest_del}** removed '{cname}' fastest (deletion area {areas[fastest_del][0]:.3f}; "
    f"the model gave it {p0 * 100:.1f}% with nothing hidden), and **{fastest_ins}** brought it back fastest "
    f"(insertion area {areas[fastest_ins][1]:.3f}).",
    f"Ranked by insertion minus deletion, the order is {', '.join(ranked)}.",
    f"The {lab.RANDOM_SEEDS} random rankings gave deletion areas {d_lo:.3f}–{d_hi:.3f} and insertion areas "
    f"{i_lo:.3f}–{i_hi:.3f}: "
    + (
        f"{', '.join(no_better)} did no better than some random ranking on either curve, so on this image "
        f"{'it does' if len(no_better) == 1 else 'they do'} not show what the model uses."
        if no_better
        else "every method beat every random ranking on at least one curve."
    ),
]
if float(res["deletion"][0][-1]) > 0.5 * p0 and p0 > 0:
    lines.append(
        f"With every patch hidden the model still gives '{cname}' {res['deletion'][0][-1] * 100:.1f}%: the mean "
        "colour alone carries much of this class, so the curves have little room to fall."
    )
c2.markdown("\n\n".join(lines))
c2.caption(
    "What this does **not** mean: a low deletion area says these patches matter *to this model*, not that they "
    "are where the object is; and hiding patches makes images the model never saw in training, which can move "
    "the probability for reasons of their own. One image is one example: see the test images below."
)

# ---- over a set of images ----
st.subheader("The same over many images")
ref = lab.reference(cur)
if ref is not None:
    summary = lab.test_set_summary(ref)
    r = ref["curves"]["rollout"]
    same = (r["head_fusion"], r["discard_ratio"], r["start_layer"]) == (fusion, discard, start)
    st.markdown(
        f"Computed beforehand for the bundled model on **{summary['images']} CIFAR-10 test images** "
        f"({summary['images'] // 10} per class, a fixed seeded draw), each for the class the model predicted, "
        f"{summary['k']} patches per step, {summary['random_seeds']} random rankings per image; rollout with "
        f"{r['head_fusion']} fusion, discard {r['discard_ratio']:.2f}, start layer {r['start_layer']}"
        + ("." if same else " (your rollout settings differ: the rollout rows here use those).")
    )
else:
    cap = min(lab.live_image_cap(), len(compute.sample_files()))
    st.markdown(
        f"No precomputed results for this model: the lab can run over the **{cap} bundled sample images** "
        f"(the server's cap is {lab.live_image_cap()}), each for the class this model predicts on it, "
        f"{k} patches per step. It takes a while; the result is kept for this model."
    )
    kept("lab_run_samples", False)
    summary = (
        lab.sample_summary(cur, fusion, discard, s0, k, lab.RANDOM_SEEDS, cap)
        if st.toggle(f"Run the lab over the {cap} sample images", key="lab_run_samples")
        else None
    )
if summary is not None:
    sm = summary["methods"]
    da, ia = summary["deletion_area"], summary["insertion_area"]
    chart(vpf.area_bars_figure(sm, da, ia), key="lab_set_bars")
    win_d, win_i = lab.wins(da, ia)
    mean_score = ia.mean(0) - da.mean(0)
    order_set = np.argsort(-mean_score, kind="stable")
    st.dataframe(
        {
            "method": [sm[j] for j in order_set],
            "mean deletion ↓": [f"{da[:, j].mean():.3f}" for j in order_set],
            "mean insertion ↑": [f"{ia[:, j].mean():.3f}" for j in order_set],
            "best deletion on (images)": [int(win_d[j]) for j in order_set],
            "best insertion on (images)": [int(win_i[j]) for j in order_set],
        },
        hide_index=True,
        width="stretch",
    )
    c2 = st.container()
    ri = sm.index("random")
    beat = [(sm[j], float(((da[:, j] < da[:, ri]) & (ia[:, j] > ia[:, ri])).mean())) for j in range(len(sm)) if j != ri]
    best_d = sm[int(np.argmin(da.mean(0)))]
    best_i = sm[int(np.argmax(ia.mean(0)))]
    here_rank = ranked.index(sm[int(order_set[0])]) + 1 if sm[int(order_set[0])] in ranked else None
    c2.markdown(
        f"Over these {summary['images']} images, **{best_d}** removed the class fastest on average and "
        f"**{best_i}** brought it back fastest. "
        + "Share of images where a method beat the random mean on both curves: "
        + ", ".join(f"{m} {s * 100:.0f}%" for m, s in beat)
        + ". "
        + (
            f"The best method over the set ({sm[int(order_set[0])]}) ranks {here_rank} of {len(ranked)} on this "
            "image: one image can disagree with the average."
            if here_rank and here_rank > 1
            else f"The best method over the set ({sm[int(order_set[0])]}) is also first on this image."
        )
    )
    c2.caption(
        "What this does not mean: a method that wins on average can still mislead on a given image, and these "
        "scores say nothing about other models: an untrained or another model can rank the methods differently."
    )
    with st.expander("Mean curves over the set"):
        chart(
            vpf.curves_figure(
                summary["fractions"],
                dict(zip(sm, summary["mean_deletion"])),
                dict(zip(sm, summary["mean_insertion"])),
                y_title="mean probability of the class (%)",
            ),
            key="lab_set_curves",
        )

# ---- agreement ----
st.subheader("Do the maps agree?")
maps_now = lab.maps(cur, target, fusion, discard, s0)
mnames = list(maps_now)
rho, over = (a.numpy() for a in agreement_matrix(np.stack([maps_now[m].reshape(-1) for m in mnames])))
chart(vpf.agreement_figure(rho, over, mnames), key="lab_agree")
c2 = st.container()
pairs = [(rho[i, j], mnames[i], mnames[j], over[i, j]) for i in range(len(mnames)) for j in range(i + 1, len(mnames))]
pairs = [p for p in pairs if p[0] == p[0]]
if pairs:
    hi_p, lo_p = max(pairs), min(pairs)
    top_k = max(1, int(0.1 * n))
    c2.markdown(
        f"On this image **{hi_p[1]}** and **{hi_p[2]}** agree most (rank correlation {hi_p[0]:.2f}; "
        f"{hi_p[3] * 100:.0f}% of their top {top_k} patches shared); **{lo_p[1]}** and **{lo_p[2]}** least "
        f"({lo_p[0]:.2f}, {lo_p[3] * 100:.0f}%)."
        + (
            f" Over the {summary['images']} images above, the mean correlation of that first pair is "
            f"{summary['spearman'][summary['methods'].index(hi_p[1]), summary['methods'].index(hi_p[2])]:.2f}."
            if summary is not None and hi_p[1] in summary["methods"] and hi_p[2] in summary["methods"]
            else ""
        )
    )
c2.caption(
    "Agreement is not correctness: two maps can agree because they are computed from the same attention "
    "(raw attention and rollout), and both be unfaithful. The curves above are the test of faithfulness."
)

# ---- randomisation ----
st.subheader("Sanity check: destroy the model, does the map change?")
st.markdown(
    "Adebayo et al. (2018): re-initialise the head, then the last block, then the next one down, until no "
    "trained weight is left, and recompute every map after each step. A map that explains the model must "
    "change as the model is destroyed; one that stays the same shows the image, not the model."
)
kept("lab_cascade", False)
if st.toggle(
    f"Run the sanity check ({L + 3} models, every map on each)",
    key="lab_cascade",
    help="Computed once per image and class.",
):
    cas = lab.cascade(cur, target, fusion, discard, s0)
    chart(vpf.cascade_figure(cas["maps"], cas["methods"], cas["steps"], cas["spearman"]), key="lab_cascade_maps")
    chart(vpf.cascade_correlation_figure(cas["spearman"], cas["methods"], cas["steps"]), key="lab_cascade_rho")
    rho_c, steps = cas["spearman"], cas["steps"]
    after_head = {m: rho_c[i, 1] for i, m in enumerate(cas["methods"])}
    at_end = {m: rho_c[i, -1] for i, m in enumerate(cas["methods"])}
    stay = [m for m, v in at_end.items() if v == v and v > 0.5]
    blind = [m for m, v in after_head.items() if v == v and v > 0.99]
    st.markdown(
        "On this image, after re-initialising the classifier head only, "
        + (
            f"{', '.join(blind)} did not change at all (ρ > 0.99): "
            f"{'it is' if len(blind) == 1 else 'they are'} computed before the head, so "
            f"{'it' if len(blind) == 1 else 'they'} cannot depend on the class. "
            if blind
            else "every map changed. "
        )
        + "With every weight re-initialised, "
        + (
            f"{', '.join(stay)} still correlate above 0.5 with the trained model's map: "
            "that much of the map comes from the image and the architecture, not from what the model learned."
            if stay
            else "no map keeps a correlation above 0.5 with its trained version: all of them depend on the weights."
        )
    )
    st.caption(
        "What this does not mean: passing the check (the map changes) is necessary, not sufficient; a map can "
        "depend on the weights and still point at the wrong patches. Each tile is scaled to its own range."
    )


# ---- head knockout ----
st.subheader("Head knockout: which heads does the prediction need?")
if ref is not None:
    imp = lab.test_set_importance(ref)
    imp_note = (
        f"over **{imp['images']:,} CIFAR-10 test images** (computed beforehand; accuracy with every head "
        f"{imp['accuracy'] * 100:.1f}%)"
    )
else:
    cap = min(lab.live_image_cap(), len(compute.sample_files()))
    kept("lab_run_importance", False)
    imp = (
        lab.sample_importance(cur, cap)
        if st.toggle(f"Measure every head over the {cap} sample images", key="lab_run_importance")
        else None
    )
    imp_note = (
        f"over the **{cap} sample images**, against the model's own predictions on them (they have no labels "
        "every model shares)"
    )


def _toggle_head(flat: int) -> None:
    now = list(st.session_state.get(KNOCKED, []))
    if flat in now:
        now.remove(flat)
    elif len(now) >= lab.MAX_KNOCKED:
        st.session_state[KNOCK_NOTE] = f"At most {lab.MAX_KNOCKED} heads can be knocked out at once."
        return
    else:
        now.append(flat)
    st.session_state[KNOCKED] = now


@st.fragment
def knockout_view() -> None:
    options = list(range(L * H))
    st.session_state[KNOCKED] = [v for v in st.session_state.get(KNOCKED, []) if v in options]
    heads = tuple(sorted(divmod(v, H) for v in st.session_state[KNOCKED]))
    c1, c2 = st.columns([1, 1])
    with c1:
        kept("lab_imp_metric", "logprob", ["logprob", "accuracy"])
        metric = st.radio(
            "Importance",
            ["logprob", "accuracy"],
            key="lab_imp_metric",
            horizontal=True,
            format_func={"logprob": "log-probability drop", "accuracy": "accuracy drop"}.get,
        )
        if imp is not None:
            values = imp["logprob_drop"] if metric == "logprob" else imp["accuracy_drop"] * 100
            unit = "nats" if metric == "logprob" else "points"
            st.caption(f"What each head alone is worth, {imp_note}. Click heads to knock them out.")
        else:
            values, unit = np.zeros((L, H)), ""
            st.caption(
                "Importance not measured yet (toggle above); the grid still works: click heads to knock them out."
            )
        clickable_map(
            vpp.head_grid_view(
                values,
                heads,
                value_name=f"drop ({unit})" if unit else "not measured",
                value_format=".3f" if metric == "logprob" else ".1f",
                show_values=imp is not None,
                cell_px=int(min(56, max(30, 400 / max(L, H)))),
            ),
            key="lab_heads",
            on_patch=_toggle_head,
        )
        st.multiselect(
            "Knocked-out heads",
            options,
            key=KNOCKED,
            format_func=lambda v: f"layer {v // H + 1} · head {v % H}",
            max_selections=lab.MAX_KNOCKED,
            help=f"Or click the grid. At most {lab.MAX_KNOCKED} at once.",
        )
        note = st.session_state.pop(KNOCK_NOTE, None)
        if note:
            st.warning(note)
        if imp is not None:
            flat = values.reshape(-1)
            top = np.argsort(-flat, kind="stable")[:3]
            st.caption(
                "Most important: "
                + ", ".join(f"layer {t // H + 1} head {t % H} ({flat[t]:.3f} {unit})" for t in top)
                + f". Least: layer {int(np.argmin(flat)) // H + 1} head {int(np.argmin(flat)) % H} "
                f"({flat.min():.3f} {unit}); a negative drop means the set did better without that head."
            )
    with c2:
        out = lab.knocked(cur, heads, target, fusion, discard, s0)
        p_before, p_after = float(cur.prep.probs[target]), float(out["probs"][target])
        new = int(np.argmax(out["probs"]))
        m1, m2 = st.columns(2)
        m1.metric(
            f"probability of '{cname}'",
            f"{p_after * 100:.2f}%",
            delta=f"{(p_after - p_before) * 100:+.2f} points" if heads else None,
            help="With the knocked-out heads' outputs set to zero, in one forward pass.",
        )
        m2.metric("prediction", names[new], delta=None if new == cur.predicted else f"was {names[cur.predicted]}")
        if heads:
            st.markdown(
                f"With {len(heads)} head{'s' if len(heads) > 1 else ''} knocked out, '{cname}' "
                + (
                    f"falls by {(p_before - p_after) * 100:.2f} points"
                    if p_after < p_before
                    else f"rises by {(p_after - p_before) * 100:.2f} points"
                )
                + (
                    f" and the prediction becomes **{names[new]}**."
                    if new != cur.predicted
                    else "; the prediction stays."
                )
            )
        else:
            st.markdown("No head knocked out: these are the model's own prediction and maps.")
        base = lab.knocked(cur, (), target, fusion, discard, s0)
        # pictures, not plotly figures: this column redraws on every click of the grid
        for what, unit_name, pair in (
            ("rollout", "rollout", [base["rollout"], out["rollout"]]),
            (f"class map: {cname}", "relevance", [base["class_map"], out["class_map"]]),
        ):
            pics, (lo, hi) = vpp.map_pictures(cur.prep.display, pair)
            pictures(
                pics,
                [f"{what}, all heads", f"{what}, {len(heads)} head{'s' if len(heads) != 1 else ''} knocked out"],
                150,  # two side by side in a half column at 1100 px
                key=f"lab_ko_{unit_name}",
            )
            st.caption(f"One colour scale for both {unit_name} maps: {lo:.3g} (dark) to {hi:.3g} (bright).")


knockout_view()

# ---- per-patch logit lens ----
st.subheader("Per-patch logit lens: what each patch would answer")
st.markdown(
    "Read every patch token with the model's final norm and head, as if it were [CLS], after each block: "
    "which class each patch already points to, and how much of the chosen class it carries. The [CLS] token's "
    "own read-out is beside it (the Prediction page's logit lens at that depth)."
)


@st.fragment
def lens_view() -> None:
    kept("lab_lens_depth", L, range(L + 1))
    depth = st.slider(
        "Depth (0: after the embedding, l: after block l)",
        0,
        L,
        key="lab_lens_depth",
    )
    lens = lab.patch_lens(cur)[depth]  # (n, classes)
    top = lens.argmax(-1)
    tprob = lens[:, target]
    cls_lens = compute.logit_lens(cur)[depth]
    c1, c2, c3 = st.columns([4, 3, 3])
    with c1:
        chart(
            vpf.patch_class_figure(
                cur.prep.display, top.reshape(gh, gw), lens.max(-1).reshape(gh, gw), names, cur.patch_size, height=300
            ),
            key="lab_lens_top",
        )
    with c2:
        chart(
            vp.overlay_figure(
                cur.prep.display, tprob.reshape(gh, gw), cur.grid, cur.patch_size, vmin=0.0, vmax=1.0,
                colorbar_title=f"p({cname})", value_name=f"p({cname})", height=300,
            ),
            key="lab_lens_target",
        )  # fmt: skip
    with c3:
        chart(vp.topk_figure(cls_lens, names, k=min(5, len(names)), height=230), key="lab_lens_cls")
        st.caption(f"[CLS] read-out at depth {depth}.")
    votes = int((top == target).sum())
    majority = int(np.bincount(top, minlength=len(names)).argmax())
    cls_top = int(np.argmax(cls_lens))
    st.markdown(
        f"At depth {depth}, **{votes} of {n}** patches would answer '{cname}' (their mean probability of it "
        f"{tprob.mean() * 100:.1f}%); the most common answer is '{names[majority]}' "
        f"({int((top == majority).sum())} patches). [CLS] read here says '{names[cls_top]}' "
        f"({cls_lens[cls_top] * 100:.1f}%)."
    )
    st.caption(
        "What this does not mean: the head was trained on [CLS] only; reading a patch token with it is a probe, "
        "and a patch 'answering' a class says its token lies in that class's direction, not that the model used it."
    )


lens_view()
