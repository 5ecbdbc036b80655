"""ViT vs CNN on the Train page: both trained on one budget, one after the other, compared on one chart.

The comparison is a plan kept in `st.session_state`: the two configurations (the form's, once as
the ViT and once as the CNN baseline; everything else the same: images, epochs, batch, schedule,
augmentation, seed) and the runs started so far. Each run is an ordinary run of this session
(`lease.start_run`), so the classroom rules hold as for any run: one run per session at a time,
queued when the server is full, stopped when the session ends. The CNN starts when the ViT has
finished, on the next draw of any page (the Train page redraws itself when a run ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from ui.page import chart
from vit_core.cnn import CNN_ARCH
from vit_core.costs import forward_flops
from vit_core.runs import FINISHED, RunView, TrainingRun
from vit_core.sources import DataSource
from vit_core.train import TrainConfig
from vit_plots.run_comparison import RunCurves, run_comparison_figure

from .formatting import fmt_duration
from .lease import RUN_KEY, show_error, start_run
from .live import POLL_S

COMPARE_KEY = "_train_compare"  # this session's Comparison
ORDER = ("vit", CNN_ARCH)  # training order: the ViT first
LABELS = {"vit": "ViT", CNN_ARCH: "CNN (ResNet)"}
LEVEL_POINTS = 2.0  # accuracy differences this small are called level (one short run each: noise)


@dataclass
class Comparison:
    """Two runs on one budget: their configurations, names, and the runs started so far."""

    configs: dict[str, TrainConfig]  # by arch, in `ORDER`
    source: DataSource
    names: dict[str, str]
    runs: dict[str, TrainingRun] = field(default_factory=dict)

    def next_arch(self) -> str | None:
        """The arch whose run has not started yet, or None when both have."""
        return next((a for a in ORDER if a not in self.runs), None)


def same_budget(cfg: TrainConfig) -> dict[str, TrainConfig]:
    """The form's configuration as a ViT and as the CNN baseline: only `arch` differs."""
    return {arch: cfg.replace(arch=arch) for arch in ORDER}


def run_names(cfg: TrainConfig) -> dict[str, str]:
    return {
        "vit": f"ViT P{cfg.patch_size} D{cfg.embed_dim} L{cfg.depth}",
        CNN_ARCH: f"ResNet ({cfg.cnn_preset}) baseline",
    }


def current() -> Comparison | None:
    return st.session_state.get(COMPARE_KEY)


def start_comparison(cfg: TrainConfig, source: DataSource) -> None:
    """Button callback: a new comparison, and its first run (the ViT), under the session's one-run rule."""
    before = st.session_state.get(RUN_KEY)
    comp = Comparison(same_budget(cfg), source, run_names(cfg))
    start_run(comp.configs["vit"], source, comp.names["vit"])
    run = st.session_state.get(RUN_KEY)
    if run is None or run is before:  # refused: start_run left the reason in ERROR_KEY
        return
    comp.runs["vit"] = run
    st.session_state[COMPARE_KEY] = comp


def _start_next(comp: Comparison) -> bool:
    """Start the comparison's next run; True when it started (or queued)."""
    arch = comp.next_arch()
    if arch is None:
        return False
    before = st.session_state.get(RUN_KEY)
    start_run(comp.configs[arch], comp.source, comp.names[arch])
    run = st.session_state.get(RUN_KEY)
    if run is not None and run is not before:
        comp.runs[arch] = run
        return True
    return False


def _previous(comp: Comparison) -> TrainingRun | None:
    """The run before the next one to start (None when none is left to start, or none came before)."""
    arch = comp.next_arch()
    if arch is None or arch == ORDER[0]:
        return None
    return comp.runs[ORDER[ORDER.index(arch) - 1]]


def advance_comparison() -> bool:
    """Start the comparison's next run once the one before it has finished (any page calls this
    when it draws; cheap: one `view()`). A stopped or failed run is left for the user to decide.
    True when a run was started."""
    comp = current()
    prev = _previous(comp) if comp is not None else None
    if prev is None:
        return False
    # its thread ends just after it says "finished": until then the session's one run is still its
    if prev.view().status == FINISHED and not prev.alive:
        return _start_next(comp)
    return False


def _waiting(comp: Comparison) -> bool:
    """True while the next run will start by itself: the run before it is active or has just finished."""
    prev = _previous(comp)
    if prev is None:
        return False
    v = prev.view()
    return v.active or v.status == FINISHED


def close_comparison() -> None:
    """Forget the comparison (a run of it still training goes on as the session's run)."""
    st.session_state.pop(COMPARE_KEY, None)


# ---- the view --------------------------------------------------------------------------------


def comparison_panel() -> None:
    """The comparison's status, its curves on one chart and its results side by side (nothing when
    this session has none). Polled while one of its runs is active."""
    comp = current()
    if comp is None:
        return
    st.subheader("ViT vs CNN on the same budget")
    cfg = comp.configs["vit"]
    images = f"{cfg.train_size:,} training images (class-balanced)" if cfg.train_size else "every training image"
    st.caption(
        f"Both trained on {images}, {cfg.epochs:g} epochs at batch {cfg.batch_size}, peak learning rate "
        f"{cfg.lr:.1e}, the same schedule, augmentation and seed ({cfg.seed}): one after the other, the ViT "
        "first. Each is an ordinary run of this session: one trains at a time."
    )
    views = {arch: run.view() for arch, run in comp.runs.items()}
    if any(v.active for v in views.values()) or _waiting(comp):

        @st.fragment(run_every=POLL_S * 2)
        def _live() -> None:
            if advance_comparison():
                st.rerun()  # the next run started: redraw the page with it
            _body(comp, {arch: run.view() for arch, run in comp.runs.items()}, live=True)

        _live()
    else:
        _body(comp, views, live=False)
    show_error()
    st.button("Close the comparison", key="train_compare_close", on_click=close_comparison, icon=":material/close:")


def _body(comp: Comparison, views: dict[str, RunView], live: bool) -> None:
    status_lines(comp, views)
    curves = [curves_of(LABELS[a], views[a]) for a in ORDER if a in views]
    if any(len(c.steps) for c in curves):
        total = max(v.total_steps * v.config.batch_size for v in views.values())
        chart(run_comparison_figure(curves, total_images=total or None), key=f"train_compare_curves_{int(live)}")
    table = results_table(comp, views)
    if table:
        st.dataframe(table, hide_index=True)
        verdict = verdict_text(views)
        if verdict:
            st.markdown(verdict)


def status_lines(comp: Comparison, views: dict[str, RunView]) -> None:
    """One line per model: waiting, training (with its step), or how it ended."""
    for arch in ORDER:
        label, v = LABELS[arch], views.get(arch)
        if v is None:
            prev = views.get(ORDER[ORDER.index(arch) - 1]) if arch != ORDER[0] else None
            if prev is not None and prev.done and prev.status != FINISHED:
                st.warning(
                    f"**{label}**: not started, the {LABELS[ORDER[0]]} run ended as “{prev.status}”. "
                    "Train it now on the same budget, or close the comparison.",
                    icon=":material/pause_circle:",
                )
                run = st.session_state.get(RUN_KEY)
                busy = run is not None and run.view().active
                st.button(
                    f"Train the {label} now",
                    key="train_compare_next",
                    on_click=_start_next,
                    args=(comp,),
                    disabled=busy,
                    icon=":material/play_arrow:",
                )
            else:
                st.markdown(f"**{label}**: waiting; it starts when the {LABELS[ORDER[0]]} has finished.")
        elif v.active:
            st.markdown(f"**{label}**: {v.status}, step {v.step:,} of {v.total_steps:,}.")
        else:
            acc = f", {v.final.acc:.1%} on all {v.test_size:,} test images" if v.final is not None else ""
            st.markdown(f"**{label}**: {v.status} at step {v.step:,} of {v.total_steps:,}{acc}.")


def curves_of(label: str, v: RunView) -> RunCurves:
    return RunCurves(
        label,
        v.config.batch_size,
        v.steps,
        v.loss,
        [e.step for e in v.evals],
        [e.loss for e in v.evals],
        [e.acc for e in v.evals],
    )


def results_table(comp: Comparison, views: dict[str, RunView]) -> dict[str, list[str]] | None:
    """The runs' results side by side, one column per model (None before either has a step)."""
    if not any(v.steps for v in views.values()):
        return None
    k = next((len(v.class_names) for v in views.values() if v.class_names), 10)
    cols: dict[str, list[str]] = {"": []}
    rows = [
        "Test accuracy (all test images)",
        "Best test accuracy during training",
        "Train loss (last 20 steps)",
        "Parameters",
        "Forward FLOPs per image",
        "Training images",
        "Steps",
        "Training time",
        "Images / s",
    ]
    cols[""] = rows
    for arch in ORDER:
        v = views.get(arch)
        cfg = comp.configs[arch]
        if v is None:
            cols[LABELS[arch]] = ["–"] * len(rows)
            continue
        best = max((e.acc for e in v.evals), default=None)
        cols[LABELS[arch]] = [
            f"{v.final.acc:.1%}" if v.final is not None else "–",
            f"{best:.1%}" if best is not None else "–",
            f"{np.mean(v.loss[-20:]):.3f}" if v.loss else "–",
            f"{v.params:,}" if v.params else "–",
            f"{forward_flops(cfg.replace(img_size=v.config.img_size), k) / 1e6:,.1f} M",
            f"{v.train_size:,}" if v.train_size else "–",
            f"{v.step:,} of {v.total_steps:,}",
            fmt_duration(v.train_seconds) if v.train_seconds else "–",
            f"{v.step * v.config.batch_size / v.train_seconds:,.0f}" if v.train_seconds else "–",
        ]
    return cols


def verdict_text(views: dict[str, RunView]) -> str | None:
    """What the two finished runs measured, in words (None until both have a final accuracy)."""
    vit, cnn = views.get("vit"), views.get(CNN_ARCH)
    if vit is None or cnn is None or vit.final is None or cnn.final is None:
        return None
    a, b = vit.final.acc * 100, cnn.final.acc * 100
    n = vit.test_size
    if abs(a - b) <= LEVEL_POINTS:
        return (
            f"On this budget the two are about level: the ViT {a:.1f}%, the CNN {b:.1f}% on the same {n:,} test "
            f"images. With one run each, a difference of {LEVEL_POINTS:g} points or less is not called a win."
        )
    ahead, behind = ("CNN", "ViT") if b > a else ("ViT", "CNN")
    return (
        f"On this budget the **{ahead}** is ahead: the ViT {a:.1f}%, the CNN {b:.1f}% on the same {n:,} test "
        f"images, {abs(a - b):.1f} points apart (one run each, one seed)."
    )
