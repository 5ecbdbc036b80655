"""A small note in the sidebar of every page while this session's run trains, with a link to the Train page."""

from __future__ import annotations

import streamlit as st

from vit_core.runs import LOADING, PAUSED, QUEUED, TRAINING

from .compare import advance_comparison
from .lease import RUN_KEY
from .live import ordinal

TRAIN_PAGE = "pages/7_train.py"


def badge_text() -> str | None:
    """What the badge says for this session's run now, or None when no run of this session is active."""
    run = st.session_state.get(RUN_KEY)
    if run is None:
        return None
    v = run.view()
    if v.status == TRAINING:
        return f"Training: {v.progress:.0%} (step {v.step:,} of {v.total_steps:,})"
    if v.status == PAUSED:
        return f"Training paused at step {v.step:,}"
    if v.status == LOADING:
        return "Training: loading the data"
    if v.status == QUEUED:
        return f"Training: you are {ordinal(max(1, v.queue_position))} in the queue"
    if v.active:
        return "Training: finishing"
    return None


def running_badge() -> None:
    """Draw the badge in the sidebar (nothing when no run of this session is active). Cheap: one `view()`."""
    advance_comparison()  # a ViT vs CNN comparison's next run starts from whichever page is open
    text = badge_text()
    if text is None:
        return
    try:
        st.sidebar.page_link(TRAIN_PAGE, label=text, icon=":material/model_training:")
    except Exception:  # noqa: BLE001 - outside the app's navigation (a test harness): a caption instead
        st.sidebar.caption(f":material/model_training: {text} · see the Train page")
