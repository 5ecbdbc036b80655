"""Experiments: ViT vs CNN, and the ViT ablations: the tutorials' claims, measured by real runs."""

import streamlit as st

from ui import experiments as ux
from ui.models import load_model
from ui.page import chart, header
from ui.training.lease import current_run
from vit_core import experiments as ex
from vit_core.errors import CheckpointError
from vit_plots import experiments as vpe
from vit_plots import filters_figure

header(
    "Experiments: ViT vs CNN, and what each part of a ViT does",
    "The tutorials make claims you can only test by training: **a CNN has locality built in and needs less "
    "data; a ViT has none, needs more data and sees the whole image from its first layer; the position "
    "embeddings supply the spatial structure; the [CLS] token collects the answer.** This page shows what "
    "short real runs measured. The sentences under each chart are computed from the numbers, so where a run "
    "disagrees with a tutorial, they say so.",
)

results = ux.results()
found = ex.findings(results)
recipe = ex.RECIPE
st.caption(
    f"Every shipped run: CIFAR-10, the same recipe (AdamW, peak learning rate {recipe.lr:g}, batch "
    f"{recipe.batch_size}, {ex.SWEEP_STEPS} steps with a {ex.WARMUP_STEPS}-step warmup and a cosine, crop and "
    f"flip augmentation, seed {recipe.seed}), one run per setting: **a short schedule** "
    f"({ex.SWEEP_STEPS * recipe.batch_size:,} images seen), "
    "so accuracies are far below what longer training reaches and differences of about a point can be noise. "
    "Commands, machine and times: assets/README.md, 'Experiments'."
)
if not results:
    st.info(
        "No shipped results were found (assets/experiments/*.json). Make them with "
        "`python scripts/sweep.py --data <CIFAR-10>`; the live comparisons below still work."
    )

# -- 1. data ----------------------------------------------------------------------------------
st.header("1 · Accuracy against training-set size")
table = ex.data_size_table(results)
if any(table.values()):
    chart(vpe.accuracy_vs_data_figure(table), key="exp_data_size")
    if "data_size" in found:
        st.markdown(found["data_size"])
    st.caption(
        "The demo ViT (142,026 parameters: patch 4, width 64, 4 blocks) and a ResNet of about the same size "
        "(144,542: a 3x3 stem and 4 residual blocks), trained on class-balanced subsets of the CIFAR-10 training "
        "set (nested: the 1,000 images are among the 5,000), tested on "
        f"{ex.TEST_IMAGES:,} class-balanced test images. Every size gets "
        f"the same {ex.SWEEP_STEPS} steps, so a small set is seen many times. Not run: " + "; ".join(ex.NOT_RUN) + "."
    )
else:
    st.caption("No data-size runs are shipped yet.")

# -- 2. how far each layer looks --------------------------------------------------------------
st.header("2 · How far each layer looks")
series, notes = [], []
try:
    bundled = load_model("bundled").model
except CheckpointError:
    bundled = None
if bundled is not None:
    series.append(
        {
            "name": "bundled ViT: mean attention distance",
            "values": ux.attention_distance(bundled, "bundled"),
            "kind": "vit",
        }
    )
cnn = ux.shipped_cnn()
cnn_label = "shipped demo ResNet (10,000 images)"
if cnn is None:
    cnn, cnn_label = ux.untrained_cnn(), "demo ResNet with RANDOM weights (no trained CNN shipped)"
erf, names = ux.receptive_field(cnn, cnn_label)
series.append({"name": f"{cnn_label}: receptive field", "values": erf, "kind": "resnet", "layer_names": names})
base_doc, cnn_doc = results.get(ex.baseline_key()), results.get(f"resnet_n{ex.ABLATION_SIZE}")
if base_doc is not None:
    series.append(
        {
            "name": "demo ViT run (10,000 images): attention distance",
            "values": base_doc["measures"]["mean_attention_distance"],
            "kind": "vit",
            "dash": "dot",
        }
    )
if cnn_doc is not None:
    series.append(
        {
            "name": "demo ResNet run (10,000 images): receptive field",
            "values": cnn_doc["measures"]["receptive_field_distance"],
            "kind": "resnet",
            "dash": "dot",
            "layer_names": cnn_doc["measures"].get("layer_names"),
        }
    )
uniform = ex.uniform_attention_distance((8, 8), 4)
chart(vpe.distance_by_depth_figure(series, reference=uniform), key="exp_distance")
if "distance" in found:
    st.markdown(found["distance"])
st.caption(
    "Both in input pixels (definitions: ALGORITHMS.md). For a ViT block: over patch queries, the attention-weighted "
    "distance to the patches attended to, averaged over heads. For a CNN layer: the gradient of the centre unit with "
    "respect to the input pixels, |.| summed over colour, as a weight per pixel; the weighted mean distance from the "
    "unit's position. Solid lines: computed now on the ten bundled CIFAR-10 samples; dotted: the shipped runs, on 256 "
    "test images. The dashed line is what a head that spreads its attention evenly over the 8x8 grid would score."
)

# -- 3. first-layer filters --------------------------------------------------------------------
st.header("3 · First-layer filters")
c1, c2 = st.columns(2)
with c1:
    if bundled is not None:
        chart(filters_figure(ux.vit_filters(bundled), cols=8, tile_px=36), key="exp_vit_filters")
        st.caption(
            "Bundled ViT: the top 16 **principal components** of its 192 patch-embedding filters (4x4x3 each), "
            "as in the ViT paper's Figure 7, each scaled to [0, 1]."
        )
    else:
        st.caption("The bundled ViT is not installed.")
with c2:
    chart(filters_figure(ux.cnn_filters(cnn), cols=8, tile_px=36), key="exp_cnn_filters")
    st.caption(
        f"{cnn_label}: its {cnn.cfg.stem_width} **raw** 3x3x3 stem filters (no PCA), each scaled to [0, 1]. A "
        "convolution slides each filter over every position; a ViT's filter sees one 4x4 patch, once."
    )

# -- 4. ablations -----------------------------------------------------------------------------
st.header("4 · The ablation lab: one change at a time")
rows = ex.ablation_rows(results)
if rows:
    base_acc = rows[0]["test_acc"] if rows[0]["key"] == "baseline" else None
    table_rows = []
    for r in rows:
        mad, ent, lens = r["mean_attention_distance"], r["attention_entropy"], r["logit_lens_accuracy"]
        table_rows.append(
            {
                "variant": r["label"],
                "test accuracy %": round(100 * r["test_acc"], 1),
                "vs baseline (points)": None if base_acc is None else round(100 * (r["test_acc"] - base_acc), 1),
                "parameters": r["params"],
                "attention distance, block 1 / last (px)": f"{mad[0]:.1f} / {mad[-1]:.1f}" if mad else "",
                "mean entropy (nats)": round(sum(ent) / len(ent), 2) if ent else None,
                "position structure": None
                if r["position_structure_score"] is None
                else round(r["position_structure_score"], 3),
                "logit lens after block 1 %": round(100 * lens[1], 1) if len(lens) > 1 else None,
            }
        )
    st.dataframe(table_rows, hide_index=True, width="stretch")
    chart(vpe.ablation_accuracy_figure(rows), key="exp_ablation_acc")
    for r in rows[1:]:
        if r["key"] in found:
            st.markdown(f"- {found[r['key']]}")
    if "logit_lens" in found:
        st.markdown(f"- {found['logit_lens']}")
    t1, t2, t3 = st.tabs(["mean attention distance", "logit-lens accuracy", "attention entropy"])
    with t1:
        chart(vpe.ablation_by_depth_figure(rows, "mean_attention_distance", "pixels"), key="exp_abl_mad")
    with t2:
        chart(vpe.ablation_by_depth_figure(rows, "logit_lens_accuracy", "accuracy (%)"), key="exp_abl_lens")
    with t3:
        chart(vpe.ablation_by_depth_figure(rows, "attention_entropy", "nats"), key="exp_abl_entropy")
    st.caption(
        f"The demo ViT on {ex.ABLATION_SIZE:,} training images; each run changes one thing. The measures are "
        f"averaged over {ex.MEASURE_IMAGES} class-balanced test images. Position structure: the mean cosine "
        "similarity of neighbouring patches' position embeddings minus that of all pairs (0 for none; the fixed "
        "sine-cosine waves have it by construction). Logit lens: the final norm and head applied to the read-out "
        "token (or the patch average) after each block. One seed per run."
    )
else:
    st.caption("No ablation runs are shipped yet.")

# -- 5. emergence ----------------------------------------------------------------------------
st.header("5 · Emergence during your own run")
run = current_run()
view = run.view() if run is not None else None
snaps = [s for s in (view.snapshots if view is not None else []) if getattr(s, "measures", None)]
if len(snaps) >= 2:
    chart(vpe.emergence_figure([s.step for s in snaps], [s.measures for s in snaps]), key="exp_emergence")
    st.caption(
        f"This session's run, {len(snaps)} snapshots: the ViT paper's Figure 7 measures on 64 test images at each "
        "snapshot. Darker lines are deeper blocks. The Train page's snapshot scrubber shows the pictures behind them."
    )
elif view is not None and view.snapshots and not snaps:
    st.caption("This session's run has no emergence measures (a CNN has no attention, or its snapshots predate them).")
else:
    st.info(
        "Train a ViT on the **Train** page and come back: every snapshot of the run records the mean attention "
        "distance and entropy per block, the position structure score and the logit-lens accuracy, drawn here as "
        "lines over the training steps."
    )

st.subheader("Train any variant yourself")
st.markdown(
    "Every run here can be repeated from the command line, e.g. "
    "`python -m vit_core.train --preset demo --train-size 1000 --arch resnet --cnn-preset demo --out runs/cnn1k` "
    "or `--pos-embed-type none`, `--pos-embed-type sincos`, `--global-pool avg --class-token false`, "
    "`--reg-tokens 4`, `--patch-size 8`, `--depth 6`, `--embed-dim 96`; `python scripts/sweep.py` reruns the "
    "whole set and skips what is finished."
)
