"""The Train page's Streamlit side, one job per module.

* `lease`: the session's run in `st.session_state`, tied to the browser session (released with it).
* `data_picker`, `settings`: the form of a new run (where the images come from; preset, knobs,
  cost; Start), with `uploads` for an uploaded archive.
* `live`: the run while its thread works, redrawn by fragments; `results`: the run once it ended.
* `compare`: ViT vs CNN, two runs on one budget one after the other, on one chart.

The run itself (`vit_core.runs.TrainingRun`) trains on a background thread that never calls
Streamlit; this package only reads `run.view()` and sends clicks as `pause` / `stop` / `resume`.
"""

from __future__ import annotations

import streamlit as st

from vit_core.runs import TrainingRun

from .compare import advance_comparison, comparison_panel
from .lease import current_run
from .live import DRAWN_ACTIVE_KEY, live_view
from .results import results
from .settings import new_run_form

__all__ = ["advance_comparison", "comparison_panel", "current_run", "new_run_form", "run_panel"]


def run_panel(run: TrainingRun) -> None:
    """The session's run: live while the thread works, the results once it has ended."""
    v = run.view()
    st.session_state[DRAWN_ACTIVE_KEY] = v.active
    if v.active:
        live_view(run)
    else:
        results(run, v)
