"""The session's run once its thread has ended: how it went, what it learned, where it goes wrong."""

from __future__ import annotations

import numpy as np
import streamlit as st

from ui.page import chart
from vit_core.evaluation import EvalResult
from vit_core.runs import FAILED, FINISHED, STOPPED, RunView, TrainingRun
from vit_plots.images import sharp
from vit_plots.training import confusion_figure, per_class_figure

from .formatting import fmt_duration
from .lease import USED_KEY, discard_run, resume_run, show_error, use_model
from .live import POLL_S, curves_figure, snapshot_note, snapshot_panels


def results(run: TrainingRun, v: RunView) -> None:
    """How the run ended: accuracy, buttons, curves, snapshots to scrub through, confusion, mistakes."""
    if v.status == FAILED:
        st.error(v.message or "The run failed.")
        st.button("Set up a new run", key="train_new", on_click=discard_run)
        return
    outcome(v)
    if v.final_progress is not None:
        final_progress(run)
    show_error()
    final_metrics(v)
    actions(run, v)
    if v.steps:
        chart(curves_figure(v), key="train_curves_final")
    if v.snapshots:
        snapshot_scrubber(run, v)
    if v.final is not None:
        where_it_goes_wrong(v.final)
    if v.mistakes:
        mistakes_gallery(run, v)


def outcome(v: RunView) -> None:
    """Finished, stopped or diverged, in the run's own words."""
    if v.status == FINISHED:
        st.success(v.message, icon=":material/check_circle:")
    elif v.status == STOPPED:
        st.warning(v.message or "Stopped.", icon=":material/stop_circle:")
    else:
        st.error(v.message, icon=":material/error:")


def final_progress(run: TrainingRun) -> None:
    """The final evaluation on the whole test set, which runs after a stop, with its own progress."""

    @st.fragment(run_every=POLL_S)
    def _final() -> None:
        v = run.view()
        if v.final_progress is None:
            st.rerun()  # the accuracy, mistakes and checkpoint are there: redraw the page
        done, total = v.final_progress
        st.progress(
            min(1.0, done / total) if total else 0.0,
            text=f"Measuring the model on all {total:,} test images: {done:,} done",
        )

    _final()


def final_metrics(v: RunView) -> None:
    """Test accuracy on the whole test set, steps, training time, throughput."""
    final = v.final
    c = st.columns(4)
    c[0].metric("Test accuracy", f"{final.acc:.1%}" if final else "–", help=f"On all {v.test_size:,} test images")
    c[1].metric("Steps", f"{v.step:,} of {v.total_steps:,}")
    c[2].metric("Training time", fmt_duration(v.train_seconds))
    c[3].metric("Images / s", f"{v.step * v.config.batch_size / v.train_seconds:,.0f}" if v.train_seconds else "–")


def actions(run: TrainingRun, v: RunView) -> None:
    """Use the model on every page, download it, resume the run, or start a new one."""
    b = st.columns(4)
    used = st.session_state.get(USED_KEY)
    cnn = v.config.arch != "vit"  # the explorer pages explain ViTs; the CNN is compared on the Experiments page
    b[0].button(
        "Model in use on every page" if used else "Use this model",
        key="train_use",
        type="primary",
        on_click=use_model,
        args=(run,),
        disabled=bool(used) or v.checkpoint is None or cnn,
        icon=":material/check:" if used else ":material/open_in_new:",
        width="stretch",
        help="The explorer pages explain Vision Transformers: a CNN has no patches, tokens or attention to show."
        if cnn
        else "Adds it to the model picker in the sidebar and selects it: every explorer page then shows it.",
    )
    if v.checkpoint is not None and v.checkpoint.is_file():
        path = v.checkpoint
        b[1].download_button(
            "Download the checkpoint",
            data=lambda: path.read_bytes(),
            file_name=f"vit-{run.id}.safetensors",
            mime="application/octet-stream",
            key="train_download_ckpt",
            on_click="ignore",
            icon=":material/download:",
            width="stretch",
            help="Weights and config as .safetensors: load it in the sidebar's 'More models' or with vit_core.load_checkpoint.",
        )
    if v.can_resume:
        b[2].button(
            "Resume training",
            key="train_resume",
            on_click=resume_run,
            args=(run,),
            icon=":material/play_arrow:",
            width="stretch",
        )
    b[3].button("New run", key="train_new", on_click=discard_run, icon=":material/restart_alt:", width="stretch")
    if used:
        st.info(f"**{used}** is now selected in the sidebar's model picker: open any page to look inside it.")
    st.caption(f"Run folder: `{v.out_dir}` (last.pt resumes exactly; model.safetensors is the model alone).")


def snapshot_scrubber(run: TrainingRun, v: RunView) -> None:
    """The snapshots taken during the run, one at a time, chosen on a slider."""
    st.subheader("How the structures emerged")
    steps = [s.step for s in v.snapshots]
    st.session_state.setdefault("train_snapshot", steps[-1])
    newest = (run.id, steps[-1])
    if st.session_state["train_snapshot"] not in steps or st.session_state.get("_train_snapshot_newest") != newest:
        st.session_state["train_snapshot"] = steps[-1]  # a new snapshot arrived (the final one, a resumed run's)
    st.session_state["_train_snapshot_newest"] = newest
    if len(steps) > 1:
        st.select_slider("Snapshot at step", steps, key="train_snapshot", help="Scrub through the run.")
    snap = v.snapshots[steps.index(st.session_state["train_snapshot"])]
    st.caption(f"Step {snap.step:,} (epoch {snap.epoch:.2f}).")
    snapshot_panels(run, v, snap, "final")
    st.caption(snapshot_note(snap))


def where_it_goes_wrong(final: EvalResult) -> None:
    """Confusion matrix and accuracy per class on the whole test set."""
    st.subheader("Where it goes wrong")
    c = st.columns(2)
    with c[0]:
        st.markdown("Confusion matrix")
        chart(confusion_figure(np.asarray(final.confusion), final.class_names), key="train_confusion")
    with c[1]:
        st.markdown("Accuracy per class")
        chart(per_class_figure(final.per_class_acc, final.class_names), key="train_per_class")


def mistakes_gallery(run: TrainingRun, v: RunView) -> None:
    """The test images the model got wrong with the most confidence."""
    st.markdown("**The most confident mistakes** (true class → predicted, confidence)")
    cols = st.columns(8)
    for i, m in enumerate(v.mistakes[:24]):
        img = run.test_image(m["index"])
        if img is None:
            break
        cols[i % 8].image(
            sharp(img, min_px=96),
            caption=f"{m['true_name']} → {m['pred_name']} ({m['confidence']:.0%})",
            width="stretch",
        )
