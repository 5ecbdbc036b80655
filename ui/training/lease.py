"""The session's run: kept in `st.session_state`, tied to the browser session, started, resumed, used.

A session-scoped cached resource ("the lease") holds each run and download; when the browser
session ends Streamlit releases it, and its `on_release` callback calls `release()`, which stops
the run after the grace period. The run manager's watchdog also asks the runtime whether the
session is still connected (`owner_probe`), so a run whose session vanished ends either way.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from ui.models import register_session_model
from vit_core import run_backend
from vit_core.errors import VitCoreError
from vit_core.model import VisionTransformer
from vit_core.runs import TrainingRun
from vit_core.sources import DataSource
from vit_core.train import TrainConfig

RUN_KEY = "train_run"  # the session's TrainingRun (one per session)
DOWNLOAD_KEY = "train_download"  # the session's DownloadJob
ERROR_KEY = "_train_error"  # a message from a callback, shown once
USED_KEY = "_train_used"  # name under which the model was put into the picker


def session_id() -> str | None:
    """This browser session's id (None outside a script run)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def owner_probe() -> Callable[[], bool] | None:
    """A callable that says whether this session is still connected (None when there is no server runtime)."""
    from streamlit.runtime import Runtime

    sid = session_id()
    if sid is None or not Runtime.exists():
        return None
    runtime = Runtime.instance()
    if runtime.is_active_session(sid) is not True:
        return None  # not a live server session (AppTest runs scripts under a mock runtime)
    return lambda: runtime.is_active_session(sid) is True


def _release(obj) -> None:
    obj.release()


@st.cache_resource(scope="session", on_release=_release, max_entries=8, show_spinner=False)
def _lease(_obj, key: str):
    """Session-scoped: created on the first call in a session (again after a reconnect), released with it."""
    attach = getattr(_obj, "attach", None)
    if attach is not None:
        attach(owner_probe())
    return _obj


def hold(obj, key: str) -> None:
    """Tie a run or download to this session: when the session ends, `obj.release()` is called."""
    _lease(obj, key)


def current_run() -> TrainingRun | None:
    """The session's run (re-tied to the session on every page run, so a reconnect keeps it)."""
    run = st.session_state.get(RUN_KEY)
    if run is not None:
        hold(run, f"run:{run.id}")
    return run


def start_run(cfg: TrainConfig, source: DataSource, name: str) -> None:
    """Button callback: start (or queue) a run for this session (one at a time), or leave a message why not."""
    old = st.session_state.get(RUN_KEY)
    if old is not None and (old.alive or old.view().active):
        st.session_state[ERROR_KEY] = "This session is already training a model: one run per session. Stop it first."
        return
    try:
        run = run_backend.start_run(cfg, source, owner_alive=owner_probe(), name=name)  # this process, or a Ray cluster
    except VitCoreError as e:
        st.session_state[ERROR_KEY] = str(e)
        return
    st.session_state[RUN_KEY] = run
    st.session_state.pop(USED_KEY, None)
    hold(run, f"run:{run.id}")


def resume_run(run: TrainingRun) -> None:
    try:
        run.resume()
    except (VitCoreError, RuntimeError) as e:
        st.session_state[ERROR_KEY] = str(e)


def discard_run() -> None:
    """Forget the session's run (stopping it if it still trains): the page shows the form again."""
    run = st.session_state.pop(RUN_KEY, None)
    if run is not None and (run.alive or run.view().active):
        run.stop()
    st.session_state.pop(USED_KEY, None)


def use_model(run: TrainingRun) -> None:
    """Button callback: put the run's model into the sidebar's picker and select it."""
    try:
        model = run.export_model()
    except RuntimeError as e:
        st.session_state[ERROR_KEY] = str(e)
        return
    if not isinstance(model, VisionTransformer):
        # The app's modules were reloaded (a source file changed) since the run began: the
        # picker checks against the current class, so rebuild the model from its weights.
        fresh = VisionTransformer(model.cfg, list(model.class_names))
        fresh.load_state_dict(model.state_dict())
        model = fresh.eval()
    v = run.view()
    acc = f", {v.final.acc:.0%}" if v.final is not None else ""
    name = f"{run.name} · step {v.step}{acc} · {run.id[:4]}"
    register_session_model(name, model)
    st.session_state[USED_KEY] = name


def show_error() -> None:
    """The message a callback left, once."""
    msg = st.session_state.pop(ERROR_KEY, None)
    if msg:
        st.error(msg)
