"""The session's run while its thread works: progress, curves and snapshots, redrawn by fragments.

Each fragment re-reads `run.view()` on its own timer (`POLL_S`, `SNAPSHOT_POLL_S`), so the
rest of the app stays usable and no script run ever waits for training; when the run ends, a
fragment reruns the whole page, which then shows the results.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

import vit_plots as vp
from ui.page import chart
from vit_core.runs import LOADING, QUEUED, STOPPING, TRAINING, RunView, TrainingRun
from vit_core.snapshots import Snapshot
from vit_plots.images import sharp
from vit_plots.training import training_curves_figure

from .formatting import fmt_duration, fmt_params

POLL_S = 1.0  # seconds between two looks at a running run (progress, curves)
MEASURING_STEPS = 5  # steps before the time left is shown (the first steps are slower than the rest)
SNAPSHOT_POLL_S = 3.0  # ... and at its latest snapshot
SNAPSHOT_NOTE = (
    "Every so often the training thread takes these pictures of the model. Left: how alike the learned position "
    "embeddings are (each tile is one patch position against all others); a grid pattern appears as the model "
    "learns where patches are. Middle: the main directions in the patch filters, random at first, smooth colour "
    "and edge detectors later. Right: where the [CLS] token gathers information from, by attention rollout."
)
CNN_SNAPSHOT_NOTE = (
    "Every so often the training thread takes these pictures of the CNN. Left: its first-layer filters, each 3x3 "
    "convolution kernel of the stem shown as a tiny colour image (random at first). Right: its answer on one test "
    "image. A CNN has no position embeddings and no attention to show."
)
DRAWN_ACTIVE_KEY = "_train_drawn_active"  # the page was last drawn with the run active
_FIGURES = "_train_figures"  # snapshot figures already built, by (run id, step, kind)


def live_view(run: TrainingRun) -> None:
    """Progress and curves every `POLL_S` seconds, the latest snapshot every `SNAPSHOT_POLL_S`."""

    @st.fragment(run_every=POLL_S)
    def live_fragment() -> None:
        v = run.view()
        if not v.active and st.session_state.get(DRAWN_ACTIVE_KEY):
            st.rerun()  # the run ended: redraw the whole page with the results
        progress_block(run, v)
        if v.steps:
            chart(curves_figure(v), key="train_curves_live")

    # The pictures change only every few dozen steps: a slower poll of their own.
    @st.fragment(run_every=SNAPSHOT_POLL_S)
    def snapshot_fragment() -> None:
        v = run.view()
        if not v.active and st.session_state.get(DRAWN_ACTIVE_KEY):
            st.rerun()
        if v.snapshots:
            snap = v.snapshots[-1]
            st.markdown(f"**What the model has learned so far** (step {snap.step:,}, epoch {snap.epoch:.2f})")
            snapshot_panels(run, v, snap, "live")
            st.caption(snapshot_note(snap))

    live_fragment()
    snapshot_fragment()


def snapshot_note(snap: Snapshot) -> str:
    """What the snapshot panels show, for a ViT's snapshot or the CNN's."""
    return CNN_SNAPSHOT_NOTE if snap.stem_filters is not None else SNAPSHOT_NOTE


def ordinal(n: int) -> str:
    """'1st', '2nd', '3rd', '4th', ..., '11th', '22nd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def time_left(v: RunView) -> str:
    """' · about 4 min left', or that the speed is still being measured (the first steps say little)."""
    if v.paused:
        return ""
    if v.step < MEASURING_STEPS or not v.images_per_s:
        return " · measuring the speed, time left shown in a moment"
    return f" · about {fmt_duration(v.eta_s)} left"


def progress_block(run: TrainingRun, v: RunView) -> None:
    """Status, progress bar with ETA, throughput, and the pause / resume / stop buttons."""
    if v.status == QUEUED:
        st.info(
            f"You are {ordinal(max(1, v.queue_position))} in the queue: every training slot of this server is in use. "
            "Your run starts by itself when one frees; keep this tab open.",
            icon=":material/schedule:",
        )
    elif v.status == LOADING:
        if v.download is not None:
            done, total = v.download
            st.progress(
                min(1.0, done / total) if total else 0.0,
                text=f"Downloading: {done / 2**20:.0f} / {total / 2**20:.0f} MB",
            )
        elif v.loading is not None and v.loading[2]:
            what, done, total = v.loading
            st.progress(
                min(1.0, done / total),
                text=f"Reading the {what}: {done:,} of {total:,} (only the first time; later runs start in seconds)",
            )
        else:
            st.info(
                f"{v.detail or 'Loading the data'}... (the first read of an image folder decodes every image once; "
                "later runs start in seconds)",
                icon=":material/hourglass_top:",
            )
    else:
        eta = time_left(v)
        label = "Paused" if v.paused else ("Stopping" if v.status == STOPPING else "Training")
        if v.detail:
            label = v.detail[0].upper() + v.detail[1:]
        st.progress(v.progress, text=f"{label}: step {v.step:,} of {v.total_steps:,} (epoch {v.epoch:.2f}){eta}")
    c = st.columns([1, 1, 1, 1, 2])
    last_eval = v.evals[-1] if v.evals else None
    c[0].metric("Images / s", f"{v.images_per_s:,.0f}" if v.images_per_s else "–")
    c[1].metric("Train loss", f"{np.mean(v.loss[-20:]):.3f}" if v.loss else "–")
    c[2].metric(
        "Test accuracy", f"{last_eval.acc:.1%}" if last_eval else "–", help=f"On {v.eval_size:,} held-out images"
    )
    c[3].metric("Parameters", fmt_params(v.params) if v.params else "–")
    with c[4]:
        b = st.columns(2)
        if v.paused:
            b[0].button(
                "Resume", key="train_unpause", on_click=run.unpause, icon=":material/play_arrow:", width="stretch"
            )
        else:
            b[0].button(
                "Pause",
                key="train_pause",
                on_click=run.pause,
                disabled=v.status not in (TRAINING, LOADING),
                icon=":material/pause:",
                width="stretch",
            )
        b[1].button("Stop", key="train_stop", on_click=run.stop, disabled=v.status not in (TRAINING, "paused", LOADING, QUEUED), icon=":material/stop:", help="Stops after the current step and saves a checkpoint you can resume from.", width="stretch")  # fmt: skip


def curves_figure(v: RunView):
    """Loss, accuracy and learning rate over the steps so far, with the evaluations."""
    return training_curves_figure(
        v.steps,
        v.loss,
        v.acc,
        v.lr,
        [e.step for e in v.evals],
        [e.loss for e in v.evals],
        [e.acc for e in v.evals],
        total_steps=v.total_steps,
    )


def snapshot_panels(run: TrainingRun, v: RunView, snap: Snapshot, key: str) -> None:
    """Position similarity, filter principal components and the probe's [CLS] attention, side by side
    (for the CNN baseline, which has neither positions nor attention: its stem filters and the probe's answer)."""
    if snap.stem_filters is not None:
        cnn_snapshot_panels(run, v, snap, key)
        return
    c = st.columns(3)
    with c[0]:
        st.markdown("Position embeddings: cosine similarity")
        chart(_snapshot_figure(run, snap, "pos", v.class_names), key=f"train_pos_{key}")
    with c[1]:
        st.markdown(f"Patch filters: top {len(snap.filters_variance)} principal components")
        chart(_snapshot_figure(run, snap, "filters", v.class_names), key=f"train_filters_{key}")
    with c[2]:
        p = snap.probe_probs
        guess = f"{v.class_names[int(p.argmax())]} ({p.max():.0%})" if v.class_names else ""
        st.markdown(f"[CLS] attention on a test image · model says {guess}")
        fig = _snapshot_figure(run, snap, "cls", v.class_names)
        if fig is not None:
            chart(fig, key=f"train_cls_{key}")


def cnn_snapshot_panels(run: TrainingRun, v: RunView, snap: Snapshot, key: str) -> None:
    """The CNN's snapshot: its first-layer (stem) filters, and the probe image with the model's answer."""
    c = st.columns([2, 1])
    with c[0]:
        st.markdown(f"First-layer filters: all {len(snap.stem_filters)} 3x3 stem filters, each scaled on its own")
        chart(vp.filters_figure(snap.stem_filters, cols=8, tile_px=36), key=f"train_stem_{key}")
    with c[1]:
        p = snap.probe_probs
        guess = f"{v.class_names[int(p.argmax())]} ({p.max():.0%})" if v.class_names else ""
        st.markdown(f"A test image · model says {guess}")
        image = run.test_image(run.probe_index)
        if image is not None:
            st.image(sharp(image, min_px=160))


def _snapshot_figure(run: TrainingRun, snap: Snapshot, kind: str, class_names: list[str]):
    """One snapshot figure, built once per (run, step, kind) and kept for the session's next polls."""
    cache = st.session_state.setdefault(_FIGURES, {})
    k = (run.id, snap.step, kind)
    if k not in cache:
        if kind == "pos":
            fig = vp.similarity_tiles_figure(snap.position_similarity, height=320)
        elif kind == "filters":
            labels = [f"PC {i + 1}: {r:.1%} of the variance" for i, r in enumerate(snap.filters_variance)]
            fig = vp.filters_figure(snap.filters_pca, labels, cols=7, tile_px=28)
        else:
            image = run.test_image(run.probe_index)
            if image is None:
                return None
            gh, gw = snap.cls_map.shape
            fig = vp.overlay_figure(
                image,
                snap.cls_map,
                (gh, gw),
                image.shape[0] // gh,
                colorbar_title="rollout",
                value_name="rollout",
                height=320,
            )
        while len(cache) >= 12:  # the live view needs 3, the scrubber a few more
            cache.pop(next(iter(cache)))
        cache[k] = fig
    return cache[k]
